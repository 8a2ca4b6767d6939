"""Spans of the calls this runtime runs, exported through OTLP when the ``OTEL_*`` environment asks.

On when the standard OpenTelemetry variables configure an exporter (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_TRACES_EXPORTER`` other than ``none``), and
not ``OTEL_SDK_DISABLED=true``. Off, this module is never imported: the server process imports
nothing from OpenTelemetry and sends nothing (see ``server.serve``).

The spans are made **after the fact, in the server process**, from the timestamps the call
measured where it ran (``invoke.Phases``: a worker thread, or a forked child that sends them to
the server). A forked child never touches an exporter, so no exporter thread or socket is ever
forked, and a call pays nothing for tracing while it runs. Per call that ran here:

* ``knative.runtime`` (SERVER), from the request's arrival to its answer, a child of the
  caller's W3C ``traceparent`` (the task's span, through the hook or the trigger) or the root
  of a new trace when the request carries none; the caller's sampling decision is kept
  (OpenTelemetry's default parent-based sampler, ``OTEL_TRACES_SAMPLER`` applies);
* its children ``knative.fetch`` (arguments passed by reference), ``knative.function`` (the
  function itself; status ERROR when it raised) and ``knative.spill`` (encoding the result and
  spilling it when large). The time between the server span's start and ``knative.fetch`` is
  the time the call waited for a slot.

The exporter is the one ``OTEL_TRACES_EXPORTER`` names (default ``otlp``), as Airflow's own
``configure_otel`` loads it; for ``otlp``, ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
``OTEL_EXPORTER_OTLP_PROTOCOL`` choose ``http/protobuf`` or ``grpc`` (the default, as in
Airflow). The provider is this module's own, never the process-global one: with thread
isolation the server also imports Airflow, which may set the global provider itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from airflow_provider_knative.runtime import invoke

log = logging.getLogger("airflow_provider_knative.runtime")

SERVICE_NAME = "airflow-knative-runtime"
#: how long a span waits for the exporter to be set up (it is, in the background, at start)
SETUP_WAIT_SECONDS = 10.0
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_PROTOCOL_EXPORTERS = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for spans to be exported (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(environ.get(name, "").strip() for name in _ENDPOINTS)


def exporter_name(environ: Mapping[str, str] = os.environ) -> str:
    """The ``opentelemetry_traces_exporter`` entry point to load (see the module docstring)."""
    name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if name != "otlp":
        return name
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol not in _PROTOCOL_EXPORTERS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use one of {sorted(_PROTOCOL_EXPORTERS)}"
        )
    return _PROTOCOL_EXPORTERS[protocol]


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Tracer:
    """Makes the spans of finished calls (see the module docstring). :meth:`start` once, in the server."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._ready = threading.Event()
        self._failed = False
        self._provider: Any = None
        self._tracer: Any = None
        self._propagator: Any = None
        self._api: Any = None

    def start(self) -> None:
        """Set up the exporter in the background: importing it (gRPC, protobuf) takes a while,
        and a cold start should not wait for it."""
        threading.Thread(target=self._setup, name="knative-tracing-setup", daemon=True).start()

    def _setup(self) -> None:
        try:
            from importlib.metadata import entry_points

            from opentelemetry import trace
            from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_KEY
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            name = exporter_name()
            found = entry_points(group="opentelemetry_traces_exporter", name=name)
            if not found:
                raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: no such span exporter is installed")
            resource = Resource.create()
            if str(resource.attributes.get(SERVICE_KEY, "")).startswith("unknown_service"):
                resource = resource.merge(Resource({SERVICE_KEY: SERVICE_NAME}))
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(BatchSpanProcessor(next(iter(found)).load()()))
            self._api = trace
            self._provider = provider
            self._tracer = provider.get_tracer("airflow_provider_knative.runtime")
            self._propagator = TraceContextTextMapPropagator()
            log.info("tracing: spans of every call go to the %s exporter", name)
        except Exception as exc:  # a bad setting must not take the runtime down: say so, serve on
            self._failed = True
            log.error("tracing is configured (OTEL_*) but could not start, so no spans are sent: %s", exc)
        finally:
            self._ready.set()

    def record(self, headers: Mapping[str, str], function: str, call: str, outcome: invoke.Outcome) -> None:
        """The spans of one call that ran here (nothing for a call refused before it ran)."""
        phases = outcome.phases
        if phases is None or not self._ready.wait(SETUP_WAIT_SECONDS) or self._failed:
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        tracer = self._tracer
        attributes: dict[str, Any] = {
            "knative.function_id": function,
            "knative.replica": self.replica,
            "http.request.method": "POST",
            "url.path": "/invoke",
            "http.response.status_code": outcome.status,
        }
        if call:
            attributes["knative.invocation"] = call
        server = tracer.start_span(
            "knative.runtime",
            context=self._propagator.extract(headers),
            kind=SpanKind.SERVER,
            start_time=_ns(phases.arrived or phases.started),
            attributes=attributes,
        )
        if not server.is_recording():  # the caller's trace is not sampled
            return
        inner = self._api.set_span_in_context(server)
        failed = outcome.status >= 500
        steps: tuple[tuple[str, tuple[float, float], dict[str, Any]], ...] = (
            ("knative.fetch", phases.fetch, {"knative.fetched_bytes": phases.fetched_bytes}),
            ("knative.function", phases.call, {}),
            ("knative.spill", phases.spill, {"knative.spilled_bytes": phases.spilled_bytes}),
        )
        for name, (start, end), extra in steps:
            if not start:
                continue  # it never got there (a failed fetch, a function that raised)
            span = tracer.start_span(name, context=inner, start_time=_ns(start), attributes=extra)
            if failed and name == "knative.function" and not phases.spill[0]:
                span.set_status(Status(StatusCode.ERROR, outcome.error[:500]))
            span.end(end_time=_ns(max(start, end)))
        if failed:
            server.set_status(Status(StatusCode.ERROR, outcome.error[:500]))
        server.end(end_time=_ns(time.time()))

    def close(self) -> None:
        """Send what is still queued (the process is about to exit)."""
        if self._ready.wait(SETUP_WAIT_SECONDS) and self._provider is not None:
            self._provider.shutdown()
