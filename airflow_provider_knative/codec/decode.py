"""Reading a frame: ``split_frame`` checks the envelope, ``loads`` decodes it."""

from __future__ import annotations

from typing import Any

from airflow_provider_knative.codec.layout import HEAD, MAGIC, TAIL, TRAILER_MAGIC, U64, pad
from airflow_provider_knative.codec.unpack import Decoder
from airflow_provider_knative.errors import CodecError


def split_frame(data: bytes | bytearray | memoryview) -> tuple[memoryview, list[memoryview]]:
    """Check the frame's structure; return the body and the out-of-band buffer views."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    total = view.nbytes
    if total < HEAD.size + TAIL.size:
        raise CodecError(f"not an encoded value: {total} bytes is shorter than a frame")
    magic, body_len = HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise CodecError(f"not an encoded value: bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    count, tail_magic = TAIL.unpack_from(view, total - TAIL.size)
    if tail_magic != TRAILER_MAGIC:
        raise CodecError("encoded value is truncated or corrupt: trailer missing")
    table_start = total - TAIL.size - count * U64.size
    body_start = HEAD.size
    if table_start < body_start or body_len > table_start - body_start:
        raise CodecError("encoded value is corrupt: lengths do not fit the input")
    offset = body_start + body_len
    offset += pad(offset)
    buffers = []
    for i in range(count):
        (n,) = U64.unpack_from(view, table_start + i * U64.size)
        if n > table_start - offset:
            raise CodecError("encoded value is corrupt: buffer runs past the end")
        buffers.append(view[offset : offset + n])
        offset += n + pad(n)
    if offset != table_start:
        raise CodecError("encoded value is corrupt: buffer lengths do not add up to the input")
    return view[body_start : body_start + body_len], buffers


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode a frame. Arrays are zero-copy views into ``data`` (writable if it is).

    Raises CodecError, and only CodecError, for anything that is not a valid frame.
    """
    body, buffers = split_frame(data)
    decoder = Decoder(buffers, body.nbytes)
    try:
        return decoder.decode(body)
    except CodecError:
        raise
    except RecursionError:
        raise CodecError(
            "encoded value is nested too deeply for this thread's Python recursion limit"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # msgpack, numpy, pandas, pyarrow and zoneinfo errors alike
        raise CodecError(f"encoded value is corrupt: {type(exc).__name__}: {exc}") from None
