"""Values to objects and back: the one path every spill and every load takes.

The XCom backend, the runtime (results and reference arguments), local mode and the
deferred call's request/response bodies all come through here, and every key comes from
:func:`store.task_key`, so everything the provider writes follows one layout and
``airflow-knative xcom-cleanup`` sees all of it.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from airflow_provider_knative import codec, config, preview, walk
from airflow_provider_knative.codec import ObjectRef
from airflow_provider_knative.store import ObjectStore, open_store, task_key, task_prefix

#: a list, tuple or dict over the inline limit is stored item by item (large items as
#: references, small ones inline) when it has at most this many items, Airflow's default
#: ``[core] max_map_length``: so a result that is mapped over (``.expand()``) is still a list
#: Airflow can count and index, and each mapped task receives only its own item
MAX_SPLIT_ITEMS = 1024
#: when a container is split, items whose encoding is at most this many bytes stay inline
SPLIT_INLINE_ITEM_BYTES = 1024
#: what one reference costs inside a split container, for deciding whether the split fits
_REF_BYTES = 400
#: parallel downloads when a value holds several references
FETCH_CONCURRENCY = 8


@dataclass(frozen=True)
class Owner:
    """The task try an object belongs to; its key is built from this (see ``store.task_key``)."""

    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    prefix: str = ""

    def key(self, name: str) -> str:
        return task_key(self.dag_id, self.run_id, self.task_id, self.map_index, name, self.prefix)

    def prefix_key(self) -> str:
        """The key prefix (ending in ``/``) every object of this task try is stored under."""
        return task_prefix(self.dag_id, self.run_id, self.task_id, self.map_index, self.prefix)

    @classmethod
    def from_context(cls, context: Mapping[str, Any], prefix: str = "") -> Owner:
        """From the small invocation context (``dag_id``, ``run_id``, ``task_id``, ``map_index``)."""
        index = context.get("map_index")
        return cls(
            dag_id=_text(context.get("dag_id")),
            run_id=_text(context.get("run_id")),
            task_id=_text(context.get("task_id")),
            map_index=index if isinstance(index, int) and not isinstance(index, bool) else None,
            prefix=prefix,
        )


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


def encode_or_spill(
    value: Any, limit: int, owner: Owner, name: str, store: ObjectStore | None = None
) -> bytes | ObjectRef:
    """The encoded ``value`` when it fits in ``limit`` bytes, else a reference to it in the store.

    Encoded chunks are buffered only up to the limit; past it everything streams to the
    store, so a large value is never held encoded as a whole. A list, tuple or dict over the
    limit is split when that fits (see :data:`MAX_SPLIT_ITEMS`): the answer is then the
    encoded container whose large items are references. Raises TypeError for a value the
    codec cannot carry and StoreError when the store cannot take it.
    """
    chunks = codec.encode_chunks(value)
    head: list[bytes | memoryview] = []
    buffered = 0
    for chunk in chunks:
        buffered += chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)
        head.append(chunk)
        if buffered > limit:
            split = _split(value, limit, owner, name, store)
            if split is not None:
                return split
            target = store or open_store()

            def stream() -> Iterator[bytes | memoryview]:
                yield from head
                head.clear()  # drop the buffered chunks as soon as they are written
                yield from chunks

            stored = target.put(owner.key(name), stream())
            return _ref(stored, value)
    return b"".join(head)


def _ref(stored: Any, value: Any) -> ObjectRef:
    """The reference to a value just written: where, size, checksum, summary and a preview
    (``[knative] xcom_preview_max_chars``; made now, while the value is at hand)."""
    limit = config.get("xcom_preview_max_chars", cached=True)
    return ObjectRef(stored.url, stored.size, stored.sha256, codec.summarize(value), preview.of(value, limit))


def _encoded_size_over(value: Any, threshold: int) -> bool:
    """Whether ``value`` encodes to more than ``threshold`` bytes (stops encoding once it does)."""
    size = 0
    for chunk in codec.encode_chunks(value):
        size += chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)
        if size > threshold:
            return True
    return False


#: how deep splitting descends: a list of dicts (what ``.expand_kwargs()`` maps over) keeps
#: its dicts, and their large values become references
SPLIT_DEPTH = 2


def _items(value: Any) -> list[tuple[Any, Any]]:
    return list(value.items()) if type(value) is dict else list(enumerate(value))


def _splittable(value: Any) -> bool:
    return type(value) in (list, tuple, dict) and 0 < len(value) <= MAX_SPLIT_ITEMS


def _split_size(value: Any, depth: int) -> int:
    """An upper bound of the encoded size of ``value`` split (see :func:`_split_into`)."""
    total = 16
    for key, item in _items(value):
        total += len(str(key)) + 8 if type(value) is dict else 1
        if not _encoded_size_over(item, SPLIT_INLINE_ITEM_BYTES):
            total += SPLIT_INLINE_ITEM_BYTES
        elif depth > 1 and _splittable(item):
            total += _split_size(item, depth - 1)
        else:
            total += _REF_BYTES
    return total


def _split_into(value: Any, depth: int, spill_item: Callable[[Any], Any]) -> Any:
    """``value`` with every large item spilled by ``spill_item``; containers keep their type,
    and containers among the items are split in turn, down to ``depth`` levels."""
    parts = []
    for key, item in _items(value):
        if not _encoded_size_over(item, SPLIT_INLINE_ITEM_BYTES):
            parts.append((key, item))
        elif depth > 1 and _splittable(item):
            parts.append((key, _split_into(item, depth - 1, spill_item)))
        else:
            parts.append((key, spill_item(item)))
    if type(value) is dict:
        return dict(parts)
    return type(value)(part for _, part in parts)


def _split(value: Any, limit: int, owner: Owner, name: str, store: ObjectStore | None) -> bytes | None:
    """``value`` (a list, tuple or dict over ``limit``) encoded with its large items spilled one
    by one, or None when that would not fit in ``limit`` either (then it is spilled whole).

    Sizes are judged before anything is uploaded, so a split that does not fit leaves nothing
    behind in the store.
    """
    if not _splittable(value) or _split_size(value, SPLIT_DEPTH) > limit:
        return None
    target = store or open_store()
    counter = itertools.count()

    def spill_item(item: Any) -> ObjectRef:
        stored = target.put(owner.key(f"{name}.{next(counter)}"), codec.encode_chunks(item))
        return _ref(stored, item)

    encoded = codec.dumps(_split_into(value, SPLIT_DEPTH, spill_item))
    return encoded if len(encoded) <= limit else None


def referenced_bytes(value: Any) -> int:
    """How many bytes the ObjectRefs anywhere in ``value`` point to (what fetching them moves)."""
    return sum(leaf.size for leaf in walk.leaves(value) if isinstance(leaf, ObjectRef))


def resolve_refs(
    value: Any,
    store_for: Callable[[ObjectRef], ObjectStore] | None = None,
    fetched: list[ObjectRef] | None = None,
) -> Any:
    """``value`` with every ``ObjectRef`` inside it replaced by what it points to.

    Downloads run in parallel; ``store_for`` picks the store for a reference (default: the
    configured one); ``fetched`` is given each reference downloaded, once. Raises StoreError
    or CodecError.
    """
    unique = list(dict.fromkeys(v for v in walk.leaves(value) if isinstance(v, ObjectRef)))
    if fetched is not None:
        fetched.extend(unique)
    if not unique:
        return value
    pick = store_for or (lambda ref: open_store())

    def fetch(ref: ObjectRef) -> Any:
        return load_ref(ref, pick(ref))

    if len(unique) == 1:
        values = [fetch(unique[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(FETCH_CONCURRENCY, len(unique))) as pool:
            values = list(pool.map(fetch, unique))
    loaded = dict(zip(unique, values, strict=True))
    return walk.rebuild(value, lambda v: loaded[v] if isinstance(v, ObjectRef) else v)


def load_ref(ref: ObjectRef, store: ObjectStore | None = None) -> Any:
    """Download a spilled value, check its size and checksum while reading, and decode it.

    The one way a reference becomes a value again. Raises StoreError (naming the URL) or
    CodecError.
    """
    data = (store or open_store()).get_verified(ref.url, ref.size, ref.sha256)
    return codec.loads(memoryview(data))


# --------------------------------------------------------------------------------------
# Bodies of deferred calls (trigger kwargs and events are rows in Airflow's database)
# --------------------------------------------------------------------------------------


def pack_bytes(
    data: bytes, *, inline_max_bytes: int, store_url: str, owner: Owner, name: str
) -> dict[str, Any]:
    """``{"b64": ...}`` when small, else the bytes go to the store and ``{"ref": url, ...}``.

    Anything above the inline threshold travels as a reference the receiving side reads
    (and deletes) itself.
    """
    if len(data) <= inline_max_bytes:
        return {"b64": base64.b64encode(data).decode("ascii")}
    store = open_store(store_url)
    stored = store.put(owner.key(name), [data])
    return {"ref": stored.url, "store": store_url, "size": stored.size}


def unpack_bytes(packed: Mapping[str, Any], *, delete: bool = True) -> bytes:
    """The bytes :func:`pack_bytes` packed; a spilled body is deleted once read."""
    if "b64" in packed:
        return base64.b64decode(packed["b64"])
    store = open_store(packed["store"])
    data = bytes(store.get(packed["ref"]))
    if delete:
        store.delete(packed["ref"])
    return data


def drop_packed(packed: Mapping[str, Any]) -> None:
    """Delete a spilled body without reading it (raises StoreError)."""
    if "ref" in packed:
        open_store(packed["store"]).delete(packed["ref"])
