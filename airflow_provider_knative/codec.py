"""One binary codec for every value this provider moves: msgpack plus extension types.

Why not JSON or pickle: JSON cannot carry arrays or DataFrames without a text detour that
costs 10x in time and memory; pickle runs code on load. This codec carries numpy arrays as
dtype + shape + raw buffer, DataFrames and Arrow tables as Arrow IPC, and the common Python,
numpy, pandas and pendulum types exactly, and refuses anything else with an error that says
where in the value it sits.

**The rule**: whatever the encoder accepts, the decoder returns equal *and of the same type*
(same class, dtype, unit, time zone, precision). ``CARRIED`` lists what travels and how;
``REFUSED`` lists what is refused and what to do instead. A value is never silently turned
into something else: an ``IntEnum`` is not sent as an ``int``, a ``namedtuple`` not as a
``tuple``; both are refused with a ``TypeError`` naming where they sit.

**Hostile input**: decoding raises ``CodecError`` and nothing else, never crashes the
interpreter and never allocates more than the input justifies:

* nesting is bounded by ``MAX_DEPTH`` (see there for how the number was measured); the
  encoder refuses deeper values, so nothing is written that cannot be read;
* every declared length (msgpack containers, out-of-band buffers, array shapes) is checked
  against the bytes actually present before anything is allocated;
* Arrow IPC is only accepted uncompressed and without run-end or view encodings, and Arrow
  data is only materialized while its estimated decoded size stays within
  ``ARROW_EXPANSION`` bytes per input byte plus ``ARROW_ALLOWANCE`` per frame.

Frame layout (all integers little-endian)::

    b"KNC1" | body_len: u64 | body (msgpack) | pad to 64 | buffer 0 | pad | buffer 1 | pad ...
    | buffer lengths: n x u64 | n: u32 | b"KNCE"

Large buffers (array data, Arrow IPC streams) are *out of band*: the body refers to them by
index and they follow it, 64-byte aligned, so encoding writes them without a copy
(``encode_chunks`` yields memoryviews) and decoding hands out views into the input
(``np.frombuffer``). Their lengths sit in a trailer so a producer can stream a buffer whose
size it learns only while writing it (Arrow IPC, batch by batch).

numpy, pandas, pyarrow and pendulum are optional and imported only when a value needs them.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from airflow_provider_knative.errors import CodecError, KnativeError

__all__ = ["CodecError", "ObjectRef", "dumps", "encode_chunks", "loads", "split_frame", "summarize"]

MAGIC = b"KNC1"
TRAILER_MAGIC = b"KNCE"
ALIGN = 64
#: array buffers at least this long travel out of band (no copy into the msgpack body)
OUT_OF_BAND_MIN = 4096
#: rows per Arrow record batch when a DataFrame is streamed
DATAFRAME_BATCH_ROWS = 128 * 1024

#: How deeply a value may nest: lists, dicts (keys and values), tuples, sets, frozensets,
#: OrderedDict/Counter/defaultdict, and a pandas Interval's ends or a Series' name each count
#: one level (``[[1]]`` is 2 deep, ``1`` is 0). The encoder refuses deeper values, the
#: decoder refuses frames whose extension values nest deeper.
#:
#: Why 256: decoding recurses once per nested tuple/set/...; with one reused msgpack
#: ``Unpacker`` per level that costs about 1.2 KiB of C stack and one Python frame per level
#: (msgpack's ``unpackb``, used before, keeps a 40 KiB context on the C stack: 220 nested
#: tuples crashed the default 8 MiB stack). Measured: decoding 256 nested tuples needs
#: 376 KiB of thread stack, encoding them 288 KiB; glibc gives the main thread and every
#: ``threading``/``ThreadPoolExecutor`` thread 8 MiB by default (``threading.stack_size()``
#: is 0, i.e. the default), so the limit sits at under 5% of it, and the tests run it in
#: 512 KiB threads. 256 Python frames leave the caller most of the default recursion limit.
#: It is above the 199 levels Airflow's JSON models take, so deeper JSON-like values still
#: travel (packed) through the XCom backend.
MAX_DEPTH = 256
MAX_NDIM = 64
#: Arrow data may decode to at most this many bytes per byte of Arrow input ...
ARROW_EXPANSION = 64
#: ... plus this many bytes per frame for data that has no bytes of its own (null columns,
#: empty structs): decoding a frame never materializes more Arrow data than that.
ARROW_ALLOWANCE = 64 * 1024 * 1024

_HEAD = struct.Struct("<4sQ")
_TAIL = struct.Struct("<I4s")
_U64 = struct.Struct("<Q")


# extension type codes: never renumber, they are part of the wire format
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_BYTEARRAY = 4
# 5 is reserved (out-of-band bytes)
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
EXT_BIGINT = 18
EXT_COMPLEX = 19
EXT_ORDEREDDICT = 20
EXT_COUNTER = 21
EXT_DEFAULTDICT = 22
EXT_PD_TIMESTAMP = 23
EXT_PD_TIMEDELTA = 24
EXT_PD_NAT = 25
EXT_PD_PERIOD = 26
EXT_PD_INTERVAL = 27
EXT_PENDULUM_DATETIME = 28
EXT_PENDULUM_DATE = 29
EXT_PENDULUM_TIME = 30

#: extension values that hold other values: decoding them recurses (and counts depth)
_COMPOSITE_CODES = frozenset(
    {
        EXT_TUPLE,
        EXT_SET,
        EXT_FROZENSET,
        EXT_ORDEREDDICT,
        EXT_COUNTER,
        EXT_DEFAULTDICT,
        EXT_SERIES,
        EXT_PD_INTERVAL,
    }
)

_ALLOWED_DTYPE_KINDS = set("biufcmMSU")
# what np.dtype() is given when decoding: a byte order, a kind letter, a size, a unit
_DTYPE_STR = re.compile(r"[<>|=]?[biufcmMSU][0-9]{1,10}(\[[0-9]{0,10}[a-zA-Z]{1,3}\])?")
# builtin factories a defaultdict may carry (rebuilt from this table, never imported)
_DEFAULT_FACTORIES: dict[str, Callable[[], Any]] = {
    f.__name__: f
    for f in (list, dict, set, frozenset, tuple, int, float, complex, str, bytes, bytearray, bool)
}


class TypeRule(NamedTuple):
    """One row of the codec's type table (``CARRIED`` / ``REFUSED``)."""

    kind: str
    rule: str


