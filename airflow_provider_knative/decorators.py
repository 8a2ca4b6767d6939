"""``@task.knative``: the decorated function runs inside a Knative Service.

The Airflow worker only ships the call: function id (``dag_id/task_id``), a hash of the
function's source (the runtime refuses another version), the arguments and a small context,
as one ``protocol.Invocation``. The function's return value comes back in the answer.

Pass by reference: the task's arguments are resolved under the XCom backend's
``pass_references()``, for plain and mapped tasks alike, so an upstream value that was
spilled to the object store reaches the runtime as an ``ObjectRef`` and the worker never
downloads it; a result the runtime spilled comes back as an ``ObjectRef`` and the XCom
backend stores that reference as it is.

Local mode (``[knative] local_mode`` or ``local=True``) calls the function in this process
through the same codec round trip, so ``dag.test()`` works without a service and a
breakpoint in the function stops there.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

import attr
from airflow.sdk.bases.decorator import DecoratedMappedOperator, DecoratedOperator, TaskDecorator

from airflow_provider_knative import codec, config, functions, protocol, walk
from airflow_provider_knative.airflow_compat import KNOWN_CONTEXT_KEYS, AirflowException, KnativeTaskDecorator
from airflow_provider_knative.errors import KnativeError, RemoteFunctionError
from airflow_provider_knative.invoker import Request, Response, read_result, timing_line
from airflow_provider_knative.operators import KnativeOperator, airflow_errors
from airflow_provider_knative.remote_output import REMOTE_LOG_END, RemoteOutput, opening

log = logging.getLogger(__name__)


class KnativeFunctionError(KnativeError, AirflowException):
    """The function raised inside the Knative Service. Message: remote type, message, traceback."""

    def __init__(self, message: str, remote_type: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type


def _pass_references() -> Any:
    from airflow_provider_knative.xcom import pass_references

    return pass_references()


def _materialize(value: Any) -> Any:
    """Turn lazy XCom sequences (a mapped upstream's results) into lists, recursively.

    Called inside ``pass_references()``: the items are pulled now, so spilled ones become refs.
    """
    from airflow.sdk.execution_time.lazy_sequence import LazyXComSequence

    def leaf(item: Any) -> Any:
        if isinstance(item, LazyXComSequence):
            return walk.rebuild(list(item), leaf)
        return item

    return walk.rebuild(value, leaf)


def _remote_context(context: Mapping[str, Any], dag_id: str, task_id: str) -> dict[str, Any]:
    ti = context["ti"]
    params = context.get("params") or {}
    map_index = getattr(ti, "map_index", -1)
    return {
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": str(context.get("run_id") or getattr(ti, "run_id", "")),
        "map_index": -1 if map_index is None else int(map_index),
        "try_number": int(getattr(ti, "try_number", 1) or 1),
        "params": {str(k): params[k] for k in params},
    }


def _check_context_parameters(fn: Callable[..., Any], supplied: Collection[str]) -> None:
    """Refuse, at parse time, a context parameter the function could never receive remotely.

    ``supplied``: the argument names the DAG passes, which a context value never overrides.
    """
    allowed = functions.CONTEXT_PARAMETERS
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue  # **kwargs gets what crosses; a lookup of the rest fails saying so
        if name in KNOWN_CONTEXT_KEYS and name not in allowed and name not in supplied:
            raise ValueError(
                f"{fn.__name__}() takes the Airflow context value {name!r}, but a @task.knative "
                f"function runs inside a Knative Service, outside Airflow, and the context object "
                f"stays in Airflow: it can receive only {', '.join(allowed)} from the context. "
                f"Compute {name!r} in an upstream task and pass it as an argument, or rename the "
                f"parameter."
            )


def _mapped_argument_names(expand_input: Any) -> Collection[str] | None:
    """The argument names ``.expand()``/``.expand_kwargs()`` gives every mapped task, or None
    when they are known only at run time (``.expand_kwargs()`` of an upstream result)."""
    value = expand_input.value
    if isinstance(value, Mapping):  # .expand(name=...)
        return set(value)
    if isinstance(value, Sequence) and value and all(isinstance(item, Mapping) for item in value):
        return set.intersection(*(set(item) for item in value))  # .expand_kwargs([{...}, ...])
    return None


@attr.define(slots=False)
class _KnativeTaskDecorator(KnativeTaskDecorator):
    """``@task.knative``'s decorator: ``.expand()`` refuses a context parameter at parse time too.

    Airflow builds a mapped task's operator only when each mapped task runs, so the check the
    operator makes for a plain task would otherwise fail every mapped task instead of the DAG.
    """

    def _expand(self, expand_input: Any, *, strict: bool) -> Any:
        mapped = _mapped_argument_names(expand_input)
        if mapped is not None:
            _check_context_parameters(self.function, {*(self.kwargs.get("op_kwargs") or {}), *mapped})
        return super()._expand(expand_input, strict=strict)


class _KnativeDecoratedOperator(DecoratedOperator, KnativeOperator):
    """The operator behind ``@task.knative``: a Python function called through the runtime.

    It overrides the two extension points of ``KnativeOperator``: ``build_request`` sends a
    ``protocol.Invocation``; ``read_response`` reads a ``protocol.Result``, re-emits the
    function's logs and fails the task with the remote traceback when the function raised.

    :param local: run in this process instead (default ``[knative] local_mode``).
    :param allow_skew: let the runtime run its deployed version even if the source differs.
    """

    custom_operator_name = functions.DECORATOR_NAME
    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *KnativeOperator.template_fields)

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        local: bool | None = None,
        allow_skew: bool = False,
        **kwargs: Any,
    ) -> None:
        if not kwargs.get("_airflow_mapped_validation_only"):
            _check_context_parameters(python_callable, kwargs.get("op_kwargs") or {})
        super().__init__(python_callable=python_callable, **kwargs)
        self.local = local  # None: [knative] local_mode of the process that runs the task
        self.allow_skew = allow_skew

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # XComArgs in op_args/op_kwargs are pulled here: keep spilled values as references
        with _pass_references():
            super().render_template_fields(context, jinja_env)

    # ------------------------------------------------------------------ the invocation

    def _arguments(self) -> tuple[list[Any], dict[str, Any]]:
        with _pass_references():
            return list(_materialize(list(self.op_args))), dict(_materialize(dict(self.op_kwargs)))

    def invocation(self, context: Mapping[str, Any]) -> protocol.Invocation:
        args, kwargs = self._arguments()
        remote = _remote_context(context, self.dag_id, self.task_id)
        return protocol.Invocation(
            function_id=protocol.function_id(self.dag_id, self.task_id),
            source_hash=protocol.source_hash(self.python_callable),
            args=args,
            kwargs=kwargs,
            context=remote,
            store=protocol.StoreSettings(
                url=config.get("xcom_store_url"),
                inline_max_bytes=config.get("xcom_inline_max_bytes"),
            ),
            allow_skew=self.allow_skew,
            invocation_id=protocol.invocation_id(
                self.dag_id, remote["run_id"], self.task_id, remote["map_index"], remote["try_number"]
            ),
        )

    def _encode(self, invocation: protocol.Invocation) -> bytes:
        try:
            return invocation.encode()
        except TypeError as exc:
            raise AirflowException(
                f"{self.task_id}: the arguments cannot be sent to the Knative function: "
                f"{str(exc).replace('value', 'invocation', 1)}. Pass plain data, numpy arrays, "
                f"DataFrames or Arrow tables (no pickle)"
            ) from None

    def build_request(self, context: Any) -> Request:
        invocation = self.invocation(context)
        return Request(
            url=self.base_url() + protocol.INVOKE_PATH,
            body=self._encode(invocation),
            invocation_id=invocation.invocation_id,
            headers_extra=self.request_headers(),
        )

    def output_sink(self) -> RemoteOutput:
        return RemoteOutput(self.log, self._where())

    def read_response(self, response: Response, url: str, context: Any) -> Any:
        try:
            result = read_result(response, url)
        except RemoteFunctionError as exc:
            self._emit_remote_logs(exc.result)  # type: ignore[arg-type]
            self._log_timing(exc.result)  # type: ignore[arg-type]
            remote_type = getattr(getattr(exc.result, "error", None), "type", "")
            what = (
                "the call did not complete"  # the pod went away under it, or it was cancelled
                if remote_type in protocol.POD_GONE_ERRORS or remote_type == protocol.CANCELLED
                else "the function failed"
            )
            raise KnativeFunctionError(
                f"{self.task_id}: {what} in {self._where()}: {exc}", remote_type
            ) from None
        self._emit_remote_logs(result)
        self._log_timing(result)
        value = result.value
        if isinstance(value, codec.ObjectRef) and (self.multiple_outputs or self._mapped_over()):
            # Airflow needs the dict (one XCom per key) or the list (to count and index it for
            # .expand()) itself. The runtime stores a container of up to spill.MAX_SPLIT_ITEMS
            # items item by item, so this happens only for bigger ones.
            from airflow_provider_knative.xcom import fetch

            self.log.info("fetching the spilled result %s: Airflow needs the container itself", value.url)
            value = fetch(value)
        return value

    def _log_timing(self, result: protocol.Result) -> None:
        """The one line that says where the call's time went (this side's and the pod's)."""
        if self.client_timing:
            self.log.info(
                "%s", timing_line(self.client_timing, result.timings, result.replica, self._where())
            )

    def _mapped_over(self) -> bool:
        """Whether a downstream task maps over this task's result."""
        return next(iter(self.iter_mapped_dependants()), None) is not None

    def _where(self) -> str:
        return self.service or self.url or "the service"

    def _emit_remote_logs(self, result: protocol.Result) -> None:
        """What the function logged or printed, when it did not stream while the call ran
        (an answer without frames), fenced so it is not mistaken for ours."""
        if not result.logs:
            return
        cut = " (truncated: [knative] log_max_bytes)" if result.logs_truncated else ""
        self.log.info(
            "%s\n%s\n%s",
            opening(self._where(), f", {result.duration_seconds:.2f} s{cut}"),
            result.logs.rstrip("\n"),
            REMOTE_LOG_END,
        )

    # ------------------------------------------------------------------ execution

    def execute(self, context: Any) -> Any:
        if config.get("local_mode") if self.local is None else self.local:
            return self._handle_output(self._run_locally(context))
        return super().execute(context)

    def execute_complete(self, context: Any, event: Mapping[str, Any] | None = None) -> Any:
        return self._handle_output(super().execute_complete(context, event))

    def _run_locally(self, context: Any) -> Any:
        """Call the function here, with the same encode/decode steps as a remote call."""
        received = protocol.Invocation.decode(self._encode(self.invocation(context)))
        fn = functions.Function.of(self.python_callable, self.dag_id, self.task_id, fileloc="")
        with airflow_errors(self.task_id):
            args, kwargs = functions.prepare(fn, received)
            self.log.info("Running %s locally ([knative] local_mode)", received.function_id)
            value = functions.call(fn, args, kwargs)
            return functions.round_trip(value, received.function_id)


class _KnativeMappedOperator(DecoratedMappedOperator):
    """A mapped ``@task.knative``: its expanded arguments are resolved as references too.

    ``MappedOperator.render_template_fields`` pulls the ``.expand()`` values before the
    operator exists, so the pass-by-reference window has to open here, one step earlier
    (see ``airflow_compat``).
    """

    __slots__ = ()

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        try:
            with _pass_references():
                super().render_template_fields(context, jinja_env)
        except TypeError as exc:
            if "ObjectRef" not in str(exc):
                raise
            # The mapped-over value was spilled whole (a container too big to store item by
            # item): Airflow must index it, so it is read here, and each item travels inline.
            log.info("the mapped-over value was spilled whole; reading it to pick this task's item")
            super().render_template_fields(context, jinja_env)


def knative_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """Run the decorated function in the Knative Service named by ``service=``.

    Every ``KnativeOperator`` argument is accepted (``service``, ``namespace``, ``url``,
    ``deferrable``, timeouts, ``idempotent``, ``service_settings``...) plus ``local`` and
    ``allow_skew``.
    """
    multiple = cast("bool", attr.NOTHING) if multiple_outputs is None else multiple_outputs

    def decorate(fn: Callable[..., Any]) -> Any:
        return _KnativeTaskDecorator(
            function=fn,
            multiple_outputs=multiple,
            operator_class=_KnativeDecoratedOperator,
            kwargs=kwargs,
            mapped_class=_KnativeMappedOperator,
        )

    if python_callable is not None:
        if not callable(python_callable):
            raise TypeError("@task.knative takes keyword arguments only, e.g. @task.knative(service='name')")
        return cast("TaskDecorator", decorate(python_callable))
    return cast("TaskDecorator", decorate)
