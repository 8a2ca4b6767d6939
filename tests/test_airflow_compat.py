"""The private Airflow API ``airflow_compat`` relies on is still there and still works.

If an Airflow upgrade moves any of it, these tests fail naming the piece, instead of
``@task.knative`` silently downloading spilled arguments in the worker.
"""

from __future__ import annotations

import inspect

import attr
from airflow.sdk import DAG, task
from airflow.sdk.bases.decorator import DecoratedMappedOperator, _TaskDecorator
from airflow.sdk.definitions.mappedoperator import MappedOperator

from airflow_provider_knative import airflow_compat
from airflow_provider_knative.decorators import _KnativeMappedOperator


def test_task_decorator_expand_keeps_its_signature() -> None:
    params = list(inspect.signature(_TaskDecorator._expand).parameters.values())
    assert [p.name for p in params] == ["self", "expand_input", "strict"], airflow_compat.RELIES_ON[0]
    assert params[2].kind is inspect.Parameter.KEYWORD_ONLY


def test_mapped_operator_can_be_reclassed_to_our_subclass() -> None:
    assert attr.has(DecoratedMappedOperator), airflow_compat.RELIES_ON[1]
    assert attr.fields(_KnativeMappedOperator) == attr.fields(DecoratedMappedOperator)
    assert _KnativeMappedOperator.__slots__ == ()
    params = list(inspect.signature(MappedOperator.render_template_fields).parameters)
    assert params[:3] == ["self", "context", "jinja_env"], airflow_compat.RELIES_ON[2]


def test_expand_builds_the_knative_mapped_operator_and_partial_keeps_it() -> None:
    with DAG("compat_check", schedule=None):

        @task.knative(service="svc")
        def double(x: int) -> int:
            return 2 * x

        mapped = double.expand(x=[1, 2, 3])
        partial = double.partial().expand(x=[4])
        plain = double(5)
    assert type(mapped.operator) is _KnativeMappedOperator
    assert type(partial.operator) is _KnativeMappedOperator
    assert type(plain.operator).__name__ == "_KnativeDecoratedOperator"
