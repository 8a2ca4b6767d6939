"""The task's trace context on a call to a Knative Service (W3C ``traceparent``), when traced.

Airflow's OpenTelemetry traces (``[traces] otel_on``) give every task try a span: the task
runner makes ``worker.<task_id>`` current around ``execute``, and the triggerer a
``trigger.<task_id>`` around a trigger. Around each call :func:`traced` (on
``KnativeHook.invoke`` and ``ainvoke``) opens a CLIENT span ``knative.invoke``, a child of the
current span, and sends its context as the ``traceparent`` header, so the runtime's spans
(fetch, function, spill) hang under it in the same trace. ``dag.test()`` runs tasks without
the task runner's span: there ``knative.invoke`` is the root of its trace.

A deferred call is made in the triggerer, another process: the operator puts the context it
deferred under in the trigger's kwargs (:func:`current`), and the trigger makes it current
again around the call (:func:`resumed`). Where the triggerer itself does not trace, the
carried context is sent on as it is, so the runtime's spans still join the task's trace.

Traced means: this process has an OpenTelemetry SDK tracer provider, which Airflow installs
exactly when ``[traces] otel_on`` is true. Otherwise nothing is added to the request.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

from airflow_provider_knative.invoker import Request, Response

#: the W3C trace context headers (https://www.w3.org/TR/trace-context/)
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
SPAN_NAME = "knative.invoke"

F = TypeVar("F", bound=Callable[..., Any])


def tracing() -> bool:
    """Whether this process records spans (Airflow's ``configure_otel`` ran with traces on)."""
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def current() -> str:
    """The ``traceparent`` of the current span, for the trigger's kwargs ("" when there is none)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT, "")


@contextlib.contextmanager
def resumed(traceparent: str) -> Iterator[None]:
    """Make the context a task deferred under current again (in the triggerer)."""
    if not traceparent:
        yield
        return
    from opentelemetry import context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    token = context.attach(TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent}))
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def _client_span(request: Request) -> Iterator[tuple[Request, Any]]:
    """``request`` with the ``traceparent`` of a new CLIENT span around the call (see the module
    docstring); as it is when nothing traces and no context is current."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not tracing():
        parent = current()  # a context carried from a traced worker goes on as it is
        yield (
            (
                replace(request, headers_extra={**request.headers_extra, TRACEPARENT: parent})
                if parent
                else request
            ),
            None,
        )
        return
    attributes = {"http.request.method": request.method, "url.full": request.base_url}
    if request.invocation_id:
        attributes["knative.invocation_id"] = request.invocation_id
    tracer = trace.get_tracer("airflow_provider_knative")
    with tracer.start_as_current_span(SPAN_NAME, kind=SpanKind.CLIENT, attributes=attributes) as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        yield replace(request, headers_extra={**request.headers_extra, **carrier}), span


def _answered(span: Any, response: Response) -> None:
    if span is not None:
        span.set_attribute("http.response.status_code", response.status)


def traced(method: F) -> F:
    """Wrap ``KnativeHook.invoke`` / ``ainvoke`` (``self, request, ...``) in :func:`_client_span`."""
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def acall(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
            with _client_span(request) as (sent, span):
                response = await method(self, sent, *args, **kwargs)
                _answered(span, response)
                return response

        return acall  # type: ignore[return-value]

    @functools.wraps(method)
    def call(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        with _client_span(request) as (sent, span):
            response = method(self, sent, *args, **kwargs)
            _answered(span, response)
            return response

    return call  # type: ignore[return-value]