#: What travels, and how. The README's codec section is generated from this table
#: (``type_table_markdown``) and a test checks that it still matches.
CARRIED: tuple[TypeRule, ...] = (
    TypeRule("None, bool, str", "msgpack nil, bool, str (lone surrogates included)"),
    TypeRule("float", "msgpack float64, bit for bit (NaN, ±inf, -0.0)"),
    TypeRule("int", "msgpack int within 64 bits; beyond: two's-complement bytes, any size"),
    TypeRule("complex", "real and imaginary float64"),
    TypeRule("bytes", "msgpack bin"),
    TypeRule("bytearray", "its bytes, comes back as bytearray"),
    TypeRule("list", "msgpack array"),
    TypeRule("dict", "msgpack map, insertion order kept, keys of any carried hashable type"),
    TypeRule("tuple, set, frozenset", "their items"),
    TypeRule("collections.OrderedDict, collections.Counter", "their items, in order"),
    TypeRule(
        "collections.defaultdict",
        "its items and its default_factory when that is None or a builtin type (list, dict, set, int, ...)",
    ),
    TypeRule("datetime.datetime", "wall time to the microsecond, fold, time zone"),
    TypeRule("datetime.date, datetime.timedelta", "exact fields"),
    TypeRule("datetime.time", "wall time to the microsecond and fold (no time zone)"),
    TypeRule(
        "time zones",
        "zoneinfo.ZoneInfo by key, datetime.timezone by offset and name, pendulum Timezone by name and "
        "FixedTimezone by offset and name: each comes back as the same class",
    ),
    TypeRule("decimal.Decimal", "its exact string: sign, digits, exponent, NaN and infinity"),
    TypeRule("uuid.UUID", "its 16 bytes"),
    TypeRule("pendulum.DateTime, pendulum.Date, pendulum.Time", "as their datetime counterparts, same class"),
    TypeRule(
        "numpy.ndarray",
        "dtype, shape, C/Fortran order and raw buffer (out of band from 4 KiB, decoded zero-copy); dtypes: "
        "bool, int, uint, float, complex, datetime64, timedelta64 (any unit), bytes (S), str (U)",
    ),
    TypeRule("numpy scalars", "dtype and raw bytes (str_ and bytes_: their exact value); the same dtypes"),
    TypeRule("pandas.DataFrame, pandas.Series", "Arrow IPC stream (out of band) with pandas metadata"),
    TypeRule("pandas.Timestamp", "integer in its unit (s, ms, us, ns) and time zone"),
    TypeRule("pandas.Timedelta", "integer in its unit"),
    TypeRule("pandas.NaT", "a marker"),
    TypeRule("pandas.Period", "ordinal and frequency"),
    TypeRule("pandas.Interval", "left, right (any carried scalar) and closed side"),
    TypeRule("pyarrow.Table", "Arrow IPC stream (out of band)"),
    TypeRule("ObjectRef", "url, size, sha256, summary (a value spilled to the object store)"),
)

