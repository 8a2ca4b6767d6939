"""Values to objects and back: the one path every spill and every load takes.

The XCom backend, the runtime (results and reference arguments), local mode and the
deferred call's request/response bodies all come through here, and every key comes from
:func:`store.task_key`, so everything the provider writes follows one layout and
``airflow-knative xcom-cleanup`` sees all of it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_knative import codec
from airflow_provider_knative.codec import ObjectRef
from airflow_provider_knative.store import ObjectStore, open_store, task_key


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
    store, so a large value is never held encoded as a whole. Raises TypeError for a value
    the codec cannot carry and StoreError when the store cannot take it.
    """
    chunks = codec.encode_chunks(value)
    head: list[bytes | memoryview] = []
    buffered = 0
    for chunk in chunks:
        buffered += chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)
        head.append(chunk)
        if buffered > limit:
            target = store or open_store()

            def stream() -> Iterator[bytes | memoryview]:
                yield from head
                head.clear()  # drop the buffered chunks as soon as they are written
                yield from chunks

            stored = target.put(owner.key(name), stream())
            return ObjectRef(stored.url, stored.size, stored.sha256, codec.summarize(value))
    return b"".join(head)


def load_ref(ref: ObjectRef, store: ObjectStore | None = None) -> Any:
    """Download a spilled value, check its size and SHA-256 while reading, and decode it.

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
