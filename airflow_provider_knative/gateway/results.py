"""What a finished run answers: the result task's output, or the failed tasks and their errors.

These functions use Airflow's synchronous ORM session and may read objects from the store
or task logs, so the gateway calls them in a worker thread, never on the event loop.

The result task is, in order:
1. the task whose ``return_value`` XCom Airflow flagged ``dag_result`` — the task SDK sets it
   for the task a ``@dag`` function returns, for ``@result`` and for ``dag.add_result(...)``
   (the flag is not in the serialized DAG, only on the XCom row, so it is read after the run;
   Airflow 3.3+: older versions flag nothing, so rule 2 decides there);
2. else the single leaf task (no downstream tasks) of the DAG;
3. several leaves and no flag is ambiguous: an error that lists the leaves and says how to
   mark one.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import json
import math
import uuid
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow_provider_knative import airflow_compat
from airflow_provider_knative.errors import ResultLookupError

TASK_ERROR_MAX_CHARS = 2000


class AmbiguousResultError(ResultLookupError):
    """The DAG has several leaf tasks and none is marked as the DAG's result."""

    def __init__(self, dag_id: str, leaves: list[str]) -> None:
        self.leaves = leaves
        if airflow_compat.xcom_dag_result_column() is not None:
            how = (
                "return one task's output from the @dag function, decorate it with @result, or call "
                "dag.add_result(task_output)"
            )
        else:  # nothing marks a DAG's result before Airflow 3.3
            how = (
                f"Airflow {airflow_compat.AIRFLOW_VERSION} cannot mark a DAG's result (Airflow 3.3 can): "
                "give the DAG a single leaf task"
            )
        super().__init__(
            f"DAG {dag_id!r} has {len(leaves)} leaf tasks ({', '.join(leaves)}) and none is marked as "
            f"its result: {how}"
        )


class NoResultError(ResultLookupError):
    """The result task pushed no ``return_value`` XCom (e.g. it returned None or was skipped)."""


def leaf_task_ids(dag: Any) -> list[str]:
    """Tasks without downstream tasks, sorted; works on SDK and serialized DAGs."""
    return sorted(tid for tid, task in dag.task_dict.items() if not task.downstream_task_ids)


@functools.cache
def _xcom_backend() -> Any:
    """The configured ``[core] xcom_backend`` class: its ``deserialize_value`` decodes DB rows.

    Using the backend itself (not a copy of its format) means a spilled or packed value of
    the Knative backend is fetched from the store exactly as a task would see it.
    """
    from airflow.configuration import conf

    return conf.getimport("core", "xcom_backend")


def decode_xcom(stored: Any) -> Any:
    """The Python value a task would get for the DB JSON ``stored``."""
    return _xcom_backend().deserialize_value(SimpleNamespace(value=stored))


def to_json(value: Any) -> Any:
    """A JSON-ready form of a decoded XCom value (tuples, numpy, pandas, dates, bytes...)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    kind = type(value).__module__.split(".")[0]
    if kind == "pandas" and hasattr(value, "to_json"):
        orient = "records" if hasattr(value, "columns") else "split"
        return json.loads(value.to_json(orient=orient, date_format="iso"))
    if kind in ("numpy", "pyarrow") and hasattr(value, "tolist"):
        return to_json(value.tolist())
    if kind == "pyarrow" and hasattr(value, "to_pylist"):
        return to_json(value.to_pylist())
    return repr(value)


def result_output(session: Session, dag: Any, dag_id: str, run_id: str) -> tuple[str, Any]:
    """``(result task id, JSON output)`` of a successful run."""
    from airflow.models.xcom import XCOM_RETURN_KEY, XComModel

    base = select(XComModel.task_id, XComModel.map_index, XComModel.value).where(
        XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == XCOM_RETURN_KEY
    )
    flagged = airflow_compat.xcom_dag_result_column()  # None before 3.3: the leaf rule alone
    rows = session.execute(base.where(flagged.is_(True))).all() if flagged is not None else []
    if rows:
        task_id = rows[0].task_id
        rows = [r for r in rows if r.task_id == task_id]
    else:
        leaves = leaf_task_ids(dag)
        if len(leaves) != 1:
            raise AmbiguousResultError(dag_id, leaves)
        task_id = leaves[0]
        rows = session.execute(base.where(XComModel.task_id == task_id)).all()
        if not rows:
            raise NoResultError(
                f"the result task {task_id!r} of DAG {dag_id!r} run {run_id!r} stored no return value"
            )
    rows = sorted(rows, key=lambda r: r.map_index)
    if len(rows) == 1 and rows[0].map_index < 0:
        return task_id, to_json(decode_xcom(rows[0].value))
    return task_id, [to_json(decode_xcom(r.value)) for r in rows]  # a mapped result task


def failed_tasks(session: Session, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The failed task instances of a run, each with the error read from its log."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import TaskInstanceState

    tis = session.scalars(
        select(TaskInstance)
        .where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.state.in_([TaskInstanceState.FAILED, TaskInstanceState.UPSTREAM_FAILED]),
        )
        .order_by(TaskInstance.task_id, TaskInstance.map_index)
    ).all()
    out = []
    for ti in tis:
        entry: dict[str, Any] = {
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "state": str(getattr(ti.state, "value", ti.state)),
            "try_number": ti.try_number,
        }
        if ti.state == TaskInstanceState.FAILED:
            entry["error"] = ti.note or task_error(ti)
        out.append(entry)
    return out


def task_error(ti: Any) -> str:
    """The last error a task logged (exception type and message), read through Airflow's log reader."""
    from airflow.utils.log.log_reader import TaskLogReader

    try:
        messages, _ = TaskLogReader().read_log_chunks(ti, ti.try_number, {})  # type: ignore[typeddict-item]
        records = [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in messages]
    except Exception as exc:  # the log may be remote or gone; the state is still worth reporting
        return f"(task log unavailable: {type(exc).__name__}: {exc})"
    return error_from_log(records)


def error_from_log(records: list[dict[str, Any]]) -> str:
    """The most useful error line of a structured task log: the last exception, else the last error."""
    for record in reversed(records):
        for detail in reversed(record.get("error_detail") or []):
            if isinstance(detail, dict) and detail.get("exc_type"):
                text = f"{detail['exc_type']}: {detail.get('exc_value', '')}"
                return text[:TASK_ERROR_MAX_CHARS]
    for record in reversed(records):
        if str(record.get("level", "")).lower() in ("error", "critical"):
            return str(record.get("event", ""))[:TASK_ERROR_MAX_CHARS]
    return "(no error found in the task log)"
