"""``@task.knative``: the function runs inside a Knative Service (work in progress)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from airflow_provider_knative.operators import KnativeOperator


class _KnativeDecoratedOperator(DecoratedOperator, KnativeOperator):
    custom_operator_name = "@task.knative"
    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *KnativeOperator.template_fields)

    def __init__(self, *, python_callable: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(python_callable=python_callable, **kwargs)


def knative_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """Run the decorated function in the Knative Service named by ``service=``."""
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_KnativeDecoratedOperator,
        **kwargs,
    )