#: What is refused (``TypeError`` naming where in the value), why, and what to do instead.
REFUSED: tuple[TypeRule, ...] = (
    TypeRule(
        "enum members (Enum, IntEnum, StrEnum, Flag)",
        "the enum class would have to be imported on the reading side; pass `.value` or `.name`",
    ),
    TypeRule("namedtuple and other tuple subclasses", "same reason; pass `tuple(x)` or `x._asdict()`"),
    TypeRule(
        "other subclasses of int, float, str, bytes, list, dict, set",
        "they would come back as the base type; convert them first",
    ),
    TypeRule("memoryview", "a view, not a value; pass `bytes(view)` or a numpy array"),
    TypeRule(
        "datetimes with a dateutil, pytz or custom tzinfo, ZoneInfo without a key",
        "the zone cannot be rebuilt exactly; use `zoneinfo.ZoneInfo(key)` or `datetime.timezone`",
    ),
    TypeRule("datetime.time with a tzinfo", "has no UTC offset without a date; use a datetime"),
    TypeRule(
        "numpy object, structured and void dtypes; ndarray subclasses (matrix, masked, memmap)",
        "convert to a plain array, a DataFrame or lists",
    ),
    TypeRule(
        "Arrow data that is compressed, run-end encoded, a union or a view type (string_view, list_view, ...)",
        "it can expand without bound when decoded; cast to the plain type first",
    ),
    TypeRule(
        f"Arrow data (tables, DataFrames) decoding to more than {ARROW_EXPANSION} bytes per encoded byte "
        f"plus {ARROW_ALLOWANCE // 2**20} MiB per value",
        "e.g. very long null or empty-struct columns; drop or fill them first",
    ),
    TypeRule(f"values nested more than {MAX_DEPTH} levels deep", "flatten them"),
    TypeRule(
        "everything else: dataclasses, pydantic models, pendulum Duration, custom classes, functions",
        "decoding never imports or runs code; convert (`dataclasses.asdict(x)`, `model.model_dump()`)",
    ),
)


def type_table_markdown() -> str:
    """The README's table of carried and refused types, generated from ``CARRIED``/``REFUSED``."""
    lines = ["| carried | how |", "|---|---|"]
    lines += [f"| {r.kind} | {r.rule} |" for r in CARRIED]
    lines += ["", "| refused (TypeError naming where) | why, and what to do instead |", "|---|---|"]
    lines += [f"| {r.kind} | {r.rule} |" for r in REFUSED]
    return "\n".join(lines) + "\n"


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
# The pre-pass: depth, and what msgpack would pack natively but change
# --------------------------------------------------------------------------------------

_NoneType = type(None)
# exact types msgpack packs natively and that come back as themselves, holding nothing
_SCALARS = frozenset({str, int, float, bool, _NoneType, bytes})
_STR = frozenset({str})
# the containers the pre-pass descends into (their encoders are below)
_SEQUENCES = frozenset({list, tuple, set, frozenset})
_MAPPINGS = frozenset({dict, collections.OrderedDict, collections.Counter, collections.defaultdict})
_CONTAINERS = _SEQUENCES | _MAPPINGS

# how the pre-pass treats a leaf type; computed once per type (``_scan_kind``)
_LEAF = 0  # packed by msgpack or by ``_Encoder._default`` (which refuses what it cannot carry)
_INTERVAL = 1  # pandas Interval: its ends count as nested values
_SERIES = 2  # pandas Series: its name counts as a nested value
_BYTEARRAY = 3  # msgpack would pack it as bytes: boxed so it comes back a bytearray
_NATIVE_REFUSED = 4  # msgpack would pack it natively and it would come back changed
_SCAN_KINDS: dict[type, int] = {}


class _TooDeep(KnativeError, TypeError):
    pass


class _Refused(KnativeError, TypeError):
    pass


def _scan_kind(t: type) -> int:
    kind = _SCAN_KINDS.get(t)
    if kind is None:
        module = t.__module__.split(".", 1)[0]
        if t is bytearray:
            kind = _BYTEARRAY
        elif t is memoryview or (module == "msgpack" and t.__name__ in ("ExtType", "Timestamp")):
            kind = _NATIVE_REFUSED
        elif module == "pandas" and t.__name__ == "Interval":
            kind = _INTERVAL
        elif module == "pandas" and t.__name__ == "Series":
            kind = _SERIES
        else:
            kind = _LEAF
        _SCAN_KINDS[t] = kind
    return kind


def _scan(value: Any) -> bool:
    """Check ``value`` before packing: depth within MAX_DEPTH, nothing msgpack would change.

    One iterative pass, level by level, so it cannot overflow any stack itself; it looks at
    each item's type once and descends only into containers. Returns whether the value holds
    a bytearray (which must be boxed before packing). Raises ``_TooDeep``/``_Refused``; the
    caller then finds and names the path.
    """
    scalars, containers = _SCALARS, _CONTAINERS
    top = type(value)
    if top not in containers:
        kind = _scan_kind(top)
        if kind == _NATIVE_REFUSED:
            raise _Refused(top)
        if kind != _INTERVAL and kind != _SERIES:
            return kind == _BYTEARRAY
    level = [value]
    depth = 0
    boxes = False
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise _TooDeep(f"value is nested more than {MAX_DEPTH} levels deep")
        nxt: list[Any] = []
        push = nxt.append
        odd: list[Any] = []  # items that are neither scalars nor plain containers
        odd_append = odd.append
        for obj in level:
            t = type(obj)
            children: Iterable[Any]
            if t in _MAPPINGS:
                # large mappings of scalars: one C-speed pass instead of a Python loop
                if (
                    len(obj) > 32
                    and scalars.issuperset(map(type, obj.values()))
                    and _STR.issuperset(map(type, obj))
                ):
                    continue
                for key in obj:
                    if type(key) is not str:
                        odd_append(key)
                children = obj.values()
            elif t in _SEQUENCES:
                if len(obj) > 32 and scalars.issuperset(map(type, obj)):
                    continue
                children = obj
            elif _scan_kind(t) == _INTERVAL:
                children = (obj.left, obj.right)
            else:
                children = (obj.name,)
            for x in children:
                tx = type(x)
                if tx in scalars:
                    continue
                if tx in containers:
                    push(x)
                else:
                    odd_append(x)
        if odd and _scan_odd(odd, push):
            boxes = True
        level = nxt
    return boxes


