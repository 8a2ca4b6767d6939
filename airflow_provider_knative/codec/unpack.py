"""The decoder: msgpack extension types back to the exact Python values.

Every declared length is checked against the bytes present before anything is allocated,
and every malformed payload raises ``CodecError`` naming what was wrong.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

from airflow_provider_knative.codec import layout
from airflow_provider_knative.codec.arrow import arrow_excess, read_table
from airflow_provider_knative.codec.layout import (
    ARROW_ALLOWANCE,
    ARROW_EXPANSION,
    COMPOSITE_CODES,
    DEFAULT_FACTORIES,
    DTYPE_STR,
    MAX_DEPTH,
    MAX_NDIM,
    check_dtype,
)
from airflow_provider_knative.codec.ref import ObjectRef
from airflow_provider_knative.errors import CodecError


def _no_nested(code: int, data: bytes) -> Any:
    raise CodecError(f"encoded value is corrupt: extension type {code} inside a scalar's payload")


class Decoder:
    def __init__(self, buffers: list[memoryview], body_len: int) -> None:
        self.buffers = buffers
        self.limit = max(body_len, 1)  # no payload inside the body can be longer than it
        self.depth = 0
        self._unpackers: list[Any] = []
        self._scalar_unpacker: Any = None
        self.arrow_total = 0

    def decode(self, body: memoryview) -> Any:
        # unpackb keeps a 40 KiB context on the C stack: fine once, at the top
        try:
            return msgpack.unpackb(
                body,
                ext_hook=self._ext,
                raw=False,
                strict_map_key=False,
                timestamp=1,
                unicode_errors="surrogatepass",
            )
        finally:
            # the unpackers hold self._ext: drop them now rather than leave a cycle to the GC
            self._unpackers.clear()
            self._scalar_unpacker = None

    def _feed(self, unpacker: Any, data: bytes) -> Any:
        start = unpacker.tell()
        unpacker.feed(data)
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            raise CodecError("encoded value is corrupt: an extension payload is truncated") from None
        if unpacker.tell() - start != len(data):
            raise CodecError("encoded value is corrupt: an extension payload has trailing bytes")
        return value

    def _ext(self, code: int, data: bytes) -> Any:
        if code in COMPOSITE_CODES:
            depth = self.depth + 1
            if depth > MAX_DEPTH:
                raise CodecError(f"encoded value is nested more than {MAX_DEPTH} levels deep")
            unpackers = self._unpackers
            while len(unpackers) <= depth:
                # heap-allocated state, reused by siblings: ~1.2 KiB of C stack per level
                unpackers.append(
                    msgpack.Unpacker(
                        ext_hook=self._ext,
                        raw=False,
                        strict_map_key=False,
                        timestamp=1,
                        unicode_errors="surrogatepass",
                        max_buffer_size=self.limit,
                    )
                )
            unpacker = unpackers[depth]
            start = unpacker.tell()
            unpacker.feed(data)
            self.depth = depth
            try:
                # the recursion runs through this frame only: one Python frame per level
                inner = unpacker.unpack()
            except msgpack.OutOfData:
                raise CodecError("encoded value is corrupt: an extension payload is truncated") from None
            finally:
                self.depth = depth - 1
            if unpacker.tell() - start != len(data):
                raise CodecError("encoded value is corrupt: an extension payload has trailing bytes")
            return _COMPOSITE_DECODERS[code](self, inner)
        simple = _RAW_DECODERS.get(code)
        if simple is not None:
            return simple(data)
        decoder = _SCALAR_DECODERS.get(code)
        if decoder is None:
            raise CodecError(f"encoded value uses unknown extension type {code}")
        if self._scalar_unpacker is None:
            self._scalar_unpacker = msgpack.Unpacker(
                ext_hook=_no_nested,
                raw=False,
                strict_map_key=False,
                timestamp=1,
                unicode_errors="surrogatepass",
                max_buffer_size=self.limit,
            )
        return decoder(self, self._feed(self._scalar_unpacker, data))

    def buffer(self, ref: Any) -> memoryview | bytes:
        if isinstance(ref, bytes):
            return ref
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(self.buffers):
            return self.buffers[ref]
        raise CodecError(f"encoded value is corrupt: bad buffer reference {ref!r}")

    def table(self, ref: Any) -> Any:
        data = self.buffer(ref)
        table = read_table(data)
        self.arrow_total += arrow_excess(table.to_batches())
        if self.arrow_total > ARROW_ALLOWANCE:
            raise CodecError(
                f"encoded Arrow data would decode to {self.arrow_total / 2**20:.0f} MiB more than "
                f"{ARROW_EXPANSION} bytes per input byte (limit {ARROW_ALLOWANCE // 2**20} MiB per frame): refused"
            )
        return table


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CodecError(f"encoded {what} is malformed")
    return value


def _fields(value: Any, n: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != n:
        raise CodecError(f"encoded {what} is malformed")
    return value


def _hashables(inner: Any, what: str) -> list[Any]:
    return _expect(inner, list, what)


def _mapping(inner: Any, what: str) -> dict[Any, Any]:
    return _expect(inner, dict, what)


def _dec_defaultdict(dec: Decoder, inner: Any) -> Any:
    name, items = _fields(inner, 2, "defaultdict")
    if name is None:
        factory = None
    else:
        factory = DEFAULT_FACTORIES.get(_expect(name, str, "defaultdict factory"))
        if factory is None:
            raise CodecError(f"encoded defaultdict has an unknown default_factory {name!r}")
    result: collections.defaultdict[Any, Any] = collections.defaultdict(factory)
    result.update(_mapping(items, "defaultdict"))
    return result


def _dec_series(dec: Decoder, inner: Any) -> Any:
    ref, name = _fields(inner, 2, "Series")
    series = dec.table(ref).to_pandas()["__series__"]
    series.name = name
    return series


def _dec_interval(dec: Decoder, inner: Any) -> Any:
    import pandas as pd

    left, right, closed = _fields(inner, 3, "Interval")
    return pd.Interval(left, right, closed=_expect(closed, str, "Interval closed side"))


_COMPOSITE_DECODERS: dict[int, Callable[[Decoder, Any], Any]] = {
    layout.EXT_TUPLE: lambda dec, inner: tuple(_expect(inner, list, "tuple")),
    layout.EXT_SET: lambda dec, inner: set(_hashables(inner, "set")),
    layout.EXT_FROZENSET: lambda dec, inner: frozenset(_hashables(inner, "frozenset")),
    layout.EXT_ORDEREDDICT: lambda dec, inner: collections.OrderedDict(_mapping(inner, "OrderedDict")),
    layout.EXT_COUNTER: lambda dec, inner: collections.Counter(_mapping(inner, "Counter")),
    layout.EXT_DEFAULTDICT: _dec_defaultdict,
    layout.EXT_SERIES: _dec_series,
    layout.EXT_PD_INTERVAL: _dec_interval,
}


def _dec_uuid(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise CodecError("encoded UUID must be 16 bytes")
    return uuid.UUID(bytes=data)


def _dec_bigint(data: bytes) -> int:
    if not data:
        raise CodecError("encoded integer is empty")
    return int.from_bytes(data, "little", signed=True)


def _dec_nat(data: bytes) -> Any:
    import pandas as pd

    if data:
        raise CodecError("encoded NaT has a payload")
    return pd.NaT


# payloads that are raw bytes, not msgpack
_RAW_DECODERS: dict[int, Callable[[bytes], Any]] = {
    layout.EXT_UUID: _dec_uuid,
    layout.EXT_BYTEARRAY: bytearray,
    layout.EXT_BIGINT: _dec_bigint,
    layout.EXT_PD_NAT: _dec_nat,
}


def _dec_complex(dec: Decoder, inner: Any) -> complex:
    real, imag = _fields(inner, 2, "complex")
    return complex(_expect(real, float, "complex"), _expect(imag, float, "complex"))


def _dec_timedelta(dec: Decoder, inner: Any) -> dt.timedelta:
    days, seconds, micros = _fields(inner, 3, "timedelta")
    return dt.timedelta(
        days=_expect(days, int, "timedelta"),
        seconds=_expect(seconds, int, "timedelta"),
        microseconds=_expect(micros, int, "timedelta"),
    )


def _dec_time(cls: Any, inner: Any) -> Any:
    if isinstance(inner, str):  # written before fold was carried
        return cls.fromisoformat(inner)
    text, fold = _fields(inner, 2, "time")
    value = dt.time.fromisoformat(_expect(text, str, "time"))
    if value.tzinfo is not None:
        raise CodecError("encoded time of day has a time zone")
    # the constructor, not replace(): pendulum's Time.replace() drops fold
    return cls(value.hour, value.minute, value.second, value.microsecond, fold=_fold(fold))


def _fold(fold: Any) -> int:
    if fold not in (0, 1) or type(fold) is not int:
        raise CodecError("encoded fold must be 0 or 1")
    return int(fold)


def _decode_tz(desc: Any) -> dt.tzinfo:
    if isinstance(desc, str):  # written before time zones were described by kind
        from zoneinfo import ZoneInfo

        return ZoneInfo(desc)
    kind = _expect(desc, list, "time zone")[0] if desc else None
    if kind == "fixed":
        _, micros, name = _fields(desc, 3, "time zone")
        offset = dt.timedelta(microseconds=_expect(micros, int, "time zone offset"))
        return (
            dt.timezone(offset) if name is None else dt.timezone(offset, _expect(name, str, "time zone name"))
        )
    if kind == "zoneinfo":
        from zoneinfo import ZoneInfo

        return ZoneInfo(_expect(_fields(desc, 2, "time zone")[1], str, "time zone key"))
    if kind == "pendulum":
        import pendulum

        return pendulum.timezone(_expect(_fields(desc, 2, "time zone")[1], str, "time zone name"))
    if kind == "pendulum-fixed":
        from pendulum import FixedTimezone

        _, offset, name = _fields(desc, 3, "time zone")
        return FixedTimezone(
            _expect(offset, int, "time zone offset"),
            None if name is None else _expect(name, str, "time zone name"),
        )
    raise CodecError(f"encoded time zone {desc!r} is of an unknown kind")


def _datetime_from(cls: type, inner: Any) -> Any:
    if type(inner) is list and len(inner) == 3:  # written before fold and zone kinds were carried
        naive_text, offset, zone = inner
        fold = None
    else:
        naive_text, offset, zone, fold = _fields(inner, 4, "datetime")
    naive = dt.datetime.fromisoformat(_expect(naive_text, str, "datetime"))
    if naive.tzinfo is not None:
        raise CodecError("encoded wall time has a time zone")
    if zone is None and offset is not None:  # old frames: a fixed offset without a zone
        if not isinstance(offset, (int, float)) or abs(offset) >= 86400:
            raise CodecError("encoded datetime has an invalid UTC offset")
        zone = ["fixed", round(offset * 1_000_000), None]
    tz = None if zone is None else _decode_tz(zone)
    fields = (naive.year, naive.month, naive.day, naive.hour, naive.minute, naive.second, naive.microsecond)
    if fold is None:  # old frames: the recorded offset tells the repeated hour apart
        for guess in (0, 1):
            candidate = cls(*fields, tzinfo=tz, fold=guess)
            off = candidate.utcoffset()
            if tz is None or (off is not None and off.total_seconds() == offset):
                return candidate
        return cls(*fields, tzinfo=tz)
    return cls(*fields, tzinfo=tz, fold=_fold(fold))


def _dec_datetime(dec: Decoder, inner: Any) -> dt.datetime:
    return _datetime_from(dt.datetime, inner)


def _dec_date(dec: Decoder, inner: Any) -> dt.date:
    return dt.date.fromordinal(_expect(inner, int, "date"))


def _dec_pendulum_datetime(dec: Decoder, inner: Any) -> Any:
    import pendulum

    return _datetime_from(pendulum.DateTime, inner)


def _dec_pendulum_date(dec: Decoder, inner: Any) -> Any:
    import pendulum

    return pendulum.Date.fromordinal(_expect(inner, int, "date"))


def _dec_pendulum_time(dec: Decoder, inner: Any) -> Any:
    import pendulum

    return _dec_time(pendulum.Time, inner)


def _dec_ndarray(dec: Decoder, header: Any) -> Any:
    import numpy as np

    dtype_str, shape, fortran, ref = _fields(header, 4, "ndarray")
    dtype = _dtype(dtype_str)
    shape = _expect(shape, list, "ndarray shape")
    if len(shape) > MAX_NDIM or not all(type(d) is int and d >= 0 for d in shape):
        raise CodecError("encoded ndarray has an invalid shape")
    data = dec.buffer(ref)
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(data):
        raise CodecError(
            f"encoded ndarray holds {len(data)} bytes, shape {tuple(shape)} of {dtype} needs "
            f"{count * dtype.itemsize}"
        )
    flat = np.frombuffer(data, dtype=np.uint8).view(dtype) if count else np.empty(0, dtype)
    return flat.reshape(shape, order="F" if _expect(fortran, bool, "ndarray order") else "C")


def _dtype(text: Any) -> Any:
    import numpy as np

    if not isinstance(text, str) or len(text) > 32 or not DTYPE_STR.fullmatch(text):
        raise CodecError(f"encoded dtype {text!r} is not a plain numpy dtype")
    dtype = np.dtype(text)
    try:
        check_dtype(dtype)
    except TypeError as exc:
        raise CodecError(str(exc)) from None
    return dtype


def _dec_numpy_scalar(dec: Decoder, inner: Any) -> Any:
    import numpy as np

    dtype_str, raw = _fields(inner, 2, "numpy scalar")
    dtype = _dtype(dtype_str)
    if dtype.kind == "U" and isinstance(raw, str):
        return np.str_(raw)
    if dtype.kind == "S":
        return np.bytes_(_expect(raw, bytes, "numpy bytes scalar"))
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise CodecError("encoded numpy scalar is malformed")
    return np.frombuffer(raw, dtype=dtype)[0]


def _dec_timestamp(dec: Decoder, inner: Any) -> Any:
    import numpy as np
    import pandas as pd

    unit, value, zone = _fields(inner, 3, "Timestamp")
    if unit not in ("s", "ms", "us", "ns"):
        raise CodecError(f"encoded Timestamp has an unknown unit {unit!r}")
    ts = pd.Timestamp(np.datetime64(_expect(value, int, "Timestamp"), unit))
    if zone is not None:
        ts = ts.tz_localize("UTC").tz_convert(_decode_tz(zone))
    return ts


def _dec_pd_timedelta(dec: Decoder, inner: Any) -> Any:
    import numpy as np
    import pandas as pd

    unit, value = _fields(inner, 2, "Timedelta")
    if unit not in ("s", "ms", "us", "ns"):
        raise CodecError(f"encoded Timedelta has an unknown unit {unit!r}")
    return pd.Timedelta(np.timedelta64(_expect(value, int, "Timedelta"), unit))


def _dec_period(dec: Decoder, inner: Any) -> Any:
    import pandas as pd

    ordinal, freq = _fields(inner, 2, "Period")
    return pd.Period(ordinal=_expect(ordinal, int, "Period"), freq=_expect(freq, str, "Period frequency"))


_SCALAR_DECODERS: dict[int, Callable[[Decoder, Any], Any]] = {
    layout.EXT_DATETIME: _dec_datetime,
    layout.EXT_DATE: _dec_date,
    layout.EXT_TIME: lambda dec, inner: _dec_time(dt.time, inner),
    layout.EXT_TIMEDELTA: _dec_timedelta,
    layout.EXT_DECIMAL: lambda dec, inner: decimal.Decimal(_expect(inner, str, "Decimal")),
    layout.EXT_OBJECT_REF: lambda dec, inner: ObjectRef.from_dict(inner),
    layout.EXT_NDARRAY: _dec_ndarray,
    layout.EXT_NUMPY_SCALAR: _dec_numpy_scalar,
    layout.EXT_ARROW_TABLE: lambda dec, inner: dec.table(inner),
    layout.EXT_DATAFRAME: lambda dec, inner: dec.table(inner).to_pandas(),
    layout.EXT_COMPLEX: _dec_complex,
    layout.EXT_PD_TIMESTAMP: _dec_timestamp,
    layout.EXT_PD_TIMEDELTA: _dec_pd_timedelta,
    layout.EXT_PD_PERIOD: _dec_period,
    layout.EXT_PENDULUM_DATETIME: _dec_pendulum_datetime,
    layout.EXT_PENDULUM_DATE: _dec_pendulum_date,
    layout.EXT_PENDULUM_TIME: _dec_pendulum_time,
}
