"""The encoder: Python values to msgpack plus extension types and out-of-band buffers."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from airflow_provider_knative.codec import layout
from airflow_provider_knative.codec.arrow import (
    ArrowItem,
    ArrowTooLarge,
    arrow_excess,
    check_arrow_schema,
    dataframe_ipc,
    ipc_stream,
)
from airflow_provider_knative.codec.layout import (
    ARROW_ALLOWANCE,
    DATAFRAME_BATCH_ROWS,
    DEFAULT_FACTORIES,
    MAX_DEPTH,
    OUT_OF_BAND_MIN,
    check_dtype,
)
from airflow_provider_knative.codec.prepass import SCALARS, Box, TooDeep, boxed, scan
from airflow_provider_knative.codec.ref import ObjectRef


class Encoder:
    """Packs one value; collects out-of-band buffers (memoryviews or chunk iterators)."""

    def __init__(self, unicode_errors: str | None = None) -> None:
        # "surrogatepass" when a str holds lone surrogates (valid Python, not valid UTF-8);
        # only then, as it is slower: the decoder accepts both
        self.unicode_errors = unicode_errors
        self.buffers: list[memoryview | Iterable[bytes | memoryview]] = []
        self.owners: dict[int, Any] = {}  # buffer index -> the value it belongs to
        self._packers: list[Any] = []
        self._depth = 0
        self._plain: Any = None
        self.arrow: list[ArrowItem] = []
        self._arrow_checked = 0
        self._arrow_total = 0

    def packer(self, depth: int) -> Any:
        # One Packer per nesting level, reused by siblings: Packer.pack is not re-entrant,
        # and creating one per nested value (each allocates a buffer) is what used to cost.
        packers = self._packers
        while len(packers) <= depth:
            size = 256 * 1024 if not packers else 4096
            packers.append(
                msgpack.Packer(
                    default=self._default,
                    use_bin_type=True,
                    strict_types=True,
                    buf_size=size,
                    unicode_errors=self.unicode_errors,
                )
            )
        return packers[depth]

    @property
    def plain(self) -> Any:
        """A packer for leaf payloads: only msgpack scalars, no default (it refuses the rest)."""
        if self._plain is None:
            self._plain = msgpack.Packer(
                use_bin_type=True, strict_types=True, buf_size=1024, unicode_errors=self.unicode_errors
            )
        return self._plain

    def encode_body(self, value: Any) -> bytes:
        if type(value) not in SCALARS and scan(value):
            value = boxed(value)
        try:
            return self.packer(0).pack(value)
        finally:
            self._packers.clear()  # they hold self._default: no cycle left for the GC

    def oob(self, buf: memoryview | Iterable[bytes | memoryview], owner: Any = None) -> int:
        self.buffers.append(buf)
        index = len(self.buffers) - 1
        if owner is not None:
            self.owners[index] = owner
        return index

    def bytes_payload(self, data: memoryview) -> int | bytes:
        return self.oob(data) if data.nbytes >= OUT_OF_BAND_MIN else data.tobytes()

    def _default(self, obj: Any) -> Any:
        t = type(obj)
        composite = _COMPOSITE_ENCODERS.get(t)
        if composite is None:
            handler = _ENCODERS.get(t)
            if handler is None:
                handler = _handler_for(t, obj)
            return handler(self, obj)
        # A value holding values: pack them with the next level's packer. Everything below
        # returns before the nested pack starts, so the recursion runs through this frame
        # only (one Python frame and ~1 KiB of C stack per level).
        code, to_payload = composite
        payload = to_payload(self, obj)
        depth = self._depth + 1
        if depth > MAX_DEPTH:  # the pre-pass makes this unreachable; kept as the last guard
            raise TooDeep(f"value is nested more than {MAX_DEPTH} levels deep")
        packer = self.packer(depth)
        self._depth = depth
        try:
            return msgpack.ExtType(code, packer.pack(payload))
        finally:
            self._depth = depth - 1

    # -- Arrow accounting: the decoder repeats exactly this, in the same order -----------

    def arrow_item(self, owner: Any) -> ArrowItem:
        item = ArrowItem(owner)
        self.arrow.append(item)
        return item

    def arrow_done(self, item: ArrowItem, excess: int) -> None:
        """Record a stream's estimate; check every prefix whose estimates are all known."""
        item.excess = excess
        while self._arrow_checked < len(self.arrow):
            current = self.arrow[self._arrow_checked]
            if current.excess is None:
                break
            self._arrow_total += current.excess
            self._arrow_checked += 1
            if self._arrow_total > ARROW_ALLOWANCE:
                raise ArrowTooLarge(current.owner, self._arrow_total)


