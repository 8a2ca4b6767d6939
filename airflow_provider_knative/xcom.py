"""``KnativeXComBackend``: small values inline in Airflow's database, large ones in a store.

Enable it with ``AIRFLOW__CORE__XCOM_BACKEND=airflow_provider_knative.xcom.KnativeXComBackend``.
What ``serialize_value`` hands Airflow to put in the ``xcom`` table (a JSON column):

* **plain JSON** only when every reader gets the very same value and type back (exact JSON
  types, 64-bit ints, floats other than NaN/inf/-0.0 within 1e16, not a bare number SQLite
  would change such as ``500.0``, no NUL, no serde-reserved keys, at most 199 levels: see
  ``_as_plain_json``) and its JSON is at most
  ``[knative] xcom_inline_max_bytes``: the UI and the REST API show it as it is;
* ``{"__knative_xcom__": 1, "packed": "<base64 codec frame>", "preview": ...}`` for other
  values whose encoded frame fits under the same limit (tuples, datetimes, small arrays, ...),
  and for a list, tuple or dict over the limit stored item by item (its large items spilled
  one by one: ``spill.encode_or_spill``), so a mapped-over result stays a list Airflow can index;
* ``{"__knative_xcom__": 1, "ref": URL, "size": N, "sha256": HEX, "summary": "...",
  "preview": ...}`` for everything larger: the frame is streamed to the object store and only
  this reference, which needs no context to resolve (``deserialize_value`` gets none), stays
  in the DB.

Readable where people look: Airflow's UI and REST API never call ``deserialize_value``; they
render the stored JSON with ``airflow.serialization.stringify``. So every marker also carries
Airflow's serde keys (``__classname__``, ``__version__``, ``__data__``), which stringify shows as
text: tuples, sets and frozensets of plain items in Airflow's own shape (shown as stock Airflow
shows them), anything else as ``<type>@version=1(<preview>)``, and a spilled value as
``spilled@version=1(<summary>, <size> in <url>\n<first rows or items>)``. ``preview`` is at most
``[knative] xcom_preview_max_chars`` characters. Reading never looks at these keys: the
``packed``/``ref`` fields alone decide the value, so markers without them (older versions)
read the same.

A user dict that happens to hold the ``__knative_xcom__`` key is stored packed, so it comes
back unchanged. A ``codec.ObjectRef`` (a result the runtime already spilled) is stored as a
reference as it is, without downloading it.

Reading a reference verifies the object's size and checksum (``[knative] checksum``) and raises
``SpilledValueError`` naming the URL when the object is missing, unreadable or corrupt: a
task never silently receives a path instead of its data. Errors on the write side raise out
of ``serialize_value`` before Airflow writes anything, so no row points at a missing object.

Pass by reference: inside ``with pass_references():`` ``deserialize_value`` returns the
``ObjectRef`` of a spilled value instead of downloading it. The Knative operator resolves
its arguments under it, so a large argument goes to the function as a reference and the
runtime fetches it from the store itself; the Airflow worker never holds the bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from airflow.sdk.bases.xcom import BaseXCom

from airflow_provider_knative import aws, codec, config, preview
from airflow_provider_knative.codec import ObjectRef
from airflow_provider_knative.errors import SpilledValueError, StoreError
from airflow_provider_knative.spill import Owner, encode_or_spill, load_ref, resolve_refs
from airflow_provider_knative.store import open_store
from airflow_provider_knative.walk import leaves

log = logging.getLogger(__name__)
aws.install()  # [knative] aws_conn_id: the store's S3 credentials from an Airflow connection

MARKER = "__knative_xcom__"
MARKER_VERSION = 1

_pass_refs: contextvars.ContextVar[bool] = contextvars.ContextVar("knative_xcom_pass_refs", default=False)

# msgspec (already an Airflow dependency) checks a 1 KB dict in ~8 us; the json module needs ~35
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


@contextmanager
def pass_references() -> Iterator[None]:
    """Within this block, spilled values deserialize to their ``ObjectRef``, not the value.

    Use it where the value is only forwarded (an operator sending its arguments to a
    Knative function): the receiver fetches the object from the store itself. Inline values
    are unaffected. It is a context variable, so it holds for this thread or task only.
    """
    token = _pass_refs.set(True)
    try:
        yield
    finally:
        _pass_refs.reset(token)


def references_passed() -> bool:
    """True inside ``pass_references()``."""
    return _pass_refs.get()


def is_marker(value: Any) -> bool:
    """Whether a stored XCom value is one of this backend's markers (and not plain JSON)."""
    return type(value) is dict and MARKER in value


