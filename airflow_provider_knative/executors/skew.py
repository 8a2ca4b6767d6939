"""The KnativeExecutor names a version skew between this scheduler's Airflow and a runtime's.

The runtime runs the task SDK's supervisor, which talks to this deployment's api-server through
the Execution API: a runtime image built with another Airflow minor (a 3.3 image under a 3.1
scheduler) is the dangerous case, since the newer SDK may speak an API version the older
api-server does not know, and the tasks then fail with errors that do not say why. So the
executor asks each runtime URL once which Airflow it carries (``GET /healthz`` answers with
``versions.RUNTIME_VERSION_HEADER``) and writes the skew, naming both versions, to the
scheduler's log and to Airflow's event log. It does not refuse the task: the same minor with
another patch, or an older SDK, is served by the api-server's API versioning.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import requests

from airflow_provider_knative import versions
from airflow_provider_knative.executors import task_log

log = logging.getLogger(__name__)

#: how long the version question may take; it never delays a task by more
CHECK_TIMEOUT_SECONDS = 5.0

_checked: dict[str, str | None] = {}
_lock = threading.Lock()


def check_runtime(hook: Any, base_url: str, key: Any) -> str | None:
    """The skew between this Airflow and the runtime at ``base_url`` (asked once per URL and
    process), named in the logs the first time; None when they match or it cannot be told."""
    from airflow_provider_knative.hooks import http_session

    with _lock:
        if base_url in _checked:
            return _checked[base_url]
    settings = hook.settings
    try:
        raw = http_session().get(
            base_url + "/healthz",
            headers=dict(settings.headers),
            timeout=(min(settings.timeouts.connect, CHECK_TIMEOUT_SECONDS), CHECK_TIMEOUT_SECONDS),
            **settings.tls.requests_kwargs(),
        )
    except requests.RequestException:
        return None  # not remembered: the delivery's own retries deal with an unreachable service
    header = raw.headers.get(versions.RUNTIME_VERSION_HEADER)
    if header is None:
        return None  # not the runtime that answered (a gateway's 503 during a cold start): ask again
    skew = versions.version_skew(header, executor=True)
    with _lock:
        first = base_url not in _checked
        _checked[base_url] = skew
    if skew and first:
        log.warning("Knative runtime %s: %s", base_url, skew)
        task_log.record_event(key, "knative version skew", f"{base_url}: {skew}")
    return skew
