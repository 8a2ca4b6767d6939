"""One walk over nested containers, for every place that looks inside a value.

Finding the ``ObjectRef``\\ s in a function's arguments, swapping them for their values,
turning Airflow's lazy XCom sequences into lists, and collecting the references a stored
XCom keeps alive all descend through the same containers the same way; this module is that
descent, once. Only the exact built-in container types are entered (``list``, ``tuple``,
``dict`` values, ``set``, ``frozenset``): a subclass is a leaf, so it is never rebuilt as
something else. The codec bounds how deeply anything decoded can nest, so the recursion is
bounded too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

_SEQUENCES = (list, tuple, set, frozenset)


def leaves(value: Any) -> Iterator[Any]:
    """Every non-container item inside ``value`` (``value`` itself when it is not a container)."""
    kind = type(value)
    if kind is dict:
        for item in value.values():
            yield from leaves(item)
    elif kind in _SEQUENCES:
        for item in value:
            yield from leaves(item)
    else:
        yield value


def rebuild(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with every leaf replaced by ``leaf(item)``; containers keep their type.

    ``leaf`` may itself call :func:`rebuild` on what it returns, to descend into a container
    it produced (a lazy sequence turned into a list, say).
    """
    kind = type(value)
    if kind is dict:
        return {k: rebuild(v, leaf) for k, v in value.items()}
    if kind in _SEQUENCES:
        return kind(rebuild(v, leaf) for v in value)
    return leaf(value)