def ref_of(stored: Any) -> ObjectRef | None:
    """The ``ObjectRef`` held by a stored reference marker, else None (never downloads)."""
    if not is_marker(stored) or "ref" not in stored:
        return None
    try:
        return ObjectRef.from_dict(
            {
                "url": stored["ref"],
                "size": stored.get("size"),
                "sha256": stored.get("sha256"),
                "summary": stored.get("summary", ""),
                "preview": stored.get("preview", ""),
            }
        )
    except codec.CodecError as exc:
        raise SpilledValueError(f"XCom reference marker {stored!r} is malformed: {exc}") from None


#: the keys of Airflow's serde JSON, which the api-server's stringify() renders as text
SERDE_CLASSNAME, SERDE_VERSION, SERDE_DATA = "__classname__", "__version__", "__data__"
#: the ``__version__`` the display keys carry (stringify shows it; nothing reads it back)
DISPLAY_VERSION = 1
#: the ``__classname__`` of a spilled value's display (stringify: ``spilled@version=1(...)``)
SPILLED = "spilled"
_NOT_NATIVE = object()


def _preview_limit() -> int:
    return int(config.get("xcom_preview_max_chars", cached=True))


def _ref_marker(ref: ObjectRef) -> dict[str, Any]:
    marker: dict[str, Any] = {
        MARKER: MARKER_VERSION,
        "ref": ref.url,
        "size": ref.size,
        "sha256": ref.sha256,
        "summary": ref.summary,
    }
    limit = _preview_limit()
    head = preview.cut(ref.preview, limit) if limit > 0 else ""
    if head:
        marker["preview"] = head
    text = f"{ref.summary or 'value'}, {_size(ref.size)} in {ref.url}" + (f"\n{head}" if head else "")
    marker.update({SERDE_CLASSNAME: SPILLED, SERDE_VERSION: DISPLAY_VERSION, SERDE_DATA: text})
    return marker


def _packed_marker(value: Any, packed: bytes) -> dict[str, Any]:
    marker: dict[str, Any] = {MARKER: MARKER_VERSION, "packed": base64.b64encode(packed).decode("ascii")}
    limit = _preview_limit()
    text = preview.of(value, limit) if limit > 0 else codec.summarize(value)
    if limit > 0:
        marker["preview"] = text
    native = _native(value, limit) if limit > 0 else _NOT_NATIVE
    if native is not _NOT_NATIVE and isinstance(native, dict):
        marker.update(native)  # a tuple, set or frozenset, in Airflow's own shape
    else:
        marker.update({SERDE_CLASSNAME: _classname(value), SERDE_VERSION: DISPLAY_VERSION, SERDE_DATA: text})
    return marker


def _classname(value: Any) -> str:
    t = type(value)
    name = f"{t.__module__}.{t.__qualname__}"
    # stringify() refuses airflow.* class names (it would deserialize them for real)
    return name if not name.startswith("airflow.") else t.__qualname__


def _native(value: Any, limit: int) -> Any:
    """``value`` as Airflow's serde writes it, when it is made of plain items and its JSON fits
    in ``limit``; ``_NOT_NATIVE`` otherwise. Only for display: the value is read from ``packed``."""
    try:
        shape = _serde_shape(value, depth=0)
    except Exception:  # the display must never fail the push
        return _NOT_NATIVE
    if shape is _NOT_NATIVE:
        return _NOT_NATIVE
    try:
        size = len(_json_encode(shape))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return _NOT_NATIVE
    return shape if size <= limit else _NOT_NATIVE


