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

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class _Histogram:
    """Counts per bucket (not cumulative) and the sum: the plain numbers of one histogram series."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1  # the first bound >= seconds
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, as the exposition format wants them."""
        bounds = [*(floatToGoString(b) for b in DURATION_BUCKETS), "+Inf"]
        return list(zip(bounds, itertools.accumulate(self.counts), strict=True))


class RuntimeMetrics:
    """The runtime's metrics, in a registry of their own (see the module docstring).

    Why not ``prometheus_client``'s ``Counter`` and ``Histogram`` objects on the hot path: each
    observation takes its own lock and walks the buckets, and a call makes up to eight of them;
    measured on a no-op call with thread isolation that cost 27 us of server CPU (a fifth of the
    call). Here one call's figures are added to plain numbers under one lock, and the library
    renders them (types, names, ``_bucket``/``_sum``/``_count``, escaping) when Prometheus scrapes.
    """

    def __init__(self) -> None:
        disable_created_metrics()  # no ``*_created`` series: this process's start time is enough
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # CPU seconds, resident memory, open files
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._phases: dict[tuple[str, str], _Histogram] = {}
        self._fetched: dict[str, int] = {}
        self._spilled: dict[str, int] = {}
        self._workloads: dict[str, int] = {}
        self._workload_duration = _Histogram()
        self.registry.register(_EventCollector(self))

    def watch(self, read: Callable[[], Mapping[str, Any]]) -> None:
        """Report the runtime's state, as ``read()`` gives it at each scrape (see :class:`_StateCollector`)."""
        self.registry.register(_StateCollector(read))

    def call_ended(self, function: str, outcome: invoke.Outcome) -> None:
        """One ``POST /invoke`` answered (worker thread, right after ``invoke.handle``)."""
        key = (function, call_outcome(outcome))
        phases = outcome.phases
        now = time.time()
        with self._lock:
            self._calls[key] = self._calls.get(key, 0) + 1
            if phases is None:  # refused before it ran, or joined another request's call
                return
            if phases.arrived:
                _histogram(self._durations, function).observe(max(0.0, now - phases.arrived))
                _histogram(self._phases, (function, "queued")).observe(
                    max(0.0, phases.started - phases.arrived)
                )
            for phase, (start, end) in (
                ("fetch", phases.fetch),
                ("function", phases.call),
                ("spill", phases.spill),
            ):
                if start:
                    _histogram(self._phases, (function, phase)).observe(max(0.0, end - start))
            if phases.fetched_bytes:
                self._fetched[function] = self._fetched.get(function, 0) + phases.fetched_bytes
            if phases.spilled_bytes:
                self._spilled[function] = self._spilled.get(function, 0) + phases.spilled_bytes

    def workload_ended(self, events: list[dict[str, Any]], stop_reason: str, seconds: float) -> None:
        """A workload this replica started has ended (on the event loop, when its process exits)."""
        outcome = workload_outcome(events, stop_reason)
        with self._lock:
            self._workloads[outcome] = self._workloads.get(outcome, 0) + 1
            self._workload_duration.observe(max(0.0, seconds))

    def exposition(self) -> bytes:
        """The text exposition format Prometheus scrapes."""
        return generate_latest(self.registry)

    def families(self) -> Iterator[Metric]:
        """The event metrics as they stand (a consistent copy, taken under the lock)."""
        with self._lock:
            calls = dict(self._calls)
            durations = {k: (v.buckets(), v.total) for k, v in self._durations.items()}
            phases = {k: (v.buckets(), v.total) for k, v in self._phases.items()}
            fetched, spilled, workloads = dict(self._fetched), dict(self._spilled), dict(self._workloads)
            workload_duration = (self._workload_duration.buckets(), self._workload_duration.total)
        yield _counter(
            "invocations",
            "POST /invoke requests answered, by function and outcome (ok, error, rejected, unavailable, joined)",
            ("function", "outcome"),
            calls,
        )
        duration = HistogramMetricFamily(
            f"{PREFIX}_invocation_duration_seconds",
            "Seconds from the whole request being read to the answer, for calls that ran here",
            labels=("function",),
        )
        for function, (buckets, total) in sorted(durations.items()):
            duration.add_metric((function,), buckets, total)
        yield duration
        phase = HistogramMetricFamily(
            f"{PREFIX}_invocation_phase_seconds",
            "Where a call's time went: queued (waiting for a slot), fetch (arguments by reference), "
            "function, spill (encoding and spilling the result)",
            labels=("function", "phase"),
        )
        for labels, (buckets, total) in sorted(phases.items()):
            phase.add_metric(labels, buckets, total)
        yield phase
        yield _counter(
            "fetched_bytes",
            "Bytes of arguments passed by reference and fetched from the store",
            ("function",),
            {(k,): v for k, v in fetched.items()},
        )
        yield _counter(
            "spilled_bytes",
            "Bytes of results spilled to the store (returned as references)",
            ("function",),
            {(k,): v for k, v in spilled.items()},
        )
        yield _counter(
            "workloads",
            "Airflow tasks (the KnativeExecutor's workloads) this replica started, by how they ended",
            ("outcome",),
            {(k,): v for k, v in workloads.items()},
        )
        histogram = HistogramMetricFamily(
            f"{PREFIX}_workload_duration_seconds", "Seconds from a workload's start to its supervisor's exit"
        )
        histogram.add_metric((), *workload_duration)
        yield histogram


def _histogram(series: dict[Any, _Histogram], key: Any) -> _Histogram:
    found = series.get(key)
    if found is None:
        found = series[key] = _Histogram()
    return found


def _counter(name: str, documentation: str, labels: tuple[str, ...], values: Mapping[Any, float]) -> Metric:
    family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


class _EventCollector(Collector):
    """The counters and histograms of :class:`RuntimeMetrics`, rendered at scrape time."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()


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