def _scan_odd(items: list[Any], push: Callable[[Any], None]) -> bool:
    """Sort out the pre-pass's unusual items (dict keys, library types); True for a bytearray."""
    boxes = False
    for x in items:
        tx = type(x)
        if tx in _SCALARS:
            continue
        if tx in _CONTAINERS:
            push(x)
            continue
        kind = _scan_kind(tx)
        if kind == _BYTEARRAY:
            boxes = True
        elif kind == _NATIVE_REFUSED:
            raise _Refused(tx)
        elif kind != _LEAF:
            push(x)
    return boxes


class _Box:
    """A bytearray on its way through msgpack, which would otherwise pack it as bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray) -> None:
        self.data = data


def _boxed(value: Any) -> Any:
    """``value`` with every bytearray wrapped in a ``_Box`` (containers copied as needed)."""
    t = type(value)
    if t is bytearray:
        return _Box(value)
    if t is list:
        return [_boxed(v) for v in value]
    if t is tuple:
        return tuple(_boxed(v) for v in value)
    if t in _MAPPINGS:
        items = {k: _boxed(v) for k, v in value.items()}  # keys are hashable: never a bytearray
        if t is collections.defaultdict:
            box: collections.defaultdict[Any, Any] = collections.defaultdict(value.default_factory)
            box.update(items)
            return box
        return items if t is dict else t(items)
    return value  # sets and leaves cannot hold a bytearray (it is unhashable)


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------


class _ArrowItem:
    """One Arrow IPC stream being written, and its decoded-size estimate once known."""

    __slots__ = ("excess", "owner")

    def __init__(self, owner: Any) -> None:
        self.owner = owner  # the DataFrame/Series/Table, to name its path on error
        self.excess: int | None = None


class _Encoder:
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
        self.arrow: list[_ArrowItem] = []
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
        if type(value) not in _SCALARS and _scan(value):
            value = _boxed(value)
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
            raise _TooDeep(f"value is nested more than {MAX_DEPTH} levels deep")
        packer = self.packer(depth)
        self._depth = depth
        try:
            return msgpack.ExtType(code, packer.pack(payload))
        finally:
            self._depth = depth - 1

    # -- Arrow accounting: the decoder repeats exactly this, in the same order -----------

    def arrow_item(self, owner: Any) -> _ArrowItem:
        item = _ArrowItem(owner)
        self.arrow.append(item)
        return item

    def arrow_done(self, item: _ArrowItem, excess: int) -> None:
        """Record a stream's estimate; check every prefix whose estimates are all known."""
        item.excess = excess
        while self._arrow_checked < len(self.arrow):
            current = self.arrow[self._arrow_checked]
            if current.excess is None:
                break
            self._arrow_total += current.excess
            self._arrow_checked += 1
            if self._arrow_total > ARROW_ALLOWANCE:
                raise _ArrowTooLarge(current.owner, self._arrow_total)


class _ArrowTooLarge(KnativeError, TypeError):
    def __init__(self, owner: Any, total: int) -> None:
        super().__init__(
            f"cannot encode {summarize(owner)}: its Arrow data would decode to {total / 2**20:.0f} MiB more "
            f"than {ARROW_EXPANSION} bytes per encoded byte, beyond the {ARROW_ALLOWANCE // 2**20} MiB a frame "
            "may add (the decoder refuses such frames as decompression bombs); drop or fill long null / "
            "empty-struct columns, or split the value"
        )
        self.owner = owner


# -- values holding values: (extension code, payload to pack one level down) ------------


def _defaultdict_payload(enc: _Encoder, obj: collections.defaultdict) -> list[Any]:
    factory = obj.default_factory
    if factory is not None and _DEFAULT_FACTORIES.get(getattr(factory, "__name__", "")) is not factory:
        raise TypeError(
            f"cannot encode a defaultdict whose default_factory is {factory!r}: only None and builtin types "
            f"({', '.join(sorted(_DEFAULT_FACTORIES))}) can be rebuilt without importing code; pass dict(x)"
        )
    return [None if factory is None else factory.__name__, dict(obj)]


def _series_payload(enc: _Encoder, series: Any) -> list[Any]:
    frame = series.to_frame(name="__series__")
    return [enc.oob(_dataframe_ipc(enc, frame, series), series), series.name]


