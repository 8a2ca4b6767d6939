"""The one place this provider touches Airflow's private API, and why.

Checked against apache-airflow 3.3.2 / apache-airflow-task-sdk 1.3.2.
``tests/test_airflow_compat.py`` fails loudly, naming the piece, when an Airflow upgrade
moves any of it.

Why it is needed: ``@task.knative`` passes spilled upstream values to the function *by
reference* (the worker never downloads them). Upstream values are pulled while Airflow
renders the task's templated fields, so the pass-by-reference window must be open then. For
a plain task that is the public ``render_template_fields``. For a mapped task
(``.expand()``), Airflow builds a ``DecoratedMappedOperator`` (hard-coded in
``_TaskDecorator._expand``) and pulls the expanded values in *its* ``render_template_fields``
before our operator exists; there is no public hook to choose the mapped class. So:

* :class:`KnativeTaskDecorator` subclasses the private ``_TaskDecorator`` (the class
  ``task_decorator_factory`` returns), overriding only ``_expand``;
* :func:`use_mapped_class` re-classes the ``DecoratedMappedOperator`` it made as our
  subclass (same attrs layout, no new fields), whose only change is to open the window
  around the public ``render_template_fields``.
"""

from __future__ import annotations

from typing import Any

import attr
from airflow.sdk.bases.decorator import DecoratedMappedOperator, _TaskDecorator

#: what the adapter relies on, for the test that fails when Airflow moves
RELIES_ON = (
    "airflow.sdk.bases.decorator._TaskDecorator._expand(expand_input, *, strict) -> XComArg",
    "airflow.sdk.bases.decorator.DecoratedMappedOperator (attrs, re-classable to a subclass "
    "adding no fields)",
    "airflow.sdk.definitions.mappedoperator.MappedOperator.render_template_fields(context, jinja_env)",
)


def use_mapped_class(xcom_arg: Any, mapped_class: type[DecoratedMappedOperator]) -> Any:
    """Make the operator behind ``xcom_arg`` (a fresh ``DecoratedMappedOperator``) a ``mapped_class``."""
    operator = getattr(xcom_arg, "operator", None)
    if type(operator) is DecoratedMappedOperator:
        operator.__class__ = mapped_class
    return xcom_arg


@attr.define(slots=False)
class KnativeTaskDecorator(_TaskDecorator):
    """``_TaskDecorator`` whose ``.expand()`` builds the operator class named by ``mapped_class``."""

    mapped_class: type[DecoratedMappedOperator] = DecoratedMappedOperator

    def _expand(self, *args: Any, **kwargs: Any) -> Any:
        return use_mapped_class(super()._expand(*args, **kwargs), self.mapped_class)


def stats() -> Any:
    """Airflow's metrics client, as the scheduler configures it (``[metrics]``: StatsD, Datadog or
    OpenTelemetry). 3.3 moved it to ``airflow.observability.stats`` (the module the scheduler and
    ``BaseExecutor`` initialise); ``airflow.stats.Stats`` is the older home, a deprecated shim in 3.3.
    Both offer ``incr(stat, count, rate, tags=...)``."""
    try:
        from airflow.observability import stats as current
    except ImportError:  # Airflow < 3.3
        from airflow.stats import Stats

        return Stats
    return current