# -- values holding values: (extension code, payload to pack one level down) ------------


def defaultdict_payload(enc: Encoder, obj: collections.defaultdict) -> list[Any]:
    factory = obj.default_factory
    if factory is not None and DEFAULT_FACTORIES.get(getattr(factory, "__name__", "")) is not factory:
        raise TypeError(
            f"cannot encode a defaultdict whose default_factory is {factory!r}: only None and builtin types "
            f"({', '.join(sorted(DEFAULT_FACTORIES))}) can be rebuilt without importing code; pass dict(x)"
        )
    return [None if factory is None else factory.__name__, dict(obj)]


def _series_payload(enc: Encoder, series: Any) -> list[Any]:
    frame = series.to_frame(name="__series__")
    return [enc.oob(dataframe_ipc(enc, frame, series), series), series.name]


_COMPOSITE_ENCODERS: dict[type, tuple[int, Callable[[Encoder, Any], Any]]] = {
    tuple: (layout.EXT_TUPLE, lambda enc, obj: list(obj)),
    set: (layout.EXT_SET, lambda enc, obj: list(obj)),
    frozenset: (layout.EXT_FROZENSET, lambda enc, obj: list(obj)),
    collections.OrderedDict: (layout.EXT_ORDEREDDICT, lambda enc, obj: dict(obj)),
    collections.Counter: (layout.EXT_COUNTER, lambda enc, obj: dict(obj)),
    collections.defaultdict: (layout.EXT_DEFAULTDICT, defaultdict_payload),
}


def _register_pandas_composites() -> None:
    import pandas as pd

    _COMPOSITE_ENCODERS[pd.Series] = (layout.EXT_SERIES, _series_payload)
    _COMPOSITE_ENCODERS[pd.Interval] = (
        layout.EXT_PD_INTERVAL,
        lambda enc, obj: [obj.left, obj.right, obj.closed],
    )


# -- values that hold no values ------------------------------------------------------


def _enc_int(enc: Encoder, obj: int) -> Any:
    # msgpack hands us only ints beyond 64 bits
    return msgpack.ExtType(
        layout.EXT_BIGINT, obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
    )


def _enc_complex(enc: Encoder, obj: complex) -> Any:
    return _leaf(enc, layout.EXT_COMPLEX, [obj.real, obj.imag])


def _enc_box(enc: Encoder, obj: Box) -> Any:
    return msgpack.ExtType(layout.EXT_BYTEARRAY, bytes(obj.data))


def _leaf(enc: Encoder, code: int, payload: Any) -> msgpack.ExtType:
    return msgpack.ExtType(code, enc.plain.pack(payload))


def _enc_datetime(enc: Encoder, obj: dt.datetime) -> Any:
    return _leaf(enc, layout.EXT_DATETIME, _datetime_fields(obj))


def _datetime_fields(obj: dt.datetime) -> list[Any]:
    tz = obj.tzinfo
    # from the fields: subclasses (pendulum) override replace() and isoformat()
    naive = dt.datetime(
        obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second, obj.microsecond
    ).isoformat()
    if tz is None:
        return [naive, None, None, obj.fold]
    offset = obj.utcoffset()
    seconds = None if offset is None else offset.total_seconds()
    return [naive, seconds, _encode_tz(tz), obj.fold]


def _enc_date(enc: Encoder, obj: dt.date) -> Any:
    return _leaf(enc, layout.EXT_DATE, obj.toordinal())


def _enc_time(enc: Encoder, obj: dt.time) -> Any:
    return _leaf(enc, layout.EXT_TIME, _time_fields(obj))


def _time_fields(obj: dt.time) -> list[Any]:
    if obj.tzinfo is not None:
        raise TypeError("cannot encode a time of day with a time zone (it has no UTC offset); use a datetime")
    return [dt.time(obj.hour, obj.minute, obj.second, obj.microsecond).isoformat(), obj.fold]


def _enc_timedelta(enc: Encoder, obj: dt.timedelta) -> Any:
    return _leaf(enc, layout.EXT_TIMEDELTA, [obj.days, obj.seconds, obj.microseconds])


def _enc_decimal(enc: Encoder, obj: decimal.Decimal) -> Any:
    return _leaf(enc, layout.EXT_DECIMAL, str(obj))


