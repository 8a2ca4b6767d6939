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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_provider_knative import codec, protocol, spill, store
from airflow_provider_knative.errors import ArgumentMismatch, ReferenceFetchError, ResultEncodingError

#: the operator name Airflow records for a ``@task.knative`` task (``custom_operator_name``);
#: the runtime's allowlist and ``deploy`` find the functions by it
DECORATOR_NAME = "@task.knative"

#: context keys handed to a function parameter of the same name when the caller did not pass it
CONTEXT_PARAMETERS = ("dag_id", "task_id", "run_id", "map_index", "try_number", "params")


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
        for name in CONTEXT_PARAMETERS:
            param = sig.parameters.get(name)
            if (
                param is not None
                and name in inv.context
                and name not in bound.arguments
                and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
            ):
                kwargs[name] = inv.context[name]
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise ArgumentMismatch(
            f"{fn.function_id}: arguments do not fit {fn.callable.__name__}{sig}: {exc}; the DAG that "
            "called it and the deployed function disagree (redeploy the image)"
        ) from None
    return args, kwargs


def _store_for(ref: codec.ObjectRef, settings: protocol.StoreSettings | None) -> store.ObjectStore:
    if settings is not None and ref.url.startswith(settings.url.rstrip("/") + "/"):
        return store.open_store(settings.url)
    return store.open_store()  # this process's own [knative] xcom_store_url; refuses foreign URLs


def fetch_references(
    args: list[Any], kwargs: dict[str, Any], settings: protocol.StoreSettings | None
) -> tuple[list[Any], dict[str, Any]]:
    """Replace every ObjectRef in the arguments by its value, fetching them in parallel."""
    try:
        args, kwargs = spill.resolve_refs((args, kwargs), lambda ref: _store_for(ref, settings))
    except Exception as exc:
        raise ReferenceFetchError(f"cannot fetch an argument passed by reference: {exc}") from exc
    return args, kwargs


def prepare(fn: Function, inv: protocol.Invocation) -> tuple[list[Any], dict[str, Any]]:
    """The arguments to call ``fn`` with: bound, context filled in, references fetched."""
    args, kwargs = bind(fn, inv)
    return fetch_references(args, kwargs, inv.store)


def call(fn: Function, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run the function; an async one gets an event loop of its own in this thread."""
    result = fn.callable(*args, **kwargs)
    if fn.is_async or inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


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
