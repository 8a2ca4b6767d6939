"""The runtime's Prometheus metrics (``GET /metrics``), counted in the server process only.

Why the server process: with process isolation a call runs in a forked child, and Prometheus'
multiprocess mode (one file per process, merged at scrape time) would have every child write
files on a read-only root. It is not needed: the child already sends the server what it
measured (``invoke.Phases``, in ``Outcome.phases``), so the server counts every call itself,
once, when its outcome comes back to the worker thread that waited for it.

Two kinds of figures:

* **events**, counted as they happen (counters and histograms, labelled by function id):
  :meth:`RuntimeMetrics.call_ended` for ``POST /invoke``, :meth:`RuntimeMetrics.workload_ended`
  for the executor's workloads. The function label is a registered function id or ``""``
  (a request that named none: malformed, unknown, refused before decoding), so a client cannot
  grow the label set;
* **state**, read when Prometheus scrapes (:class:`_StateCollector`): calls in flight, waiting
  for a slot, records held, workloads running, the cold start. Nothing is kept up to date on
  the hot path for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from airflow_provider_knative import protocol
from airflow_provider_knative.runtime import invoke

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PREFIX = "knative_runtime"
#: seconds: a no-op call takes a fraction of a millisecond, a task function minutes
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)
#: the phases of a call, as ``invoke.Phases`` measures them
PHASES = ("queued", "fetch", "function", "spill")
#: what became of a workload this replica started (see :func:`workload_outcome`)
WORKLOAD_OUTCOMES = ("exited", "stopped", "elsewhere", "refused", "crashed")


def call_outcome(outcome: invoke.Outcome) -> str:
    """The ``outcome`` label of a call: what the answer says, in five words.

    ``ok`` (200), ``error`` (the function raised, its result could not be encoded, an argument
    could not be fetched, its process crashed: any 500), ``rejected`` (any 4xx: malformed,
    unsigned, unknown function, version skew, arguments that do not fit), ``unavailable``
    (503: nothing started, the client sends it again), ``joined`` (a duplicate of a call that
    runs or ran already, here or on another replica, answered from its record).
    """
    if outcome.pending is not None or outcome.follow is not None:
        return "joined"
    status = outcome.status
    if status == 200:
        return "ok"
    if status == 503:
        return "unavailable"
    if 400 <= status < 500:
        return "rejected"
    return "error"


def workload_outcome(events: list[dict[str, Any]], stop_reason: str) -> str:
    """How a workload this replica started ended, from its events (``workload_runs.Run.events``)."""
    kinds = [event.get("event") for event in events]
    if protocol.EVENT_REFUSED in kinds:
        return "refused"
    if protocol.EVENT_ELSEWHERE in kinds:
        return "elsewhere"
    last = events[-1] if events else {}
    if last.get("event") != protocol.EVENT_EXIT or (last.get("code") is None and not stop_reason):
        return "crashed"  # the supervisor (or the fork server) died without saying how the task ended
    return "stopped" if stop_reason else "exited"


class RuntimeMetrics:
    """The runtime's metrics, in a registry of their own (see the module docstring)."""

    def __init__(self) -> None:
        disable_created_metrics()  # no ``*_created`` series: this process's start time is enough
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # CPU seconds, resident memory, open files
        self.calls = Counter(
            f"{PREFIX}_invocations",
            "POST /invoke requests answered, by function and outcome (ok, error, rejected, unavailable, joined)",
            ("function", "outcome"),
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_invocation_duration_seconds",
            "Seconds from the whole request being read to the answer, for calls that ran here",
            ("function",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.phases = Histogram(
            f"{PREFIX}_invocation_phase_seconds",
            "Where a call's time went: queued (waiting for a slot), fetch (arguments by reference), "
            "function, spill (encoding and spilling the result)",
            ("function", "phase"),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.fetched = Counter(
            f"{PREFIX}_fetched_bytes",
            "Bytes of arguments passed by reference and fetched from the store",
            ("function",),
            registry=self.registry,
        )
        self.spilled = Counter(
            f"{PREFIX}_spilled_bytes",
            "Bytes of results spilled to the store (returned as references)",
            ("function",),
            registry=self.registry,
        )
        self.workloads = Counter(
            f"{PREFIX}_workloads",
            "Airflow tasks (the KnativeExecutor's workloads) this replica started, by how they ended",
            ("outcome",),
            registry=self.registry,
        )
        self.workload_duration = Histogram(
            f"{PREFIX}_workload_duration_seconds",
            "Seconds from a workload's start to its supervisor's exit",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        #: labelled children, looked up once per label set (``labels()`` takes a lock and validates)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    def watch(self, read: Callable[[], Mapping[str, Any]]) -> None:
        """Report the runtime's state, as ``read()`` gives it at each scrape (see :class:`_StateCollector`)."""
        self.registry.register(_StateCollector(read))

    def call_ended(self, function: str, outcome: invoke.Outcome) -> None:
        """One ``POST /invoke`` answered (worker thread, right after ``invoke.handle``)."""
        self._child(self.calls, function, call_outcome(outcome)).inc()
        phases = outcome.phases
        if phases is None:  # refused before it ran, or joined another request's call
            return
        now = time.time()
        if phases.arrived:
            self._child(self.duration, function).observe(max(0.0, now - phases.arrived))
            self._child(self.phases, function, "queued").observe(max(0.0, phases.started - phases.arrived))
        for phase, (start, end) in (
            ("fetch", phases.fetch),
            ("function", phases.call),
            ("spill", phases.spill),
        ):
            if start:
                self._child(self.phases, function, phase).observe(max(0.0, end - start))
        if phases.fetched_bytes:
            self._child(self.fetched, function).inc(phases.fetched_bytes)
        if phases.spilled_bytes:
            self._child(self.spilled, function).inc(phases.spilled_bytes)

    def workload_ended(self, events: list[dict[str, Any]], stop_reason: str, seconds: float) -> None:
        """A workload this replica started has ended (on the event loop, when its process exits)."""
        self._child(self.workloads, workload_outcome(events, stop_reason)).inc()
        self.workload_duration.observe(max(0.0, seconds))

    def exposition(self) -> bytes:
        """The text exposition format Prometheus scrapes."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read from the running runtime at scrape time.

    ``read()`` returns ``in_flight``, ``waiting``, ``records_held`` (``{kind: n}``),
    ``workloads_running`` and ``timings`` (``RuntimeState.timings``: the cold start, once ready).
    """

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self.read = read

    def describe(self) -> list[Metric]:
        return []  # known only when read; nothing to check against other collectors

    def collect(self) -> Iterator[Metric]:
        state = self.read()
        yield _gauge("invocations_in_flight", "Calls running now (a worker holds them)", state["in_flight"])
        yield _gauge(
            "invocations_waiting",
            "Calls admitted and waiting for a slot (every one of container_concurrency workers is busy)",
            state["waiting"],
        )
        held = GaugeMetricFamily(
            f"{PREFIX}_records_held",
            "Calls (invocations) and deliveries (workloads) this replica owns in the store's record, "
            "renewing their leases",
            labels=("kind",),
        )
        for kind, count in sorted(state["records_held"].items()):
            held.add_metric((kind,), count)
        yield held
        yield _gauge("workloads_running", "Airflow tasks running here now", state["workloads_running"])
        timings = state["timings"]
        if "ready_after_s" in timings:
            yield _gauge(
                "cold_start_seconds",
                "Seconds from the process start until it was ready to run calls (/readyz 200)",
                timings["ready_after_s"],
            )
            steps = GaugeMetricFamily(
                f"{PREFIX}_cold_start_step_seconds",
                "The cold start's steps: server_up, airflow_import, dag_import, forkserver_import",
                labels=("step",),
            )
            for key, value in sorted(timings.items()):
                if key != "ready_after_s" and key.endswith("_s"):
                    steps.add_metric((key[: -len("_s")],), value)
            yield steps


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)
