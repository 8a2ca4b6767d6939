"""Answers as frames: a call's output while it runs, then its answer (``protocol.FRAMES_CONTENT_TYPE``).

Three sources, one wire format:

- :func:`follow_live`: a call this replica runs (or ran): its ``LiveLog`` in memory, until the
  call's outcome is known;
- :func:`follow_record`: a call another replica runs: its output pieces and outcome in the
  record (``aN.log.<offset>``, ``aN.outcome``), read from the store as they appear;
- both start at the byte a client asks for (``from``), so a client that re-attaches after a
  broken stream sees every piece of output once, on whichever replica it lands.

The last frame carries the answer a client without streaming gets, minus the logs it already
streamed (``Result.logs`` is left out: the frames had them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow_provider_knative import codec, protocol, records
from airflow_provider_knative.errors import StoreError
from airflow_provider_knative.runtime.livelog import LiveLog

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
#: (status, body, error) of the call's answer
Answer = tuple[int, bytes, str]

#: how often a follower looks at the record of a call another replica runs
RECORD_POLL_SECONDS = 0.5
#: a call running here that has printed nothing gets its frames response started after this
#: long: Knative's queue-proxy and activator wait for a response's first byte only so long
#: (``responseStartTimeoutSeconds``), and a silent quick call is cheaper answered plainly
QUIET_SECONDS = 10.0
#: a call that ends within this long is answered plainly without looking at its output at all
QUICK_SECONDS = 0.05


def accepts_frames(headers: dict[str, str]) -> bool:
    """Whether the client asked for the call's output as it happens."""
    return protocol.FRAMES_CONTENT_TYPE in headers.get("accept", "")


async def start(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", protocol.FRAMES_CONTENT_TYPE.encode())],
        }
    )


async def _piece(send: Send, text: str, at: int) -> None:
    await send({"type": "http.response.body", "body": protocol.log_frame(text, at), "more_body": True})


async def finish(send: Send, answer: Answer) -> None:
    """The last frame, and the end of the response."""
    status, body, error = answer
    await send({"type": "http.response.body", "body": protocol.end_frame(status, without_logs(body), error)})


def without_logs(body: bytes) -> bytes:
    """A Result without its logs (a streaming client has them already)."""
    try:
        result = protocol.Result.decode(body)
    except (codec.CodecError, protocol.ProtocolError):
        return body
    if not result.logs:
        return body
    result.logs = ""
    return result.encode()


def _cut(text: str, at: int, offset: int) -> tuple[str, int]:
    """The part of a piece of output at ``at`` that comes from byte ``offset`` on."""
    if at >= offset:
        return text, at
    data = text.encode("utf-8", "replace")[offset - at :]
    return data.decode("utf-8", "ignore"), offset


async def follow_live(send: Send, live: LiveLog, answer: Awaitable[Answer], offset: int = 0) -> None:
    """Frames of a call running here: its output from ``offset`` until ``answer`` is known.

    Output reaches the LiveLog before the answer does (both are queued to the event loop in
    the order they happened), so once the answer is known the output is complete.
    """
    pending = asyncio.ensure_future(answer)
    await start(send)
    try:
        while True:
            for at, text in live.since(offset):
                await _piece(send, text, at)
                offset = at + len(text.encode("utf-8", "replace"))
            if pending.done():
                break
            changed = asyncio.ensure_future(live.changed.wait())
            await asyncio.wait({changed, pending}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
        await finish(send, pending.result())
    finally:
        pending.cancel()


async def follow_record(
    send: Send, book: records.Records, call: str, attempt: int, offset: int = 0, *, void: bool = False
) -> None:
    """Frames of a call another replica runs, from its record: output from ``offset``, then the
    outcome. Pieces are read in order from the first (a client's offset may fall inside one)."""
    await start(send)
    position = 0  # the next piece in the store starts here
    while True:
        try:
            data = await asyncio.to_thread(book.read_log, call, attempt, position)
            if data is not None:
                text, at = _cut(data.decode("utf-8", "replace"), position, offset)
                position += len(data)
                if position > offset and text:
                    await _piece(send, text, at)
                    offset = position
                continue
            state = await asyncio.to_thread(book.state, call, attempt, void=void)
        except StoreError as exc:
            await finish(send, records.unreadable(call, book.where, exc))
            return
        if isinstance(state, records.Finished):
            # the owner wrote its last piece before the outcome: one more look finds it
            if await asyncio.to_thread(book.read_log, call, state.attempt, position) is None:
                await finish(send, (state.status, state.body, state.error))
                return
            attempt = state.attempt
            continue
        if isinstance(state, records.NotStarted):
            await finish(send, records.not_started(call, state))
            return
        if state.claim.attempt != attempt:  # the call runs as a later attempt: follow that one
            attempt, position = state.claim.attempt, 0
            continue
        await asyncio.sleep(RECORD_POLL_SECONDS)
