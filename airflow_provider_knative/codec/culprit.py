"""Naming the part of a value that could not be encoded, by its path (``value['a'][3]``)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

from airflow_provider_knative.codec.arrow import ArrowTooLarge
from airflow_provider_knative.codec.layout import MAX_DEPTH
from airflow_provider_knative.codec.pack import Encoder, defaultdict_payload, refusal
from airflow_provider_knative.codec.prepass import INTERVAL, MAPPINGS, SERIES, Refused, scan_kind


def describe_failure(value: Any, exc: Exception) -> str:
    """Find the first part of ``value`` that cannot be encoded and say where it is."""
    if isinstance(exc, ArrowTooLarge):
        return f"{path_to(value, exc.owner)}: {exc}"
    found = _find_unencodable(value, "value", 0)
    if found is None:
        return f"value: cannot encode: {exc}"
    return f"{found[0]}: {found[1]}"


def _children(value: Any, path: str) -> Iterator[tuple[str, Any]] | None:
    """(path, item) for what ``value`` holds, in packing order; None for a leaf."""
    t = type(value)
    if t in MAPPINGS:

        def items() -> Iterator[tuple[str, Any]]:
            for k, v in value.items():
                if type(k) is not str:
                    yield f"{path} key {k!r}", k
                yield f"{path}[{k!r}]", v

        return items()
    if t is list or t is tuple:
        return ((f"{path}[{i}]", v) for i, v in enumerate(value))
    if t is set or t is frozenset:
        return ((f"{path} item {v!r}", v) for v in value)
    kind = scan_kind(t)
    if kind == INTERVAL:
        return iter(((f"{path}.left", value.left), (f"{path}.right", value.right)))
    if kind == SERIES:
        return iter(((f"{path}.name", value.name),))
    return None


def _find_unencodable(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    children = _children(value, path)
    if children is None:
        try:
            Encoder().encode_body(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return path, _reason(value, exc)
        return None
    if depth >= MAX_DEPTH:
        return (
            path,
            f"cannot encode: nested more than {MAX_DEPTH} levels deep (the codec's MAX_DEPTH); flatten it",
        )
    if type(value) is collections.defaultdict:
        try:
            defaultdict_payload(Encoder(), value)
        except TypeError as exc:
            return path, str(exc)
    for sub_path, child in children:
        found = _find_unencodable(child, sub_path, depth + 1)
        if found is not None:
            return found
    return None


def _reason(value: Any, exc: Exception) -> str:
    message = "" if isinstance(exc, Refused) else str(exc)
    if not message:
        return refusal(type(value), value)
    return message if message.startswith("cannot encode") else f"cannot encode {type(value)!r}: {message}"


def path_to(value: Any, target: Any) -> str:
    """Where ``target`` (by identity) sits in ``value``, for messages."""

    def search(node: Any, path: str, depth: int) -> str | None:
        if node is target:
            return path
        if depth > MAX_DEPTH:
            return None
        for sub_path, child in _children(node, path) or ():
            found = search(child, sub_path, depth + 1)
            if found is not None:
                return found
        return None

    return search(value, "value", 0) or "value"
