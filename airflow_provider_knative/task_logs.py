"""Task logs in the provider's object store: Airflow remote logging for pods with no shared disk.

A task run by the KnativeExecutor writes its log inside a Knative pod; the api-server that
shows it runs elsewhere. Airflow's answer is remote logging, and this module plugs the
provider's object store into it (wired through ``log_config.py``)::

    [logging]
    logging_config_class = airflow_provider_knative.log_config.LOGGING_CONFIG
    remote_base_log_folder = knative+s3://my-bucket/airflow/task-logs   # or knative+file:///path

The store is the same S3-compatible server (or folder) and the same credentials as the XCom
backend (``[knative] s3_endpoint_url``, the boto3 chain); nothing else to install (the amazon
provider's ``s3://`` handler works too, when it is installed). The supervisor uploads the log
when the task ends; while it runs, the runtime uploads the growing file every few seconds to
the same key, so the log is readable in the UI while the task runs. An upload replaces the
object (never appends), so the last upload is the whole log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow_provider_knative.errors import ConfigError, StoreError

#: URL schemes of ``remote_base_log_folder`` this module claims: ``knative+`` + a store URL
SCHEMES = ("knative+s3", "knative+file")
_PREFIX = "knative+"


def store_url(remote_base: str) -> str:
    """The object store URL behind a ``knative+...`` remote log folder."""
    if not remote_base.startswith(tuple(s + "://" for s in SCHEMES)):
        raise ConfigError(
            f"[logging] remote_base_log_folder {remote_base!r} is not a knative+s3:// or knative+file:/// "
            "URL; for example knative+s3://bucket/airflow/task-logs"
        )
    return remote_base[len(_PREFIX) :]


def upload_file(remote_base: str, local: Path, relative_path: str) -> None:
    """Put ``local`` at ``relative_path`` under ``remote_base``, replacing what was there."""
    from airflow_provider_knative import aws
    from airflow_provider_knative.store import open_store

    aws.install()  # [knative] aws_conn_id applies to the log folder too
    target = open_store(store_url(remote_base))
    target.put(relative_path, [local.read_bytes()])


def remote_folder_from_env() -> str | None:
    """The ``knative+`` remote log folder this process is configured with, if any.

    Read from the environment (``AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER``), so the runtime
    can upload live logs without importing Airflow's configuration.
    """
    folder = os.environ.get("AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER", "").strip()
    return folder if folder.startswith(tuple(s + "://" for s in SCHEMES)) else None


def configured_remote_folder() -> str | None:
    """The ``knative+`` remote log folder of Airflow's configuration, if any."""
    from airflow.configuration import conf

    folder = (conf.get("logging", "remote_base_log_folder", fallback="") or "").strip()
    return folder if folder.startswith(tuple(s + "://" for s in SCHEMES)) else None


def local_log_folder() -> Path:
    """``[logging] base_log_folder`` as Airflow computes its default, from the environment."""
    folder = os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER")
    if folder:
        return Path(folder)
    home = os.environ.get("AIRFLOW_HOME") or str(Path("~/airflow").expanduser())
    return Path(home) / "logs"


class KnativeRemoteLogIO:
    """Airflow's ``RemoteLogIO`` for the provider's object store (see the module docstring)."""

    processors: tuple[Any, ...] = ()

    def __init__(
        self, remote_base: str, base_log_folder: str | os.PathLike[str], delete_local_copy: bool
    ) -> None:
        self.remote_base = remote_base
        self.base_log_folder = Path(base_log_folder)
        self.delete_local_copy = delete_local_copy
        store_url(remote_base)  # a bad URL is a configuration error now, not at the first upload

    @classmethod
    def from_config(cls) -> KnativeRemoteLogIO:
        """What Airflow calls to build the handler for a ``knative+...`` remote log folder."""
        from airflow.configuration import conf

        return cls(
            remote_base=conf.get("logging", "remote_base_log_folder"),
            base_log_folder=conf.get("logging", "base_log_folder"),
            delete_local_copy=conf.getboolean("logging", "delete_local_logs", fallback=False),
        )

    def _relative(self, path: os.PathLike[str] | str) -> tuple[Path, str]:
        local = Path(path)
        if not local.is_absolute():
            local = self.base_log_folder / local
        return local, local.relative_to(self.base_log_folder).as_posix()

    def upload(self, path: os.PathLike[str] | str, ti: Any = None) -> None:
        local, relative = self._relative(path)
        if not local.is_file():
            return
        upload_file(self.remote_base, local, relative)
        if self.delete_local_copy:
            local.unlink(missing_ok=True)

    def read(self, relative_path: str, ti: Any) -> tuple[list[str], list[str] | None]:
        from airflow_provider_knative import aws
        from airflow_provider_knative.store import open_store

        aws.install()
        target = open_store(store_url(self.remote_base))
        url = target.url_of(relative_path)
        try:
            text = bytes(target.get(url)).decode("utf-8", errors="replace")
        except StoreError as exc:
            return [f"no log at {url} yet ({exc})"], None
        return [url], [text]