def _serde_shape(value: Any, depth: int) -> Any:
    t = type(value)
    if t is str:  # as it is only if every database stores it (no NUL, no lone surrogate)
        return value if value == preview.cut(value, len(value)) else _NOT_NATIVE
    if value is None or t is bool:
        return value
    if t is int:
        return value if -(2**63) <= value < 2**64 else _NOT_NATIVE
    if t is float:
        return value if value == value and value not in (float("inf"), float("-inf")) else _NOT_NATIVE
    if depth > 4:
        return _NOT_NATIVE
    if t in (tuple, set, frozenset, list):
        items = list(value)
        if t is not tuple and t is not list:
            try:
                items = sorted(items)
            except Exception:  # mixed types, NaN Decimals, arrays: iteration order
                pass
        shaped = [_serde_shape(item, depth + 1) for item in items]
        if any(item is _NOT_NATIVE for item in shaped):
            return _NOT_NATIVE
        if t is list:
            return shaped
        return {SERDE_CLASSNAME: f"builtins.{t.__name__}", SERDE_VERSION: 1, SERDE_DATA: shaped}
    return _NOT_NATIVE


def _size(size: int) -> str:
    amount = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "bytes" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{size} bytes"  # pragma: no cover - the loop always returns


#: Airflow 3.3 hands XCom values to tasks through its Execution API, whose pydantic models
#: parse JSON with a 200-level nesting limit; the value sits inside {"key": ..., "value": ...},
#: so the value itself may nest 199 levels (tests/test_xcom_exact.py checks the real models).
AIRFLOW_JSON_MAX_DEPTH = 199
#: deepest plain-JSON value: within Airflow's limit and the codec's (one depth rule for both)
PLAIN_JSON_MAX_DEPTH = min(AIRFLOW_JSON_MAX_DEPTH, codec.MAX_DEPTH)
# integers every XCom database keeps exactly (MySQL's JSON type turns larger ones into doubles)
_PLAIN_INT_MIN, _PLAIN_INT_MAX = -(2**63), 2**64 - 1
# a bare integer document SQLite keeps as an integer (a larger one becomes a float: _plain_leaf)
_TOP_INT_MIN, _TOP_INT_MAX = -(2**63), 2**63 - 1
# keys Airflow's serde reserves: a plain dict holding one would be read back as something else
_SERDE_KEYS = frozenset(
    {"__classname__", "__version__", "__data__", "__type", "__var", "__source", "__id__", "__cache__"}
)


def _as_plain_json(value: Any, limit: int) -> bool:
    """Whether ``value`` can be stored as itself: plain JSON that every reader gets back exactly.

    Taken only when the stored JSON reads back as the very same value *and type* on every
    database Airflow supports and Airflow accepts it: exact dict (str keys)/list/str/int/float/
    bool/None, no subclasses (an IntEnum or a numpy float64 would come back as int/float);
    floats within ±1e16 other than -0.0 (Airflow's API refuses NaN/inf; PostgreSQL's JSONB
    turns -0.0 into 0.0 and 1e16 into an int); integers within 64 bits (MySQL keeps no more);
    a bare number only where SQLite keeps it (``_plain_leaf``: not ``500.0``); no NUL
    characters (JSONB refuses them); no serde-reserved keys; nesting within
    ``PLAIN_JSON_MAX_DEPTH``; and JSON of at most ``limit`` bytes. Everything else is packed,
    which carries it exactly.
    """
    if is_marker(value):
        return False  # a user value that looks like ours: packed, so it comes back unchanged
    if not _plain_shape(value):
        return False
    try:
        text = _json_encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return False  # e.g. lone surrogates, which UTF-8 cannot carry
    if len(text) > limit or b"\\u0000" in text:
        return False
    return not (b'"__' in text and _has_serde_key(value))