_COMPOSITE_ENCODERS: dict[type, tuple[int, Callable[[_Encoder, Any], Any]]] = {
    tuple: (EXT_TUPLE, lambda enc, obj: list(obj)),
    set: (EXT_SET, lambda enc, obj: list(obj)),
    frozenset: (EXT_FROZENSET, lambda enc, obj: list(obj)),
    collections.OrderedDict: (EXT_ORDEREDDICT, lambda enc, obj: dict(obj)),
    collections.Counter: (EXT_COUNTER, lambda enc, obj: dict(obj)),
    collections.defaultdict: (EXT_DEFAULTDICT, _defaultdict_payload),
}


def _register_pandas_composites() -> None:
    import pandas as pd

    _COMPOSITE_ENCODERS[pd.Series] = (EXT_SERIES, _series_payload)
    _COMPOSITE_ENCODERS[pd.Interval] = (
        EXT_PD_INTERVAL,
        lambda enc, obj: [obj.left, obj.right, obj.closed],
    )


# -- values that hold no values ------------------------------------------------------


def _enc_int(enc: _Encoder, obj: int) -> Any:
    # msgpack hands us only ints beyond 64 bits
    return msgpack.ExtType(EXT_BIGINT, obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True))


def _enc_complex(enc: _Encoder, obj: complex) -> Any:
    return _leaf(enc, EXT_COMPLEX, [obj.real, obj.imag])


def _enc_box(enc: _Encoder, obj: _Box) -> Any:
    return msgpack.ExtType(EXT_BYTEARRAY, bytes(obj.data))


def _leaf(enc: _Encoder, code: int, payload: Any) -> msgpack.ExtType:
    return msgpack.ExtType(code, enc.plain.pack(payload))


def _enc_datetime(enc: _Encoder, obj: dt.datetime) -> Any:
    return _leaf(enc, EXT_DATETIME, _datetime_fields(obj))


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


def _enc_date(enc: _Encoder, obj: dt.date) -> Any:
    return _leaf(enc, EXT_DATE, obj.toordinal())


def _enc_time(enc: _Encoder, obj: dt.time) -> Any:
    return _leaf(enc, EXT_TIME, _time_fields(obj))


def _time_fields(obj: dt.time) -> list[Any]:
    if obj.tzinfo is not None:
        raise TypeError("cannot encode a time of day with a time zone (it has no UTC offset); use a datetime")
    return [dt.time(obj.hour, obj.minute, obj.second, obj.microsecond).isoformat(), obj.fold]


def _enc_timedelta(enc: _Encoder, obj: dt.timedelta) -> Any:
    return _leaf(enc, EXT_TIMEDELTA, [obj.days, obj.seconds, obj.microseconds])


def _enc_decimal(enc: _Encoder, obj: decimal.Decimal) -> Any:
    return _leaf(enc, EXT_DECIMAL, str(obj))


def _enc_uuid(enc: _Encoder, obj: uuid.UUID) -> Any:
    return msgpack.ExtType(EXT_UUID, obj.bytes)


def _enc_ref(enc: _Encoder, obj: ObjectRef) -> Any:
    return _leaf(enc, EXT_OBJECT_REF, obj.to_dict())


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


def _check_dtype(dtype: Any) -> None:
    if (
        dtype.kind not in _ALLOWED_DTYPE_KINDS
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.itemsize == 0
    ):
        raise TypeError(
            f"cannot encode a numpy array of dtype {dtype} (kind {dtype.kind!r}): only numeric, "
            "bool, datetime64, timedelta64 and fixed-width string dtypes travel; convert object "
            "or structured arrays to a DataFrame or to plain lists"
        )


def _enc_ndarray(enc: _Encoder, arr: Any) -> Any:
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
    data = enc.bytes_payload(memoryview(flat))
    return _leaf(enc, EXT_NDARRAY, [arr.dtype.str, list(arr.shape), fortran, data])


def _enc_numpy_scalar(enc: _Encoder, obj: Any) -> Any:
    import numpy as np

    dtype = np.asarray(obj).dtype
    _check_dtype(dtype)
    if dtype.kind == "U":
        raw: Any = str.__str__(obj)  # its exact value: str() and array elements drop trailing NULs
    elif dtype.kind == "S":
        raw = bytes.__bytes__(obj)
    else:
        raw = np.asarray(obj).tobytes()
    return _leaf(enc, EXT_NUMPY_SCALAR, [dtype.str, raw])


# pandas -----------------------------------------------------------------------------


def _enc_dataframe(enc: _Encoder, frame: Any) -> Any:
    return _leaf(enc, EXT_DATAFRAME, enc.oob(_dataframe_ipc(enc, frame, frame), frame))


def _enc_timestamp(enc: _Encoder, ts: Any) -> Any:
    import numpy as np

    value = int(ts.to_datetime64().astype(np.int64))  # in its unit; UTC when it has a zone
    tz = None if ts.tzinfo is None else _encode_tz(ts.tzinfo)
    return _leaf(enc, EXT_PD_TIMESTAMP, [ts.unit, value, tz])


def _enc_pd_timedelta(enc: _Encoder, td: Any) -> Any:
    import numpy as np

    return _leaf(enc, EXT_PD_TIMEDELTA, [td.unit, int(td.to_timedelta64().astype(np.int64))])


def _enc_nat(enc: _Encoder, obj: Any) -> Any:
    return msgpack.ExtType(EXT_PD_NAT, b"")


