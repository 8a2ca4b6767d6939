"""What the codec carries and what it refuses, as data (the README's table is made from it)."""

from __future__ import annotations

from typing import NamedTuple

from airflow_provider_knative.codec.layout import ARROW_ALLOWANCE, ARROW_EXPANSION, MAX_DEPTH


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