def _plain_shape(value: Any) -> bool:
    """Exact JSON types only, floats and ints every reader keeps, str keys, depth within limits.

    One iterative pass over the value, level by level, looking at each item's type once (the
    checks are inlined: this runs for every XCom value and costs about what encoding it does).
    Floats: -1e16 < x < 1e16 excludes NaN and infinities, and the floats that are written
    1e16, 1.5e16, ... which PostgreSQL's JSONB gives back as 10000000000000000: an int; -0.0
    it gives back as 0.0.
    """
    t = type(value)
    if t is not dict and t is not list:
        return _plain_leaf(value)
    int_min, int_max, copysign = _PLAIN_INT_MIN, _PLAIN_INT_MAX, math.copysign
    level = [value]
    depth = 1
    while True:
        nxt: list[Any] = []
        push = nxt.append
        for obj in level:
            items: Any
            if type(obj) is dict:
                for key in obj:
                    if type(key) is not str:
                        return False
                items = obj.values()
            else:
                items = obj
            for x in items:
                tx = type(x)
                if tx is str or x is None or tx is bool:
                    continue
                if tx is int:
                    if int_min <= x <= int_max:
                        continue
                    return False
                if tx is float:
                    if -1e16 < x < 1e16 and (x != 0.0 or copysign(1.0, x) > 0):
                        continue
                    return False
                if tx is dict or tx is list:
                    push(x)
                    continue
                return False
        if not nxt:
            return True
        depth += 1
        if depth > PLAIN_JSON_MAX_DEPTH:
            return False
        level = nxt


def _plain_leaf(x: Any) -> bool:
    """A value that is not a container, stored as the whole JSON document: stricter than an item.

    SQLite (Airflow's default database) gives the ``xcom.value`` column NUMERIC affinity, so a
    document that is a bare number is stored as a SQLite number, not as text: ``500.0`` comes
    back as the int ``500`` (any float with an integral value within 64 bits) and an int beyond
    64 signed bits as a float. Inside a list or dict the document is text and every number is
    kept, so only the top level needs this.
    """
    t = type(x)
    if t is int:
        return _TOP_INT_MIN <= x <= _TOP_INT_MAX
    if t is float:
        return -1e16 < x < 1e16 and not x.is_integer()
    return t is str or t is bool or x is None


def _has_serde_key(value: Any) -> bool:
    stack = [value]
    while stack:
        obj = stack.pop()
        if type(obj) is dict:
            if not _SERDE_KEYS.isdisjoint(obj):
                return True
            stack.extend(obj.values())
        elif type(obj) is list:
            stack.extend(obj)
    return False


def spill(
    value: Any,
    *,
    key: str | None = None,
    task_id: str | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
    map_index: int | None = None,
    inline_max_bytes: int | None = None,
) -> Any:
    """The JSON-able form of ``value`` for the ``xcom`` table (see the module docstring).

    Raises TypeError for values the codec cannot carry (naming where in the value) and
    SpilledValueError when the store cannot take a large value; nothing is left half-written.
    """
    if isinstance(value, ObjectRef):
        return _ref_marker(value)
    limit = config.get("xcom_inline_max_bytes", cached=True) if inline_max_bytes is None else inline_max_bytes
    if _as_plain_json(value, limit):
        return value
    where = (dag_id, run_id, task_id, map_index, key)
    owner = Owner(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)
    try:
        packed = encode_or_spill(value, limit, owner, key or "_")
    except StoreError as exc:
        raise SpilledValueError(
            f"cannot spill XCom {_describe(where)} ({codec.summarize(value)}) to the object store: {exc}"
        ) from None
    if isinstance(packed, ObjectRef):
        return _ref_marker(packed)
    return _packed_marker(value, packed)


def _describe(where: tuple) -> str:
    dag_id, run_id, task_id, map_index, key = where
    index = f"[{map_index}]" if map_index is not None and map_index >= 0 else ""
    return f"{key!r} of {dag_id}.{task_id}{index} (run {run_id})"


