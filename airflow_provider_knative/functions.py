"""A ``@task.knative`` function: what identifies it, and how it is called with what was sent.

The runtime (in the pod) and local mode (in the Airflow worker) both call functions through
here, so a function sees exactly the same arguments in both: checked against its signature,
context parameters filled in, references fetched from the object store. There is no HTTP
here: a failure is a :class:`~errors.FunctionCallError`, and the runtime decides which status
it answers with.
"""

from __future__ import annotations

import asyncio
import inspect
import linecache
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from airflow_provider_knative import codec, protocol, spill, store
from airflow_provider_knative.errors import (
    ArgumentMismatch,
    ContextValueUnavailable,
    ReferenceFetchError,
    ResultEncodingError,
)

#: the operator name Airflow records for a ``@task.knative`` task (``custom_operator_name``);
#: the runtime's allowlist and ``deploy`` find the functions by it
DECORATOR_NAME = "@task.knative"

#: context values that cross into the service: a function parameter of the same name receives
#: one when the caller did not pass it, and a function's ``**kwargs`` receives them all
CONTEXT_PARAMETERS = ("dag_id", "task_id", "run_id", "map_index", "try_number", "params")

#: Airflow's own context keys (``airflow.sdk.definitions.context.KNOWN_CONTEXT_KEYS``, Airflow 3.0
#: to 3.3): the names a task function may look up in its ``**kwargs`` on an Airflow worker. Only
#: CONTEXT_PARAMETERS among them cross; a lookup of any other one is answered with an error that
#: says so. Written out because this module imports nothing from Airflow; tests/test_functions.py
#: fails when an Airflow version adds a key.
AIRFLOW_CONTEXT_KEYS = frozenset(
    {
        "asset_state_store",
        "conn",
        "dag",
        "dag_run",
        "data_interval_end",
        "data_interval_start",
        "ds",
        "ds_nodash",
        "exception",
        "expanded_ti_count",
        "inlet_events",
        "inlets",
        "logical_date",
        "macros",
        "map_index_template",
        "outlet_events",
        "outlets",
        "params",
        "partition_date",
        "partition_key",
        "prev_data_interval_end_success",
        "prev_data_interval_start_success",
        "prev_end_date_success",
        "prev_start_date_success",
        "reason",
        "run_id",
        "task",
        "task_instance",
        "task_instance_key_str",
        "task_reschedule_count",
        "task_state_store",
        "templates_dict",
        "test_mode",
        "ti",
        "triggering_asset_events",
        "try_number",
        "ts",
        "ts_nodash",
        "ts_nodash_with_tz",
        "var",
    }
)


@dataclass(frozen=True)
class FunctionInfo:
    """What identifies an allowlisted function; enough to admit a call to it.

    The runtime's HTTP server holds only these in process isolation: the callables live in the
    fork server that imported the DAG folder.
    """

    function_id: str
    source_hash: str
    dag_id: str
    task_id: str
    fileloc: str


@dataclass(frozen=True)
class Function(FunctionInfo):
    """One callable entry of the runtime's allowlist (local mode builds one the same way)."""

    callable: Callable[..., Any]
    signature: inspect.Signature | None
    is_async: bool = False

    @classmethod
    def of(cls, fn: Callable[..., Any], dag_id: str, task_id: str, fileloc: str) -> Function:
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        return cls(
            function_id=protocol.function_id(dag_id, task_id),
            source_hash=protocol.source_hash(fn),
            callable=fn,
            signature=signature,
            dag_id=dag_id,
            task_id=task_id,
            fileloc=fileloc,
            is_async=inspect.iscoroutinefunction(inspect.unwrap(fn)),
        )


def bind(fn: Function, inv: protocol.Invocation) -> tuple[list[Any], dict[str, Any]]:
    """Check the arguments against the signature; fill context parameters the caller left out."""
    args, kwargs = list(inv.args), dict(inv.kwargs)
    sig = fn.signature
    if sig is None:
        return args, kwargs
    try:
        bound = sig.bind_partial(*args, **kwargs)
        var_keyword = _var_keyword(sig)
        for name in CONTEXT_PARAMETERS:
            if name not in inv.context or name in kwargs:
                continue
            param = sig.parameters.get(name)
            if param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                if name not in bound.arguments:
                    kwargs[name] = inv.context[name]
            elif param is None and var_keyword is not None:  # as Airflow hands **kwargs the context
                kwargs[name] = inv.context[name]
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise ArgumentMismatch(
            f"{fn.function_id}: arguments do not fit {fn.callable.__name__}{sig}: {exc}; the DAG that "
            "called it and the deployed function disagree (redeploy the image)"
        ) from None
    return args, kwargs


def _var_keyword(sig: inspect.Signature | None) -> str | None:
    """The name of the signature's ``**kwargs`` parameter, if it has one."""
    if sig is None:
        return None
    return next((p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD), None)


def _store_for(ref: codec.ObjectRef, settings: protocol.StoreSettings | None) -> store.ObjectStore:
    if settings is not None and ref.url.startswith(settings.url.rstrip("/") + "/"):
        return store.open_store(settings.url)
    return store.open_store()  # this process's own [knative] xcom_store_url; refuses foreign URLs


