"""Short, bounded, human previews of values, for where the value itself is not shown.

Airflow 3's UI and REST API render the JSON the XCom backend stored and never call its
``deserialize_value``: a packed value or a reference is all a user sees. So every marker
carries a preview (``xcom.py``): the repr of a small value, the first rows of a DataFrame, the
first items of an array or a list. A value spilled by the runtime carries its preview inside
its ``ObjectRef`` (made where the value still exists, in ``spill.py``).

A preview never raises and never costs more than formatting a few items: numpy and pandas
summarise large values themselves, containers go through ``reprlib`` limits, and the text is
cut at ``max_chars``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import reprlib
import uuid
from typing import Any

from airflow_provider_knative.codec import ObjectRef

#: default bound of a preview, in characters ([knative] xcom_preview_max_chars)
MAX_CHARS = 1000
#: rows of a DataFrame, Series or Arrow table shown
HEAD_ROWS = 5
#: columns of a DataFrame shown (the others are elided by pandas)
HEAD_COLS = 8
ELLIPSIS = "…"


class _Repr(reprlib.Repr):
    """reprlib with room for a few items of each container, and our types shown briefly."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 10
        self.maxdict = 10
        self.maxstring = 120
        self.maxother = 200

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, ObjectRef):
            return f"<spilled {x.summary or 'value'}>"
        if isinstance(x, _TEMPORAL):  # as at the top level, not datetime.datetime(2024, 5, 6, ...)
            return temporal(x)
        if _tabular(x):
            text = " ".join(of(x, max_chars=self.maxother).split())  # one line inside a container
            return text if len(text) <= self.maxother else text[: self.maxother - 1] + ELLIPSIS
        return super().repr1(x, level)


_TEMPORAL = (dt.datetime, dt.date, dt.time, dt.timedelta)


def temporal(value: dt.datetime | dt.date | dt.time | dt.timedelta) -> str:
    """A datetime, date, time or timedelta as Airflow's REST API writes it: ISO 8601.

    ``2024-05-06T07:08:09+05:30`` (the UTC offset of an aware datetime, whatever its time zone
    class), ``2024-05-06``, ``07:08:09``, and a timedelta as an ISO 8601 duration the way
    pydantic (which renders Airflow's API models) writes it: ``P1DT5.000003S``, ``-PT1H``,
    ``P1Y35D`` (a year of 365 days). pandas' Timestamp and Timedelta keep their nanoseconds.
    """
    if isinstance(value, dt.timedelta):
        own = getattr(value, "isoformat", None)  # pandas.Timedelta: nanoseconds, its own format
        return str(own()) if callable(own) else _duration(value)
    return value.isoformat()


def _duration(value: dt.timedelta) -> str:
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    years, days = divmod(value.days, 365)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    date = (f"{years}Y" if years else "") + (f"{days}D" if days else "")
    time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or value.microseconds:
        time += (
            f"{seconds}.{value.microseconds:06d}".rstrip("0") if value.microseconds else str(seconds)
        ) + "S"
    if not date and not time:
        return "PT0S"
    return f"{sign}P{date}" + (f"T{time}" if time else "")


#: (top-level module, class name) of the values previewed by their first rows or items
_TABULAR = {("numpy", "ndarray"), ("pandas", "DataFrame"), ("pandas", "Series"), ("pyarrow", "Table")}


def _tabular(x: Any) -> bool:
    t = type(x)
    return (t.__module__.split(".", 1)[0], t.__name__) in _TABULAR


_repr = _Repr()


def cut(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, the last being an ellipsis when it was cut.

    Also made storable in every XCom database: NUL (which PostgreSQL's JSONB refuses) and lone
    surrogates (which UTF-8 cannot carry) are written as escapes.
    """
    if "\x00" in text or not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= max_chars else text[: max(0, max_chars - 1)] + ELLIPSIS


def _ndarray(value: Any) -> str:
    import numpy as np

    return np.array2string(value, threshold=20, edgeitems=3, max_line_width=100, separator=", ")


#: longest cell of a DataFrame shown
CELL_CHARS = 40


def _cell(value: Any) -> str:
    return cut(str(value), CELL_CHARS)


def _frame(value: Any) -> str:
    """The first rows of a DataFrame (one ``{column: value, ...}`` per row) or Series.

    Row by row rather than as a table: the UI collapses whitespace, and braces still show where
    a row ends when the line breaks are gone.
    """
    more = len(value) - HEAD_ROWS
    tail = f"\n{ELLIPSIS} {more} more rows" if more > 0 else ""
    if type(value).__name__ == "Series":
        items = ", ".join(_cell(v) for v in value.iloc[:HEAD_ROWS].tolist())
        return f"{value.name if value.name is not None else 'values'}: [{items}{', ' + ELLIPSIS if more > 0 else ''}]"
    columns = [str(c) for c in value.columns[:HEAD_COLS]]
    wider = ", " + ELLIPSIS if len(value.columns) > HEAD_COLS else ""
    head = value.head(HEAD_ROWS)
    if wider:
        head = head.iloc[:, :HEAD_COLS]
    index = head.index
    plain_index = type(index).__name__ == "RangeIndex" and list(index) == list(range(len(index)))
    lines = []
    # one conversion of the few rows (itertuples costs ~1 ms even on five of them)
    for label, row in zip(index, head.to_numpy(dtype=object).tolist(), strict=True):
        cells = ", ".join(f"{name}: {_cell(v)}" for name, v in zip(columns, row, strict=True))
        lines.append(("" if plain_index else f"{_cell(label)}: ") + "{" + cells + wider + "}")
    return "\n".join(lines) + tail if lines else f"(no rows; columns: {', '.join(columns)}{wider})"


def _text(value: Any) -> str:
    """The preview, uncut (each branch is already small)."""
    t = type(value)
    name = t.__name__
    module = t.__module__.split(".", 1)[0]
    if module == "numpy" and name == "ndarray":
        return _ndarray(value)
    if module == "pandas" and name in ("DataFrame", "Series"):
        return _frame(value)
    if module == "pyarrow" and name == "Table":
        return _frame(value.slice(0, HEAD_ROWS).to_pandas()) + (
            f"\n{ELLIPSIS} {value.num_rows - HEAD_ROWS} more rows" if value.num_rows > HEAD_ROWS else ""
        )
    if isinstance(value, _TEMPORAL):
        return temporal(value)
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return _repr.repr(value)


def of(value: Any, max_chars: int = MAX_CHARS) -> str:
    """A preview of ``value`` of at most ``max_chars`` characters ("" when ``max_chars`` is 0)."""
    if max_chars <= 0:
        return ""
    try:
        return cut(_text(value), max_chars)
    except Exception as exc:  # a preview must never fail the XCom push
        return cut(f"(no preview: {type(exc).__name__})", max_chars)
