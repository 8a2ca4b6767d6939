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

Modules, from the wire up: ``layout`` (magic numbers, limits, extension codes), ``carried``
(the type table), ``ref`` (``ObjectRef``), ``prepass`` (depth and boxing), ``arrow`` (IPC and
its size accounting), ``pack`` / ``encode`` (writing), ``unpack`` / ``decode`` (reading),
``culprit`` (naming what could not be encoded) and ``summary`` (one-line descriptions).
"""

from __future__ import annotations

from airflow_provider_knative.codec.carried import CARRIED, REFUSED, TypeRule, type_table_markdown
from airflow_provider_knative.codec.decode import loads, split_frame
from airflow_provider_knative.codec.encode import dumps, encode_chunks
from airflow_provider_knative.codec.layout import (
    ARROW_ALLOWANCE,
    ARROW_EXPANSION,
    DATAFRAME_BATCH_ROWS,
    MAGIC,
    MAX_DEPTH,
    TRAILER_MAGIC,
)
from airflow_provider_knative.codec.ref import ObjectRef
from airflow_provider_knative.codec.summary import summarize
from airflow_provider_knative.errors import CodecError

__all__ = [
    "ARROW_ALLOWANCE",
    "ARROW_EXPANSION",
    "CARRIED",
    "DATAFRAME_BATCH_ROWS",
    "MAGIC",
    "MAX_DEPTH",
    "REFUSED",
    "TRAILER_MAGIC",
    "CodecError",
    "ObjectRef",
    "TypeRule",
    "dumps",
    "encode_chunks",
    "loads",
    "split_frame",
    "summarize",
    "type_table_markdown",
]