def fetch_references(
    args: list[Any],
    kwargs: dict[str, Any],
    settings: protocol.StoreSettings | None,
    fetched: list[codec.ObjectRef] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Replace every ObjectRef in the arguments by its value, fetching them in parallel
    (``fetched`` is given each reference downloaded)."""
    try:
        args, kwargs = spill.resolve_refs((args, kwargs), lambda ref: _store_for(ref, settings), fetched)
    except Exception as exc:
        raise ReferenceFetchError(f"cannot fetch an argument passed by reference: {exc}") from exc
    return args, kwargs


def prepare(
    fn: Function, inv: protocol.Invocation, fetched: list[codec.ObjectRef] | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """The arguments to call ``fn`` with: bound, context filled in, references fetched."""
    args, kwargs = bind(fn, inv)
    return fetch_references(args, kwargs, inv.store, fetched)


def call(fn: Function, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run the function; an async one gets an event loop of its own in this thread.

    A function that looks up a context value that stays in Airflow (``kwargs["ti"]``) fails
    with :class:`ContextValueUnavailable`, which says so, instead of a bare ``KeyError: 'ti'``.
    """
    try:
        result = fn.callable(*args, **kwargs)
        if fn.is_async or inspect.iscoroutine(result):
            result = asyncio.run(result)
    except KeyError as exc:
        unavailable = _unavailable_context_lookup(fn, exc)
        if unavailable is None:
            raise
        raise unavailable from exc
    return result


def _unavailable_context_lookup(fn: Function, exc: KeyError) -> ContextValueUnavailable | None:
    """The error to raise instead of ``exc`` when it is the function's own ``**kwargs`` lookup of
    an Airflow context key that does not cross; None for any other KeyError.

    Precise on purpose, so a user's own ``KeyError`` (``row["task"]``) is never reworded: an
    Airflow context key that does not cross, the function takes ``**kwargs``, which lacks it, and
    the line that failed, in the function's own frame, subscripts that very dict with that key.
    """
    key = exc.args[0] if type(exc) is KeyError and len(exc.args) == 1 else None
    if not isinstance(key, str) or key not in AIRFLOW_CONTEXT_KEYS or key in CONTEXT_PARAMETERS:
        return None
    var_keyword = _var_keyword(fn.signature)
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = getattr(inspect.unwrap(fn.callable), "__code__", None)
    if var_keyword is None or tb is None or tb.tb_frame.f_code is not code:
        return None
    if not _subscripts(tb.tb_frame, tb.tb_lineno, var_keyword, key):
        return None
    name = getattr(fn.callable, "__name__", fn.task_id)
    return ContextValueUnavailable(
        f"{var_keyword}[{key!r}]: {name}() looks up the Airflow context value {key!r}, but the "
        f"context object stays in Airflow: a @task.knative function runs inside a Knative Service, "
        f"and only {', '.join(CONTEXT_PARAMETERS)} cross into it (those are in **{var_keyword}). "
        f"Compute what you need from {key!r} in an upstream task and pass it as an argument"
    )


def _subscripts(frame: FrameType, lineno: int, var_keyword: str, key: str) -> bool:
    """Whether source line ``lineno`` of ``frame`` looks ``key`` up in the frame's ``**kwargs``
    dict (under any local name bound to it, with the key written out or in a local variable)."""
    received = frame.f_locals.get(var_keyword)
    if not isinstance(received, dict) or key in received:
        return False
    local_vars = frame.f_locals.items()
    containers = [re.escape(name) for name, value in local_vars if value is received]
    keys = [re.escape(repr(key)), re.escape(f'"{key}"')]
    keys += [re.escape(name) for name, value in local_vars if isinstance(value, str) and value == key]
    line = linecache.getline(frame.f_code.co_filename, lineno)
    return re.search(rf"\b(?:{'|'.join(containers)})\s*\[\s*(?:{'|'.join(keys)})\s*\]", line) is not None


def _unencodable(function_id: str, exc: TypeError) -> ResultEncodingError:
    return ResultEncodingError(
        f"{function_id}: the return value cannot be sent back: "
        f"{str(exc).replace('value', 'result', 1)}. Return plain data, numpy arrays, "
        "DataFrames or Arrow tables (no pickle)"
    )


def encode_result(value: Any, inv: protocol.Invocation, function_id: str) -> Any:
    """The value to answer with: itself when small, else an ObjectRef to it in the store.

    Raises ResultEncodingError (naming where in the value) or StoreError.
    """
    settings = inv.store
    try:
        if settings is None:  # the caller gave no store: always inline, but check it encodes
            codec.dumps(value)
            return value
        owner = spill.Owner.from_context(inv.context, prefix=settings.key_prefix)
        target = store.open_store(settings.url)
        spilled = spill.encode_or_spill(value, settings.inline_max_bytes, owner, "return_value", target)
    except TypeError as exc:
        raise _unencodable(function_id, exc) from None
    return spilled if isinstance(spilled, codec.ObjectRef) else value


def round_trip(value: Any, function_id: str) -> Any:
    """``value`` after the encode/decode a remote call would put it through (local mode)."""
    try:
        return codec.loads(codec.dumps(value))
    except TypeError as exc:
        raise _unencodable(function_id, exc) from None
