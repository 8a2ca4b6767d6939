"""What the KnativeExecutor counts, through Airflow's own metrics (``Stats``).

Airflow sends them where ``[metrics]`` says (StatsD with ``statsd_on``, Datadog, or
OpenTelemetry with ``otel_on``), with its prefix (``airflow.`` by default), like the scheduler's
own ``executor.*`` metrics. Each is a counter named ``knative_executor.<event>`` with the
Knative Service as the ``service`` tag (where the backend carries tags):

* ``sent``: a workload handed to a Service (one per QUEUED transition);
* ``accepted``: the runtime started its supervisor;
* ``exited``: its supervisor exited (the task's state is Airflow's to read);
* ``refused``: it could not start (Service never up, DAG file missing, bad signature, ...);
* ``retried``: sent again because nothing started (cold start, 503 ``Busy``), one per resend;
* ``lost``: its event stream broke after it started; the task is followed in the database;
* ``elsewhere``: another replica or another delivery runs the task;
* ``adopted``: after a scheduler restart, a running task was taken over.
"""

from __future__ import annotations

import logging

from airflow_provider_knative import airflow_compat

PREFIX = "knative_executor"
EVENTS = ("sent", "accepted", "exited", "refused", "retried", "lost", "elsewhere", "adopted")
#: the executor's event kinds whose metric name differs
_NAMES = {"exit": "exited"}

log = logging.getLogger(__name__)


def count(event: str, service: str = "", n: int = 1) -> None:
    """Add ``n`` to ``knative_executor.<event>``; a metrics backend that fails never stops a task."""
    name = _NAMES.get(event, event)
    if name not in EVENTS or n <= 0:
        return
    try:
        airflow_compat.stats().incr(f"{PREFIX}.{name}", n, tags={"service": service} if service else None)
    except Exception as exc:
        log.debug("could not report %s.%s: %s", PREFIX, name, exc)