def _enc_period(enc: _Encoder, period: Any) -> Any:
    return _leaf(enc, EXT_PD_PERIOD, [period.ordinal, period.freqstr])


def _enc_pendulum_datetime(enc: _Encoder, obj: Any) -> Any:
    return _leaf(enc, EXT_PENDULUM_DATETIME, _datetime_fields(obj))


def _enc_pendulum_date(enc: _Encoder, obj: Any) -> Any:
    return _leaf(enc, EXT_PENDULUM_DATE, obj.toordinal())


def _enc_pendulum_time(enc: _Encoder, obj: Any) -> Any:
    return _leaf(enc, EXT_PENDULUM_TIME, _time_fields(obj))


# pyarrow ----------------------------------------------------------------------------


def _enc_arrow_table(enc: _Encoder, table: Any) -> Any:
    _check_arrow_schema(table.schema, TypeError)
    batches = table.to_batches(max_chunksize=DATAFRAME_BATCH_ROWS)
    item = enc.arrow_item(table)
    excess = _arrow_excess(batches)
    if excess > ARROW_ALLOWANCE:
        raise _ArrowTooLarge(table, excess)
    return _leaf(enc, EXT_ARROW_TABLE, enc.oob(_ipc_stream(enc, item, table.schema, batches, excess), table))


_ENCODERS: dict[type, Callable[[_Encoder, Any], Any]] = {
    int: _enc_int,
    complex: _enc_complex,
    _Box: _enc_box,
    dt.datetime: _enc_datetime,
    dt.date: _enc_date,
    dt.time: _enc_time,
    dt.timedelta: _enc_timedelta,
    decimal.Decimal: _enc_decimal,
    uuid.UUID: _enc_uuid,
    ObjectRef: _enc_ref,
}

_BUILTIN_BASES = (bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset)


def _refuse(enc: _Encoder, obj: Any) -> Any:
    raise TypeError(_refusal(type(obj), obj))


def _handler_for(t: type, obj: Any) -> Callable[[_Encoder, Any], Any]:
    """The encoder for a type not in ``_ENCODERS`` yet: a library type, or a refusal."""
    handler = _library_handler(t, obj) or _refuse
    _ENCODERS[t] = handler
    return handler


def _library_handler(t: type, obj: Any) -> Callable[[_Encoder, Any], Any] | None:
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


def _refusal(t: type, obj: Any) -> str:
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


def _check_arrow_schema(schema: Any, error: type[Exception]) -> None:
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


def _ipc_stream(
    enc: _Encoder, item: _ArrowItem, schema: Any, batches: Iterable[Any], excess: int | None = None
) -> Iterator[bytes | memoryview]:
    """Arrow IPC for ``batches``; the decoded-size estimate is summed as they go by."""
    import pyarrow as pa

    sink = _ChunkSink()
    total = 0
    with pa.ipc.new_stream(sink, schema) as writer:
        yield from sink.take()
        for batch in batches:
            if excess is None:
                total += _arrow_excess([batch])
            writer.write_batch(batch)
            yield from sink.take()
    yield from sink.take()
    enc.arrow_done(item, total if excess is None else excess)


def _converts_by_copy(dtype: Any) -> bool:
    """Whether pyarrow must build new memory for a column (Python objects, Python strings)."""
    import numpy as np

    return (isinstance(dtype, np.dtype) and dtype.kind == "O") or getattr(dtype, "storage", None) == "python"


def _dataframe_ipc(enc: _Encoder, frame: Any, owner: Any) -> Iterator[bytes | memoryview]:
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
        _check_arrow_schema(table.schema, TypeError)
        batches = table.to_batches(max_chunksize=DATAFRAME_BATCH_ROWS)
        excess = _arrow_excess(batches)
        if excess > ARROW_ALLOWANCE:
            raise _ArrowTooLarge(owner, excess)
        return _ipc_stream(enc, item, table.schema, batches, excess)
    # the schema of the whole frame carries the pandas metadata (index range, dtypes)
    schema = pa.Schema.from_pandas(frame, preserve_index=None)
    _check_arrow_schema(schema, TypeError)

    def slices() -> Iterator[Any]:
        for start in range(0, len(frame), DATAFRAME_BATCH_ROWS):
            part = frame.iloc[start : start + DATAFRAME_BATCH_ROWS]
            batch = pa.RecordBatch.from_pandas(part, schema=schema, preserve_index=None)
            yield batch.replace_schema_metadata(schema.metadata)

    return _ipc_stream(enc, item, schema, slices())


def _pad(n: int) -> int:
    return -n % ALIGN


_ZEROS = bytes(ALIGN)


