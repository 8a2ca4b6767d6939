"""What the runtime tells about itself: its metrics (``GET /metrics``) and, when asked, its spans.

The one place that connects ``metrics.py`` and ``tracing.py`` to the server: the app calls
``app.observe(headers, ctx, outcome)`` in the worker thread of every answered call (``ctx``
names the function, once known, and the call), the workload runs call ``on_ended`` when a task
ends, and ``GET /metrics`` reads the state of the app, its workers and its leases when scraped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from airflow_provider_knative.runtime import invoke, tracing
from airflow_provider_knative.runtime.app import RuntimeApp
from airflow_provider_knative.runtime.claims import Leases
from airflow_provider_knative.runtime.workers import Workers

log = logging.getLogger("airflow_provider_knative.runtime")


class Observability:
    """The runtime's metrics and tracer, attached to its app (see the module docstring)."""

    def __init__(self, app: RuntimeApp, pool: Workers, leases: Leases | None, replica: str) -> None:
        self.app = app
        self.pool = pool
        self.leases = leases
        self.metrics = _metrics()
        self.tracer: tracing.Tracer | None = None
        if tracing.configured():
            self.tracer = tracing.Tracer(replica)
            self.tracer.start()
        if self.metrics is not None:
            from airflow_provider_knative.runtime.metrics import CONTENT_TYPE

            metrics = self.metrics
            metrics.watch(self.state)
            app.metrics = lambda: (metrics.exposition(), CONTENT_TYPE)
            if app.workloads is not None:
                app.workloads.on_ended = lambda run: metrics.workload_ended(
                    run.events, run.stop_reason, time.monotonic() - run.started
                )
        if self.metrics is not None or self.tracer is not None:
            app.observe = self.observe

    def observe(self, headers: Mapping[str, str], ctx: invoke.CallContext, outcome: invoke.Outcome) -> None:
        if self.metrics is not None:
            self.metrics.call_ended(ctx.function, outcome)
        if self.tracer is not None:
            claim = ctx.claimer
            call = invoke.ledger_key(claim.call, claim.attempt) if claim is not None else ""
            self.tracer.record(headers, ctx.function, call, outcome)

    def state(self) -> dict[str, Any]:
        """What ``GET /metrics`` reports of the running runtime, read at each scrape."""
        app = self.app
        held = {"invocations": len(self.leases) if self.leases is not None else 0}
        runs = app.workloads
        if runs is not None:
            held["deliveries"] = len(runs.leases) if runs.leases is not None else 0
        return {
            "in_flight": app.in_flight,
            "waiting": self.pool.waiting,
            "records_held": held,
            "workloads_running": runs.active if runs is not None else 0,
            "timings": dict(app.state.timings),
        }

    def close(self) -> None:
        """The process is exiting: send the spans still queued."""
        if self.tracer is not None:
            self.tracer.close()


def _metrics() -> Any:
    """The metrics, or None when ``prometheus_client`` is missing (it comes with the ``runtime``
    extra; without it the runtime serves on, with no ``/metrics``)."""
    try:
        from airflow_provider_knative.runtime.metrics import RuntimeMetrics
    except ImportError as exc:
        log.warning("no GET /metrics: %s (pip install 'airflow-provider-knative[runtime]')", exc)
        return None
    return RuntimeMetrics()
