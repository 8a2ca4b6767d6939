"""Airflow's logging configuration with task logs in the provider's object store.

Airflow 3.3.2's default logging module picks a remote log handler by the scheme of
``[logging] remote_base_log_folder`` from a fixed list and refuses any other scheme, so the
store is plugged in through ``[logging] logging_config_class``, which Airflow documents for
exactly this (a module exporting the dictConfig and ``REMOTE_TASK_LOG``)::

    [logging]
    logging_config_class = airflow_provider_knative.log_config.LOGGING_CONFIG
    remote_base_log_folder = knative+s3://my-bucket/airflow/task-logs

Leave ``remote_logging`` off: this module supplies the handler itself. Set the same two
options on the api-server (to read) and on the runtime's Services (to write).
"""

from __future__ import annotations

import copy
from typing import Any

from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

from airflow_provider_knative.task_logs import KnativeRemoteLogIO, configured_remote_folder

#: Airflow's own logging dictConfig, unchanged: only the remote handler differs
LOGGING_CONFIG: dict[str, Any] = copy.deepcopy(DEFAULT_LOGGING_CONFIG)

REMOTE_TASK_LOG: KnativeRemoteLogIO | None = (
    KnativeRemoteLogIO.from_config() if configured_remote_folder() else None
)
DEFAULT_REMOTE_CONN_ID: str | None = None