def _enc_uuid(enc: Encoder, obj: uuid.UUID) -> Any:
    return msgpack.ExtType(layout.EXT_UUID, obj.bytes)


def _enc_ref(enc: Encoder, obj: ObjectRef) -> Any:
    return _leaf(enc, layout.EXT_OBJECT_REF, obj.to_dict())


def _encode_tz(tz: dt.tzinfo) -> list[Any]:
    """A description of ``tz`` that rebuilds the very same kind of time zone."""
    from zoneinfo import ZoneInfo

    t = type(tz)
    if isinstance(tz, dt.timezone) and t is dt.timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        micros = (offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds
        return ["fixed", micros, None if name == dt.timezone(offset).tzname(None) else name]
    if isinstance(tz, ZoneInfo) and t is ZoneInfo:
        if tz.key is None:
            raise TypeError("cannot encode a datetime whose ZoneInfo has no key (ZoneInfo.from_file)")
        return ["zoneinfo", tz.key]
    if t.__module__ == "pendulum.tz.timezone":
        if t.__name__ == "Timezone":
            return ["pendulum", tz.name]  # type: ignore[attr-defined]
        if t.__name__ == "FixedTimezone":
            from pendulum import FixedTimezone

            offset, name = tz.offset, tz.name  # type: ignore[attr-defined]
            return ["pendulum-fixed", offset, None if name == FixedTimezone(offset).name else name]
    raise TypeError(
        f"cannot encode a datetime with time zone {tz!r} ({t.__module__}.{t.__qualname__}): it cannot be "
        "rebuilt exactly; use zoneinfo.ZoneInfo(key) or datetime.timezone(offset)"
    )


# numpy ------------------------------------------------------------------------------


def _enc_ndarray(enc: Encoder, arr: Any) -> Any:
    import numpy as np

    check_dtype(arr.dtype)
    if arr.flags.c_contiguous:
        fortran = False
    elif arr.flags.f_contiguous:
        fortran = True
    else:
        arr = np.ascontiguousarray(arr)
        fortran = False
    flat = arr.ravel(order="F" if fortran else "C").view(np.uint8)
    data = enc.bytes_payload(memoryview(flat))
    return _leaf(enc, layout.EXT_NDARRAY, [arr.dtype.str, list(arr.shape), fortran, data])


def _enc_numpy_scalar(enc: Encoder, obj: Any) -> Any:
    import numpy as np

    dtype = np.asarray(obj).dtype
    check_dtype(dtype)
    if dtype.kind == "U":
        raw: Any = str.__str__(obj)  # its exact value: str() and array elements drop trailing NULs
    elif dtype.kind == "S":
        raw = bytes.__bytes__(obj)
    else:
        raw = np.asarray(obj).tobytes()
    return _leaf(enc, layout.EXT_NUMPY_SCALAR, [dtype.str, raw])


# pandas -----------------------------------------------------------------------------


def _enc_dataframe(enc: Encoder, frame: Any) -> Any:
    return _leaf(enc, layout.EXT_DATAFRAME, enc.oob(dataframe_ipc(enc, frame, frame), frame))


def _enc_timestamp(enc: Encoder, ts: Any) -> Any:
    import numpy as np

    value = int(ts.to_datetime64().astype(np.int64))  # in its unit; UTC when it has a zone
    tz = None if ts.tzinfo is None else _encode_tz(ts.tzinfo)
    return _leaf(enc, layout.EXT_PD_TIMESTAMP, [ts.unit, value, tz])


def _enc_pd_timedelta(enc: Encoder, td: Any) -> Any:
    import numpy as np

    return _leaf(enc, layout.EXT_PD_TIMEDELTA, [td.unit, int(td.to_timedelta64().astype(np.int64))])


def _enc_nat(enc: Encoder, obj: Any) -> Any:
    return msgpack.ExtType(layout.EXT_PD_NAT, b"")


def _enc_period(enc: Encoder, period: Any) -> Any:
    return _leaf(enc, layout.EXT_PD_PERIOD, [period.ordinal, period.freqstr])


def _enc_pendulum_datetime(enc: Encoder, obj: Any) -> Any:
    return _leaf(enc, layout.EXT_PENDULUM_DATETIME, _datetime_fields(obj))


def _enc_pendulum_date(enc: Encoder, obj: Any) -> Any:
    return _leaf(enc, layout.EXT_PENDULUM_DATE, obj.toordinal())


def _enc_pendulum_time(enc: Encoder, obj: Any) -> Any:
    return _leaf(enc, layout.EXT_PENDULUM_TIME, _time_fields(obj))


# pyarrow ----------------------------------------------------------------------------


def _enc_arrow_table(enc: Encoder, table: Any) -> Any:
    check_arrow_schema(table.schema, TypeError)
    batches = table.to_batches(max_chunksize=DATAFRAME_BATCH_ROWS)
    item = enc.arrow_item(table)
    excess = arrow_excess(batches)
    if excess > ARROW_ALLOWANCE:
        raise ArrowTooLarge(table, excess)
    return _leaf(
        enc, layout.EXT_ARROW_TABLE, enc.oob(ipc_stream(enc, item, table.schema, batches, excess), table)
    )


_ENCODERS: dict[type, Callable[[Encoder, Any], Any]] = {
    int: _enc_int,
    complex: _enc_complex,
    Box: _enc_box,
    dt.datetime: _enc_datetime,
    dt.date: _enc_date,
    dt.time: _enc_time,
    dt.timedelta: _enc_timedelta,
    decimal.Decimal: _enc_decimal,
    uuid.UUID: _enc_uuid,
    ObjectRef: _enc_ref,
}

_BUILTIN_BASES = (bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset)


def _refuse(enc: Encoder, obj: Any) -> Any:
    raise TypeError(refusal(type(obj), obj))


def _handler_for(t: type, obj: Any) -> Callable[[Encoder, Any], Any]:
    """The encoder for a type not in ``_ENCODERS`` yet: a library type, or a refusal."""
    handler = _library_handler(t, obj) or _refuse
    _ENCODERS[t] = handler
    return handler


def _library_handler(t: type, obj: Any) -> Callable[[Encoder, Any], Any] | None:
    module = t.__module__.split(".", 1)[0]
    name = t.__name__
    if module == "numpy":
        import numpy as np

        if t is np.ndarray:
            return _enc_ndarray
        if isinstance(obj, np.generic):
            return _enc_numpy_scalar
    elif module == "pandas":
        import pandas as pd

        if pd.Series not in _COMPOSITE_ENCODERS:
            _register_pandas_composites()
            if t in _COMPOSITE_ENCODERS:  # a Series or Interval: let _default take the composite path
                return lambda enc, obj: enc._default(obj)
        found = {
            pd.DataFrame: _enc_dataframe,
            pd.Timestamp: _enc_timestamp,
            pd.Timedelta: _enc_pd_timedelta,
            type(pd.NaT): _enc_nat,
            pd.Period: _enc_period,
        }.get(t)
        if found is not None:
            return found
    elif module == "pyarrow":
        import pyarrow as pa

        if t is pa.Table:
            return _enc_arrow_table
    elif module == "pendulum" and name in ("DateTime", "Date", "Time"):
        import pendulum

        return {
            pendulum.DateTime: _enc_pendulum_datetime,
            pendulum.Date: _enc_pendulum_date,
            pendulum.Time: _enc_pendulum_time,
        }.get(t)
    return None


def refusal(t: type, obj: Any) -> str:
    """Why ``obj`` is refused and what to do instead (see ``REFUSED``)."""
    import enum

    what = f"cannot encode {t!r}"
    if isinstance(obj, enum.Enum):
        return (
            f"{what}, an enum member ({obj!r}): rebuilding it would mean importing its class on the reading "
            "side; pass its .value or .name"
        )
    if isinstance(obj, tuple) and hasattr(t, "_fields"):
        return f"{what}, a namedtuple: it cannot be rebuilt without importing its class; pass tuple(x) or x._asdict()"
    if t is memoryview:
        return f"{what}: a memoryview is a view, not a value; pass bytes(view) or a numpy array"
    for base in _BUILTIN_BASES:
        if isinstance(obj, base):
            return (
                f"{what}, a subclass of {base.__name__}: it would come back as a plain {base.__name__}; "
                f"convert it ({base.__name__}(x)) if that is what you want"
            )
    module = t.__module__.split(".", 1)[0]
    if module == "numpy":
        return f"{what}: a numpy array subclass or unsupported numpy object; pass np.asarray(x)"
    if isinstance(obj, (dt.datetime, dt.date, dt.time, dt.timedelta)):
        return f"{what}: this date/time class is not carried; convert it to its datetime counterpart"
    hint = ""
    if hasattr(t, "__dataclass_fields__"):
        hint = "; pass dataclasses.asdict(x)"
    elif hasattr(obj, "model_dump"):
        hint = "; pass x.model_dump()"
    return f"{what}: not a type this codec carries (see codec.CARRIED){hint}"
