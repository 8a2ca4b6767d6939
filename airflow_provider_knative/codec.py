"""One binary codec for every value this provider moves: msgpack plus extension types.

Why not JSON or pickle: JSON cannot carry arrays or DataFrames without a text detour that
costs 10x in time and memory; pickle runs code on load. This codec carries numpy arrays as
dtype + shape + raw buffer, DataFrames and Arrow tables as Arrow IPC, and the common Python
types exactly, and refuses anything else with an error that says where in the value it sits.

Frame layout (all integers little-endian)::

    b"KNC1" | body_len: u64 | body (msgpack) | pad to 64 | buffer 0 | pad | buffer 1 | pad ...
    | buffer lengths: n x u64 | n: u32 | b"KNCE"

Large buffers (array data, Arrow IPC streams, big bytes) are *out of band*: the body refers
to them by index and they follow it, 64-byte aligned, so encoding writes them without a
copy (``encode_chunks`` yields memoryviews) and decoding hands out views into the input
(``np.frombuffer``). Their lengths sit in a trailer so a producer can stream a buffer whose
size it learns only while writing it (Arrow IPC, batch by batch). Decoding checks that the
lengths add up to the input exactly before touching anything, so a hostile length field
cannot make it allocate: every buffer is a slice of the bytes it was given.

bytes, bytearray and memoryview all travel as msgpack ``bin`` and decode as ``bytes``
(msgpack offers no hook to tell them apart); large binary data belongs in an ndarray.

numpy, pandas and pyarrow are optional and imported only when a value needs them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from airflow_provider_knative.errors import CodecError

__all__ = ["CodecError", "ObjectRef", "dumps", "encode_chunks", "loads", "split_frame", "summarize"]

MAGIC = b"KNC1"
TRAILER_MAGIC = b"KNCE"
ALIGN = 64
#: array buffers at least this long travel out of band (no copy into the msgpack body)
OUT_OF_BAND_MIN = 4096
#: rows per Arrow record batch when a DataFrame is streamed
DATAFRAME_BATCH_ROWS = 128 * 1024
MAX_DEPTH = 256
MAX_NDIM = 64

_HEAD = struct.Struct("<4sQ")
_TAIL = struct.Struct("<I4s")
_U64 = struct.Struct("<Q")


# extension type codes: never renumber, they are part of the wire format
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
# 4 and 5 are reserved (bytearray, out-of-band bytes): msgpack packs bytes-likes natively
EXT_DATETIME = 6
EXT_DATE = 7
EXT_TIME = 8
EXT_TIMEDELTA = 9
EXT_DECIMAL = 10
EXT_UUID = 11
EXT_NDARRAY = 12
EXT_ARROW_TABLE = 13
EXT_DATAFRAME = 14
EXT_SERIES = 15
EXT_OBJECT_REF = 16
EXT_NUMPY_SCALAR = 17

_ALLOWED_DTYPE_KINDS = set("biufcmMSU")


@dataclass(frozen=True)
class ObjectRef:
    """A value that lives in the object store: where, how big, its checksum, and what it is.

    It is self-describing on purpose: Airflow's ``deserialize_value`` gets no context, and
    the runtime must fetch it with nothing but this.
    """

    url: str
    size: int
    sha256: str
    summary: str = ""
    #: a short human preview of the value (the first rows or items), made where it was spilled
    preview: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = {"url": self.url, "size": self.size, "sha256": self.sha256, "summary": self.summary}
        if self.preview:  # absent when empty: older readers never see a key they do not know
            data["preview"] = self.preview
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ObjectRef:
        if not isinstance(data, dict):
            raise CodecError("object reference must be a map")
        try:
            url, size, digest = data["url"], data["size"], data["sha256"]
        except KeyError as exc:
            raise CodecError(f"object reference lacks {exc.args[0]!r}") from None
        summary = data.get("summary", "")
        preview = data.get("preview", "")
        if not (
            isinstance(url, str)
            and isinstance(size, int)
            and not isinstance(size, bool)
            and size >= 0
            and isinstance(digest, str)
            and isinstance(summary, str)
            and isinstance(preview, str)
        ):
            raise CodecError("object reference has fields of the wrong type")
        return cls(url=url, size=size, sha256=digest, summary=summary, preview=preview)


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------


class _Encoder:
    """Packs one value; collects out-of-band buffers (memoryviews or chunk iterators)."""

    def __init__(self) -> None:
        self.buffers: list[memoryview | Iterable[bytes | memoryview]] = []

    def pack(self, value: Any) -> bytes:
        # a fresh Packer per nesting level: Packer.pack is not re-entrant
        return msgpack.Packer(default=self._default, use_bin_type=True, strict_types=True).pack(value)

    def _oob(self, buf: memoryview | Iterable[bytes | memoryview]) -> int:
        self.buffers.append(buf)
        return len(self.buffers) - 1

    def _bytes_payload(self, data: memoryview) -> int | bytes:
        return self._oob(data) if data.nbytes >= OUT_OF_BAND_MIN else data.tobytes()

    def _default(self, obj: Any) -> Any:  # noqa: C901 - one dispatch table, flat on purpose
        t = type(obj)
        # subclasses of the msgpack-native types (IntEnum, OrderedDict, str enums, ...):
        # strict_types sends them here; encode them as their base type.
        if t is not bool and isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int) and t is not bool:
            return int(obj)
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, list):
            return list(obj)
        if isinstance(obj, tuple):
            return msgpack.ExtType(EXT_TUPLE, self.pack(list(obj)))
        if isinstance(obj, frozenset):
            return msgpack.ExtType(EXT_FROZENSET, self.pack(list(obj)))
        if isinstance(obj, set):
            return msgpack.ExtType(EXT_SET, self.pack(list(obj)))
        if isinstance(obj, (bytes, bytearray)):  # subclasses; exact types are msgpack bin
            return bytes(obj)
        if isinstance(obj, dt.datetime):
            return msgpack.ExtType(EXT_DATETIME, self.pack(_encode_datetime(obj)))
        if isinstance(obj, dt.date):
            return msgpack.ExtType(EXT_DATE, self.pack(obj.toordinal()))
        if isinstance(obj, dt.time):
            if obj.tzinfo is not None:
                raise TypeError("cannot encode a time of day with a time zone; use a datetime")
            return msgpack.ExtType(EXT_TIME, self.pack(obj.isoformat()))
        if isinstance(obj, dt.timedelta):
            return msgpack.ExtType(EXT_TIMEDELTA, self.pack([obj.days, obj.seconds, obj.microseconds]))
        if isinstance(obj, decimal.Decimal):
            return msgpack.ExtType(EXT_DECIMAL, self.pack(str(obj)))
        if isinstance(obj, uuid.UUID):
            return msgpack.ExtType(EXT_UUID, obj.bytes)
        if isinstance(obj, ObjectRef):
            return msgpack.ExtType(EXT_OBJECT_REF, self.pack(obj.to_dict()))
        module = t.__module__.split(".", 1)[0]
        if module == "numpy":
            return self._numpy(obj)
        if module == "pandas":
            return self._pandas(obj)
        if module == "pyarrow":
            return self._arrow(obj)
        raise TypeError(f"cannot encode {t!r}")

    def _numpy(self, obj: Any) -> Any:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(EXT_NDARRAY, self.pack(self._ndarray_header(obj)))
        if isinstance(obj, np.generic):
            arr = np.asarray(obj)
            _check_dtype(arr.dtype)
            return msgpack.ExtType(EXT_NUMPY_SCALAR, self.pack([arr.dtype.str, arr.tobytes()]))
        raise TypeError(f"cannot encode {type(obj)!r}")

    def _ndarray_header(self, arr: Any) -> list[Any]:
        import numpy as np

        _check_dtype(arr.dtype)
        if arr.flags.c_contiguous:
            fortran = False
        elif arr.flags.f_contiguous:
            fortran = True
        else:
            arr = np.ascontiguousarray(arr)
            fortran = False
        flat = arr.ravel(order="F" if fortran else "C").view(np.uint8)
        data = self._bytes_payload(memoryview(flat))
        return [arr.dtype.str, list(arr.shape), fortran, data]

    def _pandas(self, obj: Any) -> Any:
        import pandas as pd

        if isinstance(obj, pd.DataFrame):
            return msgpack.ExtType(EXT_DATAFRAME, self.pack(self._oob(_dataframe_ipc(obj))))
        if isinstance(obj, pd.Series):
            name = obj.name
            frame = obj.to_frame(name="__series__")
            return msgpack.ExtType(EXT_SERIES, self.pack([self._oob(_dataframe_ipc(frame)), name]))
        if isinstance(obj, pd.Timestamp):
            return self._default(obj.to_pydatetime())
        if isinstance(obj, pd.Timedelta):
            return self._default(obj.to_pytimedelta())
        raise TypeError(f"cannot encode {type(obj)!r}")

    def _arrow(self, obj: Any) -> Any:
        import pyarrow as pa

        if isinstance(obj, pa.Table):
            return msgpack.ExtType(EXT_ARROW_TABLE, self.pack(self._oob(_table_ipc(obj))))
        raise TypeError(f"cannot encode {type(obj)!r}")


def _check_dtype(dtype: Any) -> None:
    if dtype.kind not in _ALLOWED_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(
            f"cannot encode a numpy array of dtype {dtype} (kind {dtype.kind!r}): only numeric, "
            "bool, datetime64, timedelta64 and fixed-width string dtypes travel; convert object "
            "or structured arrays to a DataFrame or to plain lists"
        )


def _encode_datetime(value: dt.datetime) -> list[Any]:
    tz = value.tzinfo
    naive = value.replace(tzinfo=None).isoformat()
    if tz is None:
        return [naive, None, None]
    offset = value.utcoffset()
    zone = _zone_name(tz)
    seconds = None if offset is None else offset.total_seconds()
    return [naive, seconds, zone]


def _zone_name(tz: dt.tzinfo) -> str | None:
    """An IANA zone key when the tzinfo has one, so DST rules survive the trip."""
    from zoneinfo import ZoneInfo

    if isinstance(tz, ZoneInfo):
        return tz.key  # any IANA key ("Europe/Paris", "EST5EDT", "Factory") loads back
    key = getattr(tz, "key", None) or getattr(tz, "name", None) or getattr(tz, "zone", None)
    if (isinstance(key, str) and "/" in key) or key in ("UTC", "GMT"):
        return key
    return None


class _ChunkSink:
    """A write-only file for pyarrow that hands over what was written, batch by batch.

    pyarrow passes small metadata pieces as ``bytes`` and each body buffer of a record
    batch as a ``pyarrow.Buffer`` over the column's own memory (for numeric columns: the
    DataFrame's numpy data). Keeping a memoryview of that Buffer holds the memory alive and
    costs no copy, so a DataFrame is written out without ever being duplicated.
    """

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = data if isinstance(data, bytes) else memoryview(data).cast("B")
        self.parts.append(chunk)
        return len(chunk) if isinstance(chunk, bytes) else chunk.nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> list[bytes | memoryview]:
        parts, self.parts = self.parts, []
        return parts


def _ipc_batches(schema: Any, batches: Iterable[Any]) -> Iterator[bytes | memoryview]:
    import pyarrow as pa

    sink = _ChunkSink()
    with pa.ipc.new_stream(sink, schema) as writer:
        yield from sink.take()
        for batch in batches:
            writer.write_batch(batch)
            yield from sink.take()
    yield from sink.take()


def _table_ipc(table: Any) -> Iterator[bytes | memoryview]:
    return _ipc_batches(table.schema, table.to_batches(max_chunksize=DATAFRAME_BATCH_ROWS))


def _converts_by_copy(dtype: Any) -> bool:
    """Whether pyarrow must build new memory for a column (Python objects, Python strings)."""
    import numpy as np

    return (isinstance(dtype, np.dtype) and dtype.kind == "O") or getattr(dtype, "storage", None) == "python"


def _dataframe_ipc(frame: Any) -> Iterator[bytes | memoryview]:
    """Arrow IPC for a DataFrame, without duplicating it in memory.

    Numeric, bool, datetime, categorical and Arrow-backed columns convert to Arrow almost
    without copying, so the whole frame converts at once (fast). Columns of Python objects
    need a full copy; then the frame is converted slice by slice so memory stays bounded.
    """
    import pyarrow as pa

    if frame.columns.has_duplicates:
        raise TypeError("cannot encode a DataFrame with duplicate column names")
    if not any(_converts_by_copy(d) for d in [*frame.dtypes, frame.index.dtype]):
        return _table_ipc(pa.Table.from_pandas(frame, preserve_index=None))
    # the schema of the whole frame carries the pandas metadata (index range, dtypes)
    schema = pa.Schema.from_pandas(frame, preserve_index=None)

    def batches() -> Iterator[Any]:
        for start in range(0, len(frame), DATAFRAME_BATCH_ROWS):
            part = frame.iloc[start : start + DATAFRAME_BATCH_ROWS]
            batch = pa.RecordBatch.from_pandas(part, schema=schema, preserve_index=None)
            yield batch.replace_schema_metadata(schema.metadata)

    return _ipc_batches(schema, batches())


def _pad(n: int) -> int:
    return -n % ALIGN


_ZEROS = bytes(ALIGN)


def encode_chunks(value: Any) -> Iterator[bytes | memoryview]:
    """Encode ``value`` as a sequence of chunks whose concatenation is the frame.

    Large buffers are yielded as views of the caller's memory (no copy); write the chunks
    out before mutating the value. Raises TypeError naming the path of an unencodable part.
    """
    encoder = _Encoder()
    try:
        body = encoder.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(_describe_failure(value, exc)) from None
    yield _HEAD.pack(MAGIC, len(body))
    yield body
    yield _ZEROS[: _pad(_HEAD.size + len(body))]
    lengths = []
    for buf in encoder.buffers:
        if isinstance(buf, memoryview):
            yield buf
            n = buf.nbytes
        else:
            n = 0
            for chunk in buf:
                n += len(chunk)
                yield chunk
        yield _ZEROS[: _pad(n)]
        lengths.append(n)
    yield b"".join(_U64.pack(n) for n in lengths) + _TAIL.pack(len(lengths), TRAILER_MAGIC)


def dumps(value: Any) -> bytes:
    """Encode ``value`` into one bytes object (for bodies and small values)."""
    return b"".join(encode_chunks(value))


def _describe_failure(value: Any, exc: Exception) -> str:
    """Find the first part of ``value`` that cannot be encoded and say where it is."""
    path, culprit = _find_unencodable(value, "value", 0)
    if culprit is None:
        return f"cannot encode value: {exc}"
    reason = str(exc) if str(exc) and "cannot encode" in str(exc) else f"cannot encode {type(culprit)!r}"
    if reason.startswith("cannot encode") and type(culprit).__name__ not in reason:
        reason = f"cannot encode {type(culprit)!r}: {reason}"
    return f"{path}: {reason}"


def _find_unencodable(value: Any, path: str, depth: int) -> tuple[str, Any]:
    if depth > MAX_DEPTH:
        return path, value
    if isinstance(value, dict):
        for k, v in value.items():
            sub, bad = _find_unencodable(k, f"{path} key {k!r}", depth + 1)
            if bad is not None:
                return sub, bad
            sub, bad = _find_unencodable(v, f"{path}[{k!r}]", depth + 1)
            if bad is not None:
                return sub, bad
        return path, None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            sub, bad = _find_unencodable(v, f"{path}[{i}]", depth + 1)
            if bad is not None:
                return sub, bad
        return path, None
    if isinstance(value, (set, frozenset)):
        for v in value:
            sub, bad = _find_unencodable(v, f"{path} item {v!r}", depth + 1)
            if bad is not None:
                return sub, bad
        return path, None
    try:
        _Encoder().pack(value)
    except (TypeError, ValueError, OverflowError):
        return path, value
    return path, None


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def split_frame(data: bytes | bytearray | memoryview) -> tuple[memoryview, list[memoryview]]:
    """Check the frame's structure; return the body and the out-of-band buffer views."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    total = view.nbytes
    if total < _HEAD.size + _TAIL.size:
        raise CodecError(f"not an encoded value: {total} bytes is shorter than a frame")
    magic, body_len = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise CodecError(f"not an encoded value: bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    count, tail_magic = _TAIL.unpack_from(view, total - _TAIL.size)
    if tail_magic != TRAILER_MAGIC:
        raise CodecError("encoded value is truncated or corrupt: trailer missing")
    table_start = total - _TAIL.size - count * _U64.size
    body_start = _HEAD.size
    if table_start < body_start or body_len > table_start - body_start:
        raise CodecError("encoded value is corrupt: lengths do not fit the input")
    offset = body_start + body_len
    offset += _pad(offset)
    buffers = []
    for i in range(count):
        (n,) = _U64.unpack_from(view, table_start + i * _U64.size)
        if n > table_start - offset:
            raise CodecError("encoded value is corrupt: buffer runs past the end")
        buffers.append(view[offset : offset + n])
        offset += n + _pad(n)
    if offset != table_start:
        raise CodecError("encoded value is corrupt: buffer lengths do not add up to the input")
    return view[body_start : body_start + body_len], buffers


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode a frame. Arrays are zero-copy views into ``data`` (writable if it is).

    Raises CodecError, and only CodecError, for anything that is not a valid frame.
    """
    body, buffers = split_frame(data)
    decoder = _Decoder(buffers)
    try:
        return decoder.unpack(body, 0)
    except CodecError:
        raise
    except RecursionError:
        raise CodecError("encoded value is nested too deeply") from None
    except Exception as exc:  # msgpack, numpy, pyarrow and zoneinfo errors alike
        raise CodecError(f"encoded value is corrupt: {type(exc).__name__}: {exc}") from None


class _Decoder:
    def __init__(self, buffers: list[memoryview]) -> None:
        self.buffers = buffers

    def unpack(self, data: bytes | memoryview, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise CodecError("encoded value is nested too deeply")
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            use_list=True,
            ext_hook=lambda code, payload: self._ext(code, payload, depth + 1),
        )

    def _buffer(self, ref: Any) -> memoryview | bytes:
        if isinstance(ref, bytes):
            return ref
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(self.buffers):
            return self.buffers[ref]
        raise CodecError(f"encoded value is corrupt: bad buffer reference {ref!r}")

    def _ext(self, code: int, payload: bytes, depth: int) -> Any:
        if code == EXT_UUID:
            if len(payload) != 16:
                raise CodecError("encoded UUID must be 16 bytes")
            return uuid.UUID(bytes=payload)
        inner = self.unpack(payload, depth)
        if code == EXT_TUPLE:
            return tuple(_expect(inner, list, "tuple"))
        if code == EXT_SET:
            return set(_expect(inner, list, "set"))
        if code == EXT_FROZENSET:
            return frozenset(_expect(inner, list, "frozenset"))
        if code == EXT_DATETIME:
            return _decode_datetime(inner)
        if code == EXT_DATE:
            return dt.date.fromordinal(_expect(inner, int, "date"))
        if code == EXT_TIME:
            return dt.time.fromisoformat(_expect(inner, str, "time"))
        if code == EXT_TIMEDELTA:
            days, seconds, micros = _expect(inner, list, "timedelta")
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == EXT_DECIMAL:
            return decimal.Decimal(_expect(inner, str, "Decimal"))
        if code == EXT_OBJECT_REF:
            return ObjectRef.from_dict(inner)
        if code == EXT_NDARRAY:
            return self._ndarray(inner)
        if code == EXT_NUMPY_SCALAR:
            return _numpy_scalar(inner)
        if code == EXT_ARROW_TABLE:
            return _read_table(self._buffer(inner))
        if code == EXT_DATAFRAME:
            return _read_table(self._buffer(inner)).to_pandas()
        if code == EXT_SERIES:
            ref, name = _expect(inner, list, "Series")
            series = _read_table(self._buffer(ref)).to_pandas()["__series__"]
            series.name = name
            return series
        raise CodecError(f"encoded value uses unknown extension type {code}")

    def _ndarray(self, header: Any) -> Any:
        import numpy as np

        dtype_str, shape, fortran, ref = _expect(header, list, "ndarray")
        dtype = np.dtype(_expect(dtype_str, str, "ndarray dtype"))
        try:
            _check_dtype(dtype)
        except TypeError as exc:
            raise CodecError(str(exc)) from None
        shape = _expect(shape, list, "ndarray shape")
        if len(shape) > MAX_NDIM or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CodecError("encoded ndarray has an invalid shape")
        data = self._buffer(ref)
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != len(data):
            raise CodecError(
                f"encoded ndarray holds {len(data)} bytes, shape {tuple(shape)} of {dtype} needs "
                f"{count * dtype.itemsize}"
            )
        flat = np.frombuffer(data, dtype=np.uint8).view(dtype) if count else np.empty(0, dtype)
        return flat.reshape(shape, order="F" if fortran else "C")


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CodecError(f"encoded {what} is malformed")
    return value


def _numpy_scalar(inner: Any) -> Any:
    import numpy as np

    dtype_str, raw = _expect(inner, list, "numpy scalar")
    dtype = np.dtype(_expect(dtype_str, str, "numpy scalar dtype"))
    try:
        _check_dtype(dtype)
    except TypeError as exc:
        raise CodecError(str(exc)) from None
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise CodecError("encoded numpy scalar is malformed")
    return np.frombuffer(raw, dtype=dtype)[0]


def _decode_datetime(inner: Any) -> dt.datetime:
    naive, offset, zone = _expect(inner, list, "datetime")
    value = dt.datetime.fromisoformat(_expect(naive, str, "datetime"))
    if offset is None:
        return value
    if zone is not None:
        from zoneinfo import ZoneInfo

        tz: dt.tzinfo = ZoneInfo(_expect(zone, str, "time zone"))
        # the recorded offset disambiguates the repeated hour at a DST change
        for fold in (0, 1):
            candidate = value.replace(tzinfo=tz, fold=fold)
            off = candidate.utcoffset()
            if off is not None and off.total_seconds() == offset:
                return candidate
        return value.replace(tzinfo=tz)
    if not isinstance(offset, (int, float)) or abs(offset) >= 86400:
        raise CodecError("encoded datetime has an invalid UTC offset")
    return value.replace(tzinfo=dt.timezone(dt.timedelta(seconds=offset)))


def _read_table(data: memoryview | bytes) -> Any:
    import pyarrow as pa

    reader = pa.ipc.open_stream(pa.py_buffer(data))
    table = reader.read_all()
    table.validate(full=True)
    return table


# --------------------------------------------------------------------------------------
# Helpers shared by the XCom backend and the runtime
# --------------------------------------------------------------------------------------


def summarize(value: Any) -> str:
    """A short human description of a value, shown where the value itself is not."""
    t = type(value)
    name = t.__name__
    module = t.__module__.split(".", 1)[0]
    if module == "numpy" and name == "ndarray":
        return f"ndarray {value.dtype} {tuple(value.shape)}"
    if module == "pandas" and name == "DataFrame":
        return f"DataFrame {value.shape[0]} rows x {value.shape[1]} cols"
    if module == "pandas" and name == "Series":
        return f"Series {value.dtype} {len(value)} rows"
    if module == "pyarrow" and name == "Table":
        return f"Arrow Table {value.num_rows} rows x {value.num_columns} cols"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{name} {len(value)} bytes"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"{name} of {len(value)} items"
    if isinstance(value, str):
        return f"str of {len(value)} chars"
    return name