def encode_chunks(value: Any) -> Iterator[bytes | memoryview]:
    """Encode ``value`` as a sequence of chunks whose concatenation is the frame.

    Large buffers are yielded as views of the caller's memory (no copy); write the chunks
    out before mutating the value. Raises TypeError naming the path of an unencodable part:
    before the first chunk, except for DataFrames with Python-object columns, which are
    converted while they stream (a failure there ends the stream with the TypeError).
    """
    encoder = _Encoder()
    try:
        try:
            body = encoder.encode_body(value)
        except UnicodeEncodeError:  # a str with lone surrogates somewhere: carry them as they are
            encoder = _Encoder(unicode_errors="surrogatepass")
            body = encoder.encode_body(value)
    except RecursionError:
        raise TypeError(
            f"value: cannot encode: nested too deeply for this thread's Python recursion limit "
            f"(the codec allows {MAX_DEPTH} levels)"
        ) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(_describe_failure(value, exc)) from None
    yield _HEAD.pack(MAGIC, len(body))
    yield body
    yield _ZEROS[: _pad(_HEAD.size + len(body))]
    lengths = []
    for index, buf in enumerate(encoder.buffers):
        if isinstance(buf, memoryview):
            yield buf
            n = buf.nbytes
        else:
            n = 0
            try:
                for chunk in buf:
                    n += len(chunk)
                    yield chunk
            except _ArrowTooLarge as exc:
                raise TypeError(f"{_path_to(value, exc.owner)}: {exc}") from None
            except Exception as exc:  # pyarrow's conversion errors are of many kinds
                owner = encoder.owners.get(index)
                raise TypeError(
                    f"{_path_to(value, owner)}: cannot encode {summarize(owner)}: {type(exc).__name__}: {exc}"
                ) from None
        yield _ZEROS[: _pad(n)]
        lengths.append(n)
    yield b"".join(_U64.pack(n) for n in lengths) + _TAIL.pack(len(lengths), TRAILER_MAGIC)


def dumps(value: Any) -> bytes:
    """Encode ``value`` into one bytes object (for bodies and small values)."""
    return b"".join(encode_chunks(value))


# -- naming the culprit (error path only: it may be slow) --------------------------------


def _describe_failure(value: Any, exc: Exception) -> str:
    """Find the first part of ``value`` that cannot be encoded and say where it is."""
    if isinstance(exc, _ArrowTooLarge):
        return f"{_path_to(value, exc.owner)}: {exc}"
    found = _find_unencodable(value, "value", 0)
    if found is None:
        return f"value: cannot encode: {exc}"
    return f"{found[0]}: {found[1]}"


def _children(value: Any, path: str) -> Iterator[tuple[str, Any]] | None:
    """(path, item) for what ``value`` holds, in packing order; None for a leaf."""
    t = type(value)
    if t in _MAPPINGS:

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
    kind = _scan_kind(t)
    if kind == _INTERVAL:
        return iter(((f"{path}.left", value.left), (f"{path}.right", value.right)))
    if kind == _SERIES:
        return iter(((f"{path}.name", value.name),))
    return None


