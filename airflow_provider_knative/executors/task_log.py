"""What the user sees when the KnativeExecutor cannot start a task: the reason, where they look.

A task that never started has no log of its own, and the scheduler's log is not where a DAG
author looks. So a refusal (a DAG file missing from the image, a Service that never came up)
is written as the task try's log (the UI's log tab), locally and through remote logging when
it is configured, and as an event log entry (the UI's audit log, ``GET /api/v2/eventLogs``).
Airflow's own ``log_task_event`` is not used: in 3.3.2 its rows are lost (it hands a
generator to ``bulk_save_objects``).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def record_event(key: Any, event: str, message: str) -> None:
    """An event log row for the task try (never raises: the scheduler loop must go on)."""
    try:
        from airflow.models.log import Log
        from airflow.utils.session import create_session

        with create_session() as session:
            session.add(Log(event=event, task_instance=key, owner="airflow", extra=message))
    except Exception:
        log.warning("could not write the event log entry for %s: %s", key, message, exc_info=True)


def write_task_log(log_path: str, message: str) -> None:
    """Write ``message`` as the task try's log (the JSON lines the UI reads), and upload it."""
    if not log_path:
        return
    try:
        from airflow.configuration import conf

        local = Path(conf.get("logging", "base_log_folder")) / log_path
        local.parent.mkdir(parents=True, exist_ok=True)
        line = {
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "level": "error",
            "event": message,
            "logger": "airflow_provider_knative.executors",
        }
        local.write_text(json.dumps(line) + "\n")
        from airflow.logging_config import get_remote_task_log

        remote = get_remote_task_log()
        if remote is not None:
            remote.upload(local)
    except Exception:
        log.warning("could not write the task log %s: %s", log_path, message, exc_info=True)


def record_refusal(key: Any, log_path: str, message: str) -> None:
    record_event(key, "knative refused", message)
    write_task_log(log_path, message)
