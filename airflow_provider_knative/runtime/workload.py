"""Run an Airflow ``ExecuteTask`` workload in the pod, for the KnativeExecutor.

The task runs exactly as on Airflow's own workers: the task SDK's supervisor
(``BaseExecutor.run_workload`` on Airflow 3.3, ``supervise`` before it:
``airflow_compat.run_task_workload``) talks to the api-server's Execution API with the workload's
short-lived token, starts the task process, heartbeats, and writes the task log. The pod needs
no database credentials. The supervisor runs in a child of the fork server (it installs signal
handlers, so it needs a process's main thread), in a session of its own.

Before the supervisor starts, the child checks what retrying cannot fix and refuses at once
with the reason (the executor fails the task with it): a DAG bundle this image does not have,
or a DAG file missing from it. Everything after ``accepted`` is Airflow's: the task's state in
Airflow's database is the truth, and the supervisor stops the task when Airflow says it is no
longer running (cleared, marked failed).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("airflow_provider_knative.runtime")

#: modules a task needs, imported once in the fork server so a task starts in milliseconds
PREIMPORT = (
    "airflow.executors.workloads",
    "airflow.executors.base_executor",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.bundles.manager",
    "airflow.dag_processing.dagbag",
    "airflow.sdk.log",
    "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.bash",
)


def preimport() -> None:
    """Import what every workload needs (in the fork server, before it forks)."""
    import importlib

    for name in PREIMPORT:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional provider the image does not have
            pass
    # The supervisor's Execution API client builds its SSL context through a per-process cache;
    # one client made here fills it, and every forked child inherits it instead of loading the CA
    # bundle again (about a tenth of a short task's CPU in the runtime). A LocalExecutor worker
    # process fills it once too.
    try:
        from airflow.sdk.api.client import Client

        Client(base_url="http://127.0.0.1", token="").close()
    except Exception as exc:  # children then build it themselves
        log.warning("could not prepare the Execution API client's SSL context: %s", exc)


def check(workload: Any) -> tuple[str, str] | None:
    """What makes this workload impossible to run here, as ``(error type, message)``, or None."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    info = workload.bundle_info
    try:
        bundle = DagBundlesManager().get_bundle(name=info.name, version=info.version)
        bundle.initialize()
    except Exception as exc:
        return (
            "UnknownDagBundle",
            f"this image has no DAG bundle {info.name!r} (version {info.version!r}): {exc}. The runtime "
            "needs the same [dag_processor] dag_bundle_config_list as the scheduler; rebuild the image",
        )
    path = bundle.path / workload.dag_rel_path
    if not path.is_file():
        return (
            "DagFileMissing",
            f"the DAG file {workload.dag_rel_path} (DAG {workload.ti.dag_id!r}) is not in this image's "
            f"bundle {info.name!r} at {bundle.path}: rebuild and redeploy the image with it",
        )
    return None


def run_in_child(payload: dict[str, Any], emit: Callable[[Any], None]) -> None:
    """The fork server's ``workload`` job: check, then run the supervisor; emit what happens.

    Emits ``["refused", type, message]``, or ``["accepted", {"pid": ...}]`` and later
    ``["exit", code]``.
    """
    from airflow.executors import workloads
    from airflow.sdk.log import configure_logging

    from airflow_provider_knative import airflow_compat

    workload = workloads.ExecuteTask.model_validate_json(payload["workload"])
    if payload.get("executor"):
        # The task runner validates every task's executor= against [core] executor while it
        # parses the DAG: the pod must know the scheduler's executor names.
        os.environ["AIRFLOW__CORE__EXECUTOR"] = payload["executor"]
    refusal = check(workload)
    if refusal is not None:
        emit(["refused", *refusal])
        return
    emit(["accepted", {"pid": os.getpid()}])
    configure_logging(output=sys.stdout.buffer, json_output=True)
    try:
        code = airflow_compat.run_task_workload(
            workload,
            server=payload.get("server") or None,
            proctitle=f"airflow supervisor (knative): {airflow_compat.workload_display_name(workload)}",
        )
    except Exception as exc:
        superseded = _lost_ti_run(exc)
        if superseded is None:
            raise
        emit(["superseded", superseded])
        return
    emit(["exit", code if code >= 0 else 128 - code])


def _lost_ti_run(exc: BaseException) -> str | None:
    """Why the supervisor did not start the task, when Airflow refused its ``ti_run`` because
    the task instance is no longer queued (another delivery of this try started it first, or
    it was cleared or marked meanwhile); None for any other failure.

    That supervisor must never be reported as a finished task: the scheduler would then fail a
    task that another supervisor runs fine.
    """
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) != 409:
        return None
    detail = getattr(exc, "detail", None)
    return (
        "Airflow refused to start this task instance here (ti_run answered 409: it is no longer "
        f"queued, another delivery runs it or it was cleared): {detail or exc}"
    )