def _find_unencodable(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    children = _children(value, path)
    if children is None:
        try:
            _Encoder().encode_body(value)
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
            _defaultdict_payload(_Encoder(), value)
        except TypeError as exc:
            return path, str(exc)
    for sub_path, child in children:
        found = _find_unencodable(child, sub_path, depth + 1)
        if found is not None:
            return found
    return None


def _reason(value: Any, exc: Exception) -> str:
    message = "" if isinstance(exc, _Refused) else str(exc)
    if not message:
        return _refusal(type(value), value)
    return message if message.startswith("cannot encode") else f"cannot encode {type(value)!r}: {message}"


def _path_to(value: Any, target: Any) -> str:
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
    decoder = _Decoder(buffers, body.nbytes)
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


def _no_nested(code: int, data: bytes) -> Any:
    raise CodecError(f"encoded value is corrupt: extension type {code} inside a scalar's payload")


class _Decoder:
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
        if code in _COMPOSITE_CODES:
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
        table = _read_table(data)
        self.arrow_total += _arrow_excess(table.to_batches())
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


def _dec_defaultdict(dec: _Decoder, inner: Any) -> Any:
    name, items = _fields(inner, 2, "defaultdict")
    if name is None:
        factory = None
    else:
        factory = _DEFAULT_FACTORIES.get(_expect(name, str, "defaultdict factory"))
        if factory is None:
            raise CodecError(f"encoded defaultdict has an unknown default_factory {name!r}")
    result: collections.defaultdict[Any, Any] = collections.defaultdict(factory)
    result.update(_mapping(items, "defaultdict"))
    return result


def _dec_series(dec: _Decoder, inner: Any) -> Any:
    ref, name = _fields(inner, 2, "Series")
    series = dec.table(ref).to_pandas()["__series__"]
    series.name = name
    return series


def _dec_interval(dec: _Decoder, inner: Any) -> Any:
    import pandas as pd

    left, right, closed = _fields(inner, 3, "Interval")
    return pd.Interval(left, right, closed=_expect(closed, str, "Interval closed side"))


_COMPOSITE_DECODERS: dict[int, Callable[[_Decoder, Any], Any]] = {
    EXT_TUPLE: lambda dec, inner: tuple(_expect(inner, list, "tuple")),
    EXT_SET: lambda dec, inner: set(_hashables(inner, "set")),
    EXT_FROZENSET: lambda dec, inner: frozenset(_hashables(inner, "frozenset")),
    EXT_ORDEREDDICT: lambda dec, inner: collections.OrderedDict(_mapping(inner, "OrderedDict")),
    EXT_COUNTER: lambda dec, inner: collections.Counter(_mapping(inner, "Counter")),
    EXT_DEFAULTDICT: _dec_defaultdict,
    EXT_SERIES: _dec_series,
    EXT_PD_INTERVAL: _dec_interval,
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
    EXT_UUID: _dec_uuid,
    EXT_BYTEARRAY: bytearray,
    EXT_BIGINT: _dec_bigint,
    EXT_PD_NAT: _dec_nat,
}


def _dec_complex(dec: _Decoder, inner: Any) -> complex:
    real, imag = _fields(inner, 2, "complex")
    return complex(_expect(real, float, "complex"), _expect(imag, float, "complex"))


def _dec_timedelta(dec: _Decoder, inner: Any) -> dt.timedelta:
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


def _dec_datetime(dec: _Decoder, inner: Any) -> dt.datetime:
    return _datetime_from(dt.datetime, inner)


def _dec_date(dec: _Decoder, inner: Any) -> dt.date:
    return dt.date.fromordinal(_expect(inner, int, "date"))


def _dec_pendulum_datetime(dec: _Decoder, inner: Any) -> Any:
    import pendulum

    return _datetime_from(pendulum.DateTime, inner)


def _dec_pendulum_date(dec: _Decoder, inner: Any) -> Any:
    import pendulum

    return pendulum.Date.fromordinal(_expect(inner, int, "date"))


def _dec_pendulum_time(dec: _Decoder, inner: Any) -> Any:
    import pendulum

    return _dec_time(pendulum.Time, inner)


def _dec_ndarray(dec: _Decoder, header: Any) -> Any:
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

    if not isinstance(text, str) or len(text) > 32 or not _DTYPE_STR.fullmatch(text):
        raise CodecError(f"encoded dtype {text!r} is not a plain numpy dtype")
    dtype = np.dtype(text)
    try:
        _check_dtype(dtype)
    except TypeError as exc:
        raise CodecError(str(exc)) from None
    return dtype


def _dec_numpy_scalar(dec: _Decoder, inner: Any) -> Any:
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


def _dec_timestamp(dec: _Decoder, inner: Any) -> Any:
    import numpy as np
    import pandas as pd

    unit, value, zone = _fields(inner, 3, "Timestamp")
    if unit not in ("s", "ms", "us", "ns"):
        raise CodecError(f"encoded Timestamp has an unknown unit {unit!r}")
    ts = pd.Timestamp(np.datetime64(_expect(value, int, "Timestamp"), unit))
    if zone is not None:
        ts = ts.tz_localize("UTC").tz_convert(_decode_tz(zone))
    return ts


def _dec_pd_timedelta(dec: _Decoder, inner: Any) -> Any:
    import numpy as np
    import pandas as pd

    unit, value = _fields(inner, 2, "Timedelta")
    if unit not in ("s", "ms", "us", "ns"):
        raise CodecError(f"encoded Timedelta has an unknown unit {unit!r}")
    return pd.Timedelta(np.timedelta64(_expect(value, int, "Timedelta"), unit))


def _dec_period(dec: _Decoder, inner: Any) -> Any:
    import pandas as pd

    ordinal, freq = _fields(inner, 2, "Period")
    return pd.Period(ordinal=_expect(ordinal, int, "Period"), freq=_expect(freq, str, "Period frequency"))


_SCALAR_DECODERS: dict[int, Callable[[_Decoder, Any], Any]] = {
    EXT_DATETIME: _dec_datetime,
    EXT_DATE: _dec_date,
    EXT_TIME: lambda dec, inner: _dec_time(dt.time, inner),
    EXT_TIMEDELTA: _dec_timedelta,
    EXT_DECIMAL: lambda dec, inner: decimal.Decimal(_expect(inner, str, "Decimal")),
    EXT_OBJECT_REF: lambda dec, inner: ObjectRef.from_dict(inner),
    EXT_NDARRAY: _dec_ndarray,
    EXT_NUMPY_SCALAR: _dec_numpy_scalar,
    EXT_ARROW_TABLE: lambda dec, inner: dec.table(inner),
    EXT_DATAFRAME: lambda dec, inner: dec.table(inner).to_pandas(),
    EXT_COMPLEX: _dec_complex,
    EXT_PD_TIMESTAMP: _dec_timestamp,
    EXT_PD_TIMEDELTA: _dec_pd_timedelta,
    EXT_PD_PERIOD: _dec_period,
    EXT_PENDULUM_DATETIME: _dec_pendulum_datetime,
    EXT_PENDULUM_DATE: _dec_pendulum_date,
    EXT_PENDULUM_TIME: _dec_pendulum_time,
}


# --------------------------------------------------------------------------------------
# Arrow: what is accepted, and how much it may expand
# --------------------------------------------------------------------------------------


def _read_table(data: memoryview | bytes) -> Any:
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
    _check_arrow_schema(reader.schema, CodecError)
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


def _arrow_excess(batches: Iterable[Any]) -> int:
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