def load(stored: Any) -> Any:
    """The value for what ``spill`` returned (downloads a reference unless ``pass_references``)."""
    if not is_marker(stored):
        return stored
    version = stored[MARKER]
    if version != MARKER_VERSION:
        raise SpilledValueError(
            f"XCom value was written by a newer airflow-provider-knative (marker version {version!r}, "
            f"this one reads {MARKER_VERSION}); upgrade the provider"
        )
    if "packed" in stored:
        try:
            data = base64.b64decode(stored["packed"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise SpilledValueError(f"inline XCom value is not valid base64: {exc}") from None
        try:
            value = codec.loads(data)
        except codec.CodecError as exc:
            raise SpilledValueError(f"inline XCom value is corrupt: {exc}") from None
        # a container stored item by item holds references: the task gets the items themselves
        return value if _pass_refs.get() else _resolve(value)
    ref = ref_of(stored)
    if ref is None:
        raise SpilledValueError(f"XCom marker holds neither 'packed' nor 'ref': {sorted(stored)}")
    if _pass_refs.get():
        return ref
    return fetch(ref)


def _resolve(value: Any) -> Any:
    try:
        return resolve_refs(value)
    except StoreError as exc:
        raise SpilledValueError(f"cannot read an item of a spilled XCom value: {exc}") from None
    except codec.CodecError as exc:
        raise SpilledValueError(f"an item of a spilled XCom value cannot be decoded: {exc}") from None


def fetch(ref: ObjectRef) -> Any:
    """Download, verify (size and checksum) and decode a spilled value; errors name the URL."""
    try:
        return _resolve(load_ref(ref))
    except StoreError as exc:
        raise SpilledValueError(f"cannot read spilled XCom value {ref.url} ({ref.summary}): {exc}") from None
    except codec.CodecError as exc:
        raise SpilledValueError(f"spilled XCom value {ref.url} cannot be decoded: {exc}") from None


def discard(stored: Any, owner: Owner | None = None) -> None:
    """Delete the objects a stored XCom value points to; a no-op for inline values.

    A reference marker's object is deleted. References inside a packed value (a container
    stored item by item) are deleted only when they lie under ``owner``'s key prefix: a
    reference the task merely forwarded belongs to another XCom and must outlive this one.
    A store failure is logged, not raised: purge runs before a cleared task starts again,
    and a leftover object is what ``airflow-knative xcom-cleanup`` removes later.
    """
    ref = ref_of(stored)
    urls = [ref.url] if ref is not None else []
    if ref is None and is_marker(stored) and "packed" in stored and owner is not None:
        own = open_store().root_url.rstrip("/") + "/" + owner.prefix_key()
        with pass_references():
            nested = load(stored)
        urls = [v.url for v in leaves(nested) if isinstance(v, ObjectRef) and v.url.startswith(own)]
    for url in urls:
        try:
            open_store().delete(url)
        except StoreError as exc:
            log.warning("could not delete spilled XCom object %s (xcom-cleanup will retry): %s", url, exc)


class KnativeXComBackend(BaseXCom):
    """Inline JSON, inline packed, or spilled to the object store; see the module docstring."""

    @staticmethod
    def serialize_value(  # type: ignore[override]
        value: Any,
        *,
        key: str | None = None,
        task_id: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        map_index: int | None = None,
    ) -> Any:
        return spill(value, key=key, task_id=task_id, dag_id=dag_id, run_id=run_id, map_index=map_index)

    @staticmethod
    def deserialize_value(result: Any) -> Any:
        return load(result.value)

    @classmethod
    def purge(cls, xcom: Any, *args: Any) -> None:
        owner = None
        if getattr(xcom, "dag_id", None) and getattr(xcom, "task_id", None):
            owner = Owner(xcom.dag_id, xcom.run_id, xcom.task_id, getattr(xcom, "map_index", None))
        discard(getattr(xcom, "value", None), owner)
