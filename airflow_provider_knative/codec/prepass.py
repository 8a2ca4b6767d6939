"""The pre-pass over a value before packing: depth, and the few types msgpack would change.

msgpack packs tuples as lists and bytearrays as bytes and recurses without a depth bound;
one iterative walk finds whether a value needs boxing and refuses values nested deeper than
``MAX_DEPTH`` before anything is written.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

from airflow_provider_knative.codec.layout import MAX_DEPTH
from airflow_provider_knative.errors import KnativeError

_NoneType = type(None)
# exact types msgpack packs natively and that come back as themselves, holding nothing
SCALARS = frozenset({str, int, float, bool, _NoneType, bytes})
_STR = frozenset({str})
# the containers the pre-pass descends into (their encoders are below)
_SEQUENCES = frozenset({list, tuple, set, frozenset})
MAPPINGS = frozenset({dict, collections.OrderedDict, collections.Counter, collections.defaultdict})
_CONTAINERS = _SEQUENCES | MAPPINGS

# how the pre-pass treats a leaf type; computed once per type (``scan_kind``)
_LEAF = 0  # packed by msgpack or by ``Encoder._default`` (which refuses what it cannot carry)
INTERVAL = 1  # pandas Interval: its ends count as nested values
SERIES = 2  # pandas Series: its name counts as a nested value
_BYTEARRAY = 3  # msgpack would pack it as bytes: boxed so it comes back a bytearray
_NATIVE_REFUSED = 4  # msgpack would pack it natively and it would come back changed
_SCAN_KINDS: dict[type, int] = {}


class TooDeep(KnativeError, TypeError):
    pass


class Refused(KnativeError, TypeError):
    pass


def scan_kind(t: type) -> int:
    kind = _SCAN_KINDS.get(t)
    if kind is None:
        module = t.__module__.split(".", 1)[0]
        if t is bytearray:
            kind = _BYTEARRAY
        elif t is memoryview or (module == "msgpack" and t.__name__ in ("ExtType", "Timestamp")):
            kind = _NATIVE_REFUSED
        elif module == "pandas" and t.__name__ == "Interval":
            kind = INTERVAL
        elif module == "pandas" and t.__name__ == "Series":
            kind = SERIES
        else:
            kind = _LEAF
        _SCAN_KINDS[t] = kind
    return kind


def scan(value: Any) -> bool:
    """Check ``value`` before packing: depth within MAX_DEPTH, nothing msgpack would change.

    One iterative pass, level by level, so it cannot overflow any stack itself; it looks at
    each item's type once and descends only into containers. Returns whether the value holds
    a bytearray (which must be boxed before packing). Raises ``TooDeep``/``Refused``; the
    caller then finds and names the path.
    """
    scalars, containers = SCALARS, _CONTAINERS
    top = type(value)
    if top not in containers:
        kind = scan_kind(top)
        if kind == _NATIVE_REFUSED:
            raise Refused(top)
        if kind != INTERVAL and kind != SERIES:
            return kind == _BYTEARRAY
    level = [value]
    depth = 0
    boxes = False
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise TooDeep(f"value is nested more than {MAX_DEPTH} levels deep")
        nxt: list[Any] = []
        push = nxt.append
        odd: list[Any] = []  # items that are neither scalars nor plain containers
        odd_append = odd.append
        for obj in level:
            t = type(obj)
            children: Iterable[Any]
            if t in MAPPINGS:
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
            elif scan_kind(t) == INTERVAL:
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
        if tx in SCALARS:
            continue
        if tx in _CONTAINERS:
            push(x)
            continue
        kind = scan_kind(tx)
        if kind == _BYTEARRAY:
            boxes = True
        elif kind == _NATIVE_REFUSED:
            raise Refused(tx)
        elif kind != _LEAF:
            push(x)
    return boxes


class Box:
    """A bytearray on its way through msgpack, which would otherwise pack it as bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray) -> None:
        self.data = data


def boxed(value: Any) -> Any:
    """``value`` with every bytearray wrapped in a ``Box`` (containers copied as needed)."""
    t = type(value)
    if t is bytearray:
        return Box(value)
    if t is list:
        return [boxed(v) for v in value]
    if t is tuple:
        return tuple(boxed(v) for v in value)
    if t in MAPPINGS:
        items = {k: boxed(v) for k, v in value.items()}  # keys are hashable: never a bytearray
        if t is collections.defaultdict:
            box: collections.defaultdict[Any, Any] = collections.defaultdict(value.default_factory)
            box.update(items)
            return box
        return items if t is dict else t(items)
    return value  # sets and leaves cannot hold a bytearray (it is unhashable)
