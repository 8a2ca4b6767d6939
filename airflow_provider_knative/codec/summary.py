"""A one-line, bounded description of a value for error messages and XCom previews."""

from __future__ import annotations

from typing import Any


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
