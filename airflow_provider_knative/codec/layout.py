"""The frame layout: magic numbers, alignment, limits and extension codes.

Every number the encoder and the decoder must agree on lives here, so a change to the wire
format is a change to one file.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

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

HEAD = struct.Struct("<4sQ")
TAIL = struct.Struct("<I4s")
U64 = struct.Struct("<Q")


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
COMPOSITE_CODES = frozenset(
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
DTYPE_STR = re.compile(r"[<>|=]?[biufcmMSU][0-9]{1,10}(\[[0-9]{0,10}[a-zA-Z]{1,3}\])?")
# builtin factories a defaultdict may carry (rebuilt from this table, never imported)
DEFAULT_FACTORIES: dict[str, Callable[[], Any]] = {
    f.__name__: f
    for f in (list, dict, set, frozenset, tuple, int, float, complex, str, bytes, bytearray, bool)
}


def check_dtype(dtype: Any) -> None:
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


def pad(n: int) -> int:
    return -n % ALIGN


ZEROS = bytes(ALIGN)
