"""Every difference between the Airflow 3 releases this provider supports, in one place.

Supported: Airflow 3.1, 3.2 and 3.3 (any patch) for everything; the XCom backend also on 3.0.
Each row of :data:`DIFFERENCES` names what moved, the first minor with the new form, and what
this provider uses before it. Checked against the released wheels of apache-airflow 3.0.6,
3.1.8, 3.2.2 and 3.3.2 (task SDK 1.0.6, 1.1.8, 1.2.2, 1.3.2). ``tests/compat/`` runs in CI
on each of them (``scripts/compat.sh``); its table test fails, naming the row, when a release
changes under it: a new form that appears earlier or later than the row says, or an old form
that is gone.

Why one module: the rest of the provider imports a version-dependent Airflow name from here
(``from airflow_provider_knative.airflow_compat import BaseHook``) and never guesses with its
own ``try: import``; a feature that a version cannot carry refuses at start with
:class:`~airflow_provider_knative.errors.AirflowVersionError`, naming the Airflow it needs
(:func:`require`), instead of an ``ImportError``/``AttributeError`` out of Airflow's internals.

Names are resolved lazily (module ``__getattr__``): importing this module imports no Airflow
module beyond the task SDK's decorator base, which ``@task.knative`` needs anyway.

It is also the one place this provider touches Airflow's *private* API, and why:
``@task.knative`` passes spilled upstream values to the function *by reference* (the worker
never downloads them). Upstream values are pulled while Airflow renders the task's templated
fields, so the pass-by-reference window must be open then. For a plain task that is the public
``render_template_fields``. For a mapped task (``.expand()``), Airflow builds a
``DecoratedMappedOperator`` (hard-coded in ``_TaskDecorator._expand``) and pulls the expanded
values in *its* ``render_template_fields`` before our operator exists; there is no public hook
to choose the mapped class. So:

* :class:`KnativeTaskDecorator` subclasses the private ``_TaskDecorator`` (the class
  ``task_decorator_factory`` returns), overriding only ``_expand``;
* :func:`use_mapped_class` re-classes the ``DecoratedMappedOperator`` it made as our
  subclass (same attrs layout, no new fields), whose only change is to open the window
  around the public ``render_template_fields``.

``tests/test_airflow_compat.py`` checks that private API on every version.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import attr
from airflow.sdk.bases.decorator import DecoratedMappedOperator, _TaskDecorator

from airflow_provider_knative.errors import AirflowVersionError
from airflow_provider_knative.versions import AIRFLOW_MINOR, AIRFLOW_VERSION, Minor, minor_of

if TYPE_CHECKING:  # what the lazy names below are, for the type checker (3.3's forms)
    from airflow.sdk import BaseHook as BaseHook
    from airflow.sdk.bases.decorator import determine_kwargs as determine_kwargs
    from airflow.sdk.definitions.context import KNOWN_CONTEXT_KEYS as KNOWN_CONTEXT_KEYS
    from airflow.sdk.exceptions import AirflowException as AirflowException
    from airflow.sdk.exceptions import AirflowNotFoundException as AirflowNotFoundException

#: the oldest Airflow minor with everything, and the one the XCom backend alone goes back to
FULL_SUPPORT: Minor = (3, 1)
XCOM_SUPPORT: Minor = (3, 0)
#: the newest minor this release was checked against; newer ones are expected to work (the
#: compat suite says so in CI) but are not promised
CHECKED_UP_TO: Minor = (3, 3)

#: feature -> the first Airflow minor it works on (README's version table, and :func:`require`)
FEATURES: Mapping[str, Minor] = {
    "XCom backend": XCOM_SUPPORT,
    "@task.knative and KnativeOperator": FULL_SUPPORT,
    "the knative connection (form and Test button)": FULL_SUPPORT,
    "the Knative runtime": FULL_SUPPORT,
    "KnativeExecutor": FULL_SUPPORT,
    "the workflow gateway": FULL_SUPPORT,
    "manifests, deploy, status and xcom-cleanup": FULL_SUPPORT,
}


def _name(minor: Minor) -> str:
    return f"{minor[0]}.{minor[1]}"


__all__ = ["AIRFLOW_MINOR", "AIRFLOW_VERSION", "minor_of"]  # re-exported: the installed Airflow


def require(feature: str) -> None:
    """Refuse ``feature`` on an Airflow older than it needs, with a message naming both."""
    needed = FEATURES[feature]
    if AIRFLOW_MINOR < needed:
        raise AirflowVersionError(
            f"{feature} needs Airflow {_name(needed)} or newer; this is Airflow {AIRFLOW_VERSION}. "
            f"On Airflow {_name(AIRFLOW_MINOR)} airflow-provider-knative supports only: "
            + ", ".join(f for f, since in FEATURES.items() if AIRFLOW_MINOR >= since)
        )


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Difference:
    """One thing that differs between Airflow minors.

    ``new`` exists from ``since`` on and is used there; before it this provider uses ``old``.
    Both are probes :func:`present` understands: ``"module:Attr.attr"`` (also a key of a
    mapping, such as a pydantic model's ``model_fields``), or ``"module:Attr.func(param)"``
    for "``func`` takes ``param``". ``old`` may be a sentence (a behaviour, not a name); then
    only ``new`` is probed.
    """

    key: str
    since: Minor
    new: str
    old: str
    why: str

    def applies(self, minor: Minor | None = None) -> bool:
        """True when the new form is the one to use on ``minor`` (default: the installed)."""
        return (minor or AIRFLOW_MINOR) >= self.since

    @property
    def old_is_probe(self) -> bool:
        return ":" in self.old and " " not in self.old


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "BaseHook",
        (3, 1),
        "airflow.sdk:BaseHook",
        "airflow.hooks.base:BaseHook",
        "the hook's base class moved to the task SDK",
    ),
    Difference(
        "AirflowException",
        (3, 1),
        "airflow.sdk.exceptions:AirflowException",
        "airflow.exceptions:AirflowException",
        "the task SDK got its own exceptions module",
    ),
    Difference(
        "AirflowNotFoundException",
        (3, 2),
        "airflow.sdk.exceptions:AirflowNotFoundException",
        "airflow.exceptions:AirflowNotFoundException",
        "a missing connection raises it; 3.1's task SDK raises core's",
    ),
    Difference(
        "KNOWN_CONTEXT_KEYS",
        (3, 1),
        "airflow.sdk.definitions.context:KNOWN_CONTEXT_KEYS",
        "airflow.utils.context:KNOWN_CONTEXT_KEYS",
        "@task.knative refuses context objects a pod cannot receive",
    ),
    Difference(
        "determine_kwargs",
        (3, 2),
        "airflow.sdk.bases.decorator:determine_kwargs",
        "airflow.utils.operator_helpers:determine_kwargs",
        "response_check receives the context values it names",
    ),
    Difference(
        "connection form",
        (3, 2),
        "airflow.providers_manager:ProvidersManager._add_widgets(conn_fields)",
        "the form is built from KnativeHook.get_connection_form_widgets (wtforms, mocked by the UI)",
        "3.2 reads provider info's conn-fields; older versions ask the hook class",
    ),
    Difference(
        "BundleDagBag",
        (3, 2),
        "airflow.dag_processing.dagbag:BundleDagBag",
        "airflow.models.dagbag:DagBag",
        "manifests/deploy parse the DAG folder as the dag-processor does",
    ),
    Difference(
        "pre-assigned external executor id",
        (3, 2),
        "airflow.executors.base_executor:BaseExecutor.pre_assigns_external_executor_id",
        "the executor makes a delivery id per queued workload",
        "the KnativeExecutor's delivery id (each QUEUED transition has its own); 3.2.0 lacks it "
        "(3.2.2 has it), so the executor reads it only when the workload carries it",
    ),
    Difference(
        "run_workload",
        (3, 3),
        "airflow.executors.base_executor:BaseExecutor.run_workload",
        "airflow.sdk.execution_time.supervisor:supervise",
        "the runtime runs an executor workload under the task SDK's supervisor",
    ),
    Difference(
        "workload display name",
        (3, 3),
        "airflow.executors.workloads:ExecuteTask.display_name",
        "the task instance id",
        "the supervisor's process title",
    ),
    Difference(
        "XCom dag_result",
        (3, 3),
        "airflow.models.xcom:XComModel.dag_result",
        "the gateway's result is the DAG's single leaf task",
        "the task Airflow flags as the DAG's result (@dag return value, @result)",
    ),
    Difference(
        "Stats",
        (3, 3),
        "airflow.observability.stats:incr",
        "airflow.stats:Stats",
        "the KnativeExecutor's metrics go through the client the scheduler configured",
    ),
    Difference(
        "run partition fields",
        (3, 2),
        "airflow.serialization.definitions.dag:SerializedDAG.create_dagrun(partition_key)",
        "runs are created without partition fields",
        "the gateway creates runs as the REST API does (3.3 adds partition_date)",
    ),
)

_BY_KEY = {d.key: d for d in DIFFERENCES}


def difference(key: str) -> Difference:
    return _BY_KEY[key]


def _resolve(path: str) -> Any:
    """The object at ``module:Attr.attr`` (AttributeError/ImportError/KeyError when absent)."""
    module_name, _, attrs = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attrs.split(".") if attrs else ():
        obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
    return obj


def present(path: str) -> bool:
    """Whether a probe of :class:`Difference` holds on the installed Airflow."""
    param = ""
    if path.endswith(")") and "(" in path:
        path, _, param = path[:-1].partition("(")
    try:
        obj = _resolve(path)
    except (ImportError, AttributeError, KeyError):
        return False
    if not param:
        return True
    try:
        return param in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------- names


def __getattr__(name: str) -> Any:
    """``BaseHook``, ``AirflowException``, ... from where the installed Airflow has them."""
    row = _BY_KEY.get(name)
    if row is None or not row.old_is_probe:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = _resolve(row.new if row.applies() else row.old)
    globals()[name] = value
    return value


# ---------------------------------------------------------------------------- behaviours


def connection_missing(exc: BaseException) -> bool:
    """Whether ``exc``, raised by ``BaseHook.get_connection``/``aget_connection``, means "there is no
    such connection".

    ``AirflowNotFoundException`` on every version. Early 3.1 task SDKs (1.1.0 at least; 1.1.8
    raises ``AirflowNotFoundException``) end a lookup that no secrets backend answered by
    importing the task runner's ``SUPERVISOR_COMMS``, which only a task process has: outside one
    (the scheduler running the KnativeExecutor) that is an ``ImportError`` naming it.
    """
    if isinstance(exc, _resolve(_row_path("AirflowNotFoundException"))):
        return True
    return isinstance(exc, ImportError) and "SUPERVISOR_COMMS" in str(exc) and AIRFLOW_MINOR == (3, 1)


def _row_path(key: str) -> str:
    row = difference(key)
    return row.new if row.applies() else row.old


def create_dagrun_partition_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """The partition arguments of ``create_dagrun`` this Airflow takes, from the trigger
    body's validated context (3.2 added ``partition_key``, 3.3 ``partition_date``)."""
    if not difference("run partition fields").applies():
        return {}
    return {key: params[key] for key in ("partition_key", "partition_date") if key in params}


def xcom_dag_result_column() -> Any | None:
    """``XComModel.dag_result`` (3.3+), or None where Airflow does not flag a DAG's result."""
    if not difference("XCom dag_result").applies():
        return None
    from airflow.models.xcom import XComModel

    return XComModel.dag_result


def dag_bag_class() -> Any:
    """The class that parses a DAG folder as the dag-processor does (``BundleDagBag`` in 3.2+,
    ``DagBag`` before); importing it imports Airflow's DAG-processing modules."""
    row = difference("BundleDagBag")
    return _resolve(row.new if row.applies() else row.old)


def bundle_dag_bag(dag_folder: str, bundle_path: Any) -> Any:
    """Parse ``dag_folder`` as the dag-processor does (see :func:`dag_bag_class`)."""
    return dag_bag_class()(dag_folder=dag_folder, bundle_path=bundle_path)


def workload_delivery_id(workload: Any) -> str | None:
    """The id Airflow 3.2+ pre-assigns to this QUEUED transition, or None (3.1, and 3.2.0, whose
    scheduler pre-assigns it but whose workload does not carry it yet)."""
    if not difference("pre-assigned external executor id").applies():
        return None
    return getattr(workload.ti, "external_executor_id", None)


def workload_display_name(workload: Any) -> str:
    if difference("workload display name").applies():
        return str(workload.display_name)
    return str(workload.ti.id)


def _execution_api_server_url() -> str:
    """``[core] execution_api_server_url``, defaulting as Airflow's own workers do."""
    from airflow.configuration import conf

    base_url = conf.get("api", "base_url", fallback="/") or "/"
    if base_url.startswith("/"):
        base_url = f"http://localhost:8080{base_url}"
    return str(conf.get("core", "execution_api_server_url", fallback=f"{base_url.rstrip('/')}/execution/"))


def run_task_workload(workload: Any, *, server: str | None, proctitle: str) -> int:
    """Run an ``ExecuteTask`` under the task SDK's supervisor, as Airflow's own workers do.

    3.3: ``BaseExecutor.run_workload``. 3.1 and 3.2 have no such method; their LocalExecutor
    calls the task SDK's ``supervise`` with the workload's fields, and so does this. Returns
    the supervisor's exit code.
    """
    if difference("run_workload").applies():
        from airflow.executors.base_executor import BaseExecutor

        return int(
            BaseExecutor.run_workload(
                workload, server=server, subprocess_logs_to_stdout=False, proctitle=proctitle
            )
        )
    from airflow.sdk.execution_time.supervisor import supervise

    try:
        if sys.platform != "darwin":
            from setproctitle import setproctitle

            setproctitle(proctitle)
    except ImportError:
        pass
    return int(
        supervise(
            ti=workload.ti,
            dag_rel_path=workload.dag_rel_path,
            bundle_info=workload.bundle_info,
            token=workload.token,
            server=server or _execution_api_server_url(),
            log_path=workload.log_path,
            subprocess_logs_to_stdout=False,
        )
    )


def hook_field_behaviour(provider_info_behaviour: Mapping[str, Any]) -> dict[str, Any]:
    """Provider info's ``ui-field-behaviour`` in the hook API's spelling (``hidden_fields``, as
    ``get_ui_field_behaviour`` must return it on Airflow < 3.2, which validates it)."""
    return {key.replace("-", "_"): value for key, value in provider_info_behaviour.items()}


def connection_form_widgets(fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The connection form as Airflow < 3.2 builds it: wtforms fields from provider info's
    ``conn-fields`` (``KnativeHook.get_connection_form_widgets``). The UI's hook-meta service
    of those versions imports this with wtforms and Flask-AppBuilder mocked, so it works
    without them installed."""
    from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import BooleanField, StringField
    from wtforms.validators import Optional

    widgets: dict[str, Any] = {}
    for name, field in fields.items():
        types = field.get("schema", {}).get("type", [])
        types = [types] if isinstance(types, str) else types
        label, description = lazy_gettext(field["label"]), field.get("description", "")
        if "boolean" in types:
            widgets[name] = BooleanField(label, description=description)
        else:
            widget = BS3PasswordFieldWidget() if field.get("sensitive") else BS3TextFieldWidget()
            widgets[name] = StringField(
                label, widget=widget, validators=[Optional()], description=description
            )
    return widgets


# ---------------------------------------------------------------------------- private API

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
    OpenTelemetry): the ``airflow.observability.stats`` module from 3.3 (the one the scheduler and
    ``BaseExecutor`` initialise; 3.2 has a module of that name without ``incr``), ``airflow.stats.Stats``
    before (a deprecated shim in 3.3). Both offer ``incr(stat, count, rate, tags=...)``."""
    row = difference("Stats")
    if row.applies():
        return importlib.import_module("airflow.observability.stats")
    return _resolve(row.old)
