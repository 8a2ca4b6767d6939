"""Arrow IPC for DataFrames, Series and Tables, and the decoded-size accounting that keeps
hostile IPC from expanding without bound.

Why an estimate: Arrow IPC may legally describe far more memory than it occupies (null
columns, run-end encoding, compression); the decoder refuses streams whose estimated decoded
size exceeds ``ARROW_EXPANSION`` bytes per input byte plus ``ARROW_ALLOWANCE``, and the
encoder refuses to write what the decoder would refuse.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_knative.codec.layout import ARROW_ALLOWANCE, ARROW_EXPANSION, DATAFRAME_BATCH_ROWS
from airflow_provider_knative.codec.summary import summarize
from airflow_provider_knative.errors import CodecError, KnativeError

if TYPE_CHECKING:
    from airflow_provider_knative.codec.pack import Encoder


class ArrowItem:
    """One Arrow IPC stream being written, and its decoded-size estimate once known."""

    __slots__ = ("excess", "owner")

    def __init__(self, owner: Any) -> None:
        self.owner = owner  # the DataFrame/Series/Table, to name its path on error
        self.excess: int | None = None


class ArrowTooLarge(KnativeError, TypeError):
    def __init__(self, owner: Any, total: int) -> None:
        super().__init__(
            f"cannot encode {summarize(owner)}: its Arrow data would decode to {total / 2**20:.0f} MiB more "
            f"than {ARROW_EXPANSION} bytes per encoded byte, beyond the {ARROW_ALLOWANCE // 2**20} MiB a frame "
            "may add (the decoder refuses such frames as decompression bombs); drop or fill long null / "
            "empty-struct columns, or split the value"
        )
        self.owner = owner


def check_arrow_schema(schema: Any, error: type[Exception]) -> None:
    for field in schema:
        reason = _refused_arrow_type(field.type)
        if reason:
            raise error(
                f"Arrow column {field.name!r} has type {field.type}: {reason} can expand without bound when "
                "decoded, so the codec refuses it; cast it to the plain type first"
            )


def _refused_arrow_type(t: Any) -> str | None:
    import pyarrow as pa

    types = pa.types
    if types.is_run_end_encoded(t):
        return "run-end encoding"
    if (
        types.is_string_view(t)
        or types.is_binary_view(t)
        or types.is_list_view(t)
        or types.is_large_list_view(t)
    ):
        return "a view type"
    if types.is_union(t):
        return "a union"
    if types.is_dictionary(t):
        return _refused_arrow_type(t.value_type) or _refused_arrow_type(t.index_type)
    if isinstance(t, pa.BaseExtensionType):
        return _refused_arrow_type(t.storage_type)
    for i in range(t.num_fields):
        reason = _refused_arrow_type(t.field(i).type)
        if reason:
            return reason
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


def ipc_stream(
    enc: Encoder, item: ArrowItem, schema: Any, batches: Iterable[Any], excess: int | None = None
) -> Iterator[bytes | memoryview]:
    """Arrow IPC for ``batches``; the decoded-size estimate is summed as they go by."""
    import pyarrow as pa

    sink = _ChunkSink()
    total = 0
    with pa.ipc.new_stream(sink, schema) as writer:
        yield from sink.take()
        for batch in batches:
            if excess is None:
                total += arrow_excess([batch])
            writer.write_batch(batch)
            yield from sink.take()
    yield from sink.take()
    enc.arrow_done(item, total if excess is None else excess)


def _converts_by_copy(dtype: Any) -> bool:
    """Whether pyarrow must build new memory for a column (Python objects, Python strings)."""
    import numpy as np

    return (isinstance(dtype, np.dtype) and dtype.kind == "O") or getattr(dtype, "storage", None) == "python"


def dataframe_ipc(enc: Encoder, frame: Any, owner: Any) -> Iterator[bytes | memoryview]:
    """Arrow IPC for a DataFrame, without duplicating it in memory.

    Numeric, bool, datetime, categorical and Arrow-backed columns convert to Arrow almost
    without copying, so the whole frame converts at once (fast) and its estimate is checked
    now. Columns of Python objects need a full copy; then the frame is converted slice by
    slice so memory stays bounded, and the estimate is checked as the slices go by.
    """
    import pyarrow as pa

    if frame.columns.has_duplicates:
        raise TypeError("cannot encode a DataFrame with duplicate column names")
    item = enc.arrow_item(owner)
    if not any(_converts_by_copy(d) for d in [*frame.dtypes, frame.index.dtype]):
        table = pa.Table.from_pandas(frame, preserve_index=None)
        check_arrow_schema(table.schema, TypeError)
        batches = table.to_batches(max_chunksize=DATAFRAME_BATCH_ROWS)
        excess = arrow_excess(batches)
        if excess > ARROW_ALLOWANCE:
            raise ArrowTooLarge(owner, excess)
        return ipc_stream(enc, item, table.schema, batches, excess)
    # the schema of the whole frame carries the pandas metadata (index range, dtypes)
    schema = pa.Schema.from_pandas(frame, preserve_index=None)
    check_arrow_schema(schema, TypeError)

    def slices() -> Iterator[Any]:
        for start in range(0, len(frame), DATAFRAME_BATCH_ROWS):
            part = frame.iloc[start : start + DATAFRAME_BATCH_ROWS]
            batch = pa.RecordBatch.from_pandas(part, schema=schema, preserve_index=None)
            yield batch.replace_schema_metadata(schema.metadata)

    return ipc_stream(enc, item, schema, slices())


def read_table(data: memoryview | bytes) -> Any:
    """An Arrow IPC stream as a Table, refusing anything that could expand without bound.

    Uncompressed IPC is read zero-copy (every buffer is a slice of ``data``), so reading
    allocates nothing in proportion to declared lengths. Compressed buffers would be
    inflated while reading, so every message is checked for compression first; the schema
    is checked for run-end, view and union types before any batch is read.
    """
    import pyarrow as pa

    source = pa.py_buffer(data)
    messages = pa.ipc.MessageReader.open_stream(source)
    while True:
        try:
            message = messages.read_next_message()
        except StopIteration:
            break
        if message is None:
            break
        if message.type in ("record batch", "dictionary batch") and _compressed(
            message.metadata, message.type
        ):
            raise CodecError("encoded Arrow data is compressed: refused (it could expand without bound)")
    reader = pa.ipc.open_stream(source)
    check_arrow_schema(reader.schema, CodecError)
    table = reader.read_all()
    table.validate(full=True)
    return table


def _compressed(metadata: Any, kind: str) -> bool:
    """Whether an IPC message's flatbuffer header declares body compression.

    Message { version: short, header_type: ubyte, header: table, bodyLength: long, ... };
    RecordBatch { length, nodes, buffers, compression: BodyCompression, ... };
    DictionaryBatch { id, data: RecordBatch, isDelta }.
    """
    buf = memoryview(metadata).cast("B")
    try:
        header = _fb_field_table(buf, struct.unpack_from("<I", buf, 0)[0], 2)
        if header is None:
            raise CodecError("encoded Arrow message has no header")
        if kind == "dictionary batch":
            header = _fb_field_table(buf, header, 1)
            if header is None:
                return False
        return _fb_field(buf, header, 3) is not None
    except struct.error:
        raise CodecError("encoded Arrow message header is truncated") from None


def _fb_field(buf: memoryview, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the flatbuffer table at ``table``, if present."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_len = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot + 2 > vtable_len:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _fb_field_table(buf: memoryview, table: int, index: int) -> int | None:
    pos = _fb_field(buf, table, index)
    return None if pos is None else pos + struct.unpack_from("<I", buf, pos)[0]


# Per element, what pandas makes of an Arrow value (bytes): a numpy slot, or a pointer plus
# a Python object (date, time, Decimal, str, dict, ndarray). Generous on purpose.
_SLOT = 8
_OBJECT = 8 + 120
_DICT_ROW = 8 + 240


def arrow_excess(batches: Iterable[Any]) -> int:
    """Bytes the batches may decode to beyond ARROW_EXPANSION per byte they hold.

    Computed from lengths, types and offsets only (O(columns), never per row), identically
    by the encoder (on the batches it writes) and the decoder (on the batches it read).
    """
    excess = 0
    for batch in batches:
        for column in batch.columns:
            out, held = _array_cost(column)
            excess += out - ARROW_EXPANSION * held
    return excess


def _offsets(arr: Any, wide: bool) -> tuple[int, int]:
    import numpy as np

    n = len(arr)
    if n == 0:
        return 0, 0
    raw = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32)
    return int(raw[arr.offset]), int(raw[arr.offset + n])


def _array_cost(arr: Any) -> tuple[int, int]:
    """(bytes pandas may make of ``arr``, bytes of input it needs at least)."""
    import pyarrow as pa

    types = pa.types
    t = arr.type
    n = len(arr)
    if isinstance(t, pa.BaseExtensionType):
        return _array_cost(arr.storage)
    if types.is_dictionary(t):
        out, held = _array_cost(arr.dictionary)
        return n * _SLOT + out, n * t.index_type.bit_width // 8 + held
    if types.is_null(t):
        return n * _SLOT, 0
    if types.is_boolean(t):
        return n * _SLOT, n // 8
    if types.is_integer(t) or types.is_floating(t) or types.is_timestamp(t) or types.is_duration(t):
        return n * _SLOT, n * t.bit_width // 8
    if types.is_date(t) or types.is_time(t) or types.is_decimal(t) or types.is_interval(t):
        return n * _OBJECT, n * t.bit_width // 8
    if types.is_fixed_size_binary(t):
        return n * (_OBJECT + t.byte_width), n * t.byte_width
    if types.is_string(t) or types.is_binary(t) or types.is_large_string(t) or types.is_large_binary(t):
        wide = types.is_large_string(t) or types.is_large_binary(t)
        first, last = _offsets(arr, wide)
        return n * _OBJECT + (last - first), n * (8 if wide else 4) + (last - first)
    if types.is_list(t) or types.is_large_list(t) or types.is_map(t):
        wide = types.is_large_list(t)
        first, last = _offsets(arr, wide)
        out, held = _array_cost(arr.values.slice(first, last - first))
        return n * _OBJECT + out, n * (8 if wide else 4) + held
    if types.is_fixed_size_list(t):
        size = t.list_size
        out, held = _array_cost(arr.values.slice(arr.offset * size, n * size))
        return n * _OBJECT + out, held
    if types.is_struct(t):
        out = n * _DICT_ROW
        held = 0
        for i in range(t.num_fields):
            child_out, child_held = _array_cost(arr.field(i))
            out += child_out
            held += child_held
        return out, held
    raise CodecError(f"Arrow type {t} is not accepted")
