"""uvicorn's httptools protocol with the limits it lacks: deadlines for the head and the body,
and a header count.

uvicorn times out idle keep-alive connections but not a request whose headers never finish:
a client that opens a connection and sends one header line a minute (slowloris) holds it
forever, and enough of them exhaust the pod; the same with a body sent a byte at a time. It
also accepts any number of headers that fit in its size limit (2,000 short ones do).
Knative's queue-proxy shields the pod from most of this in a cluster; the runtime does not
rely on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: seconds a client has, from connecting (or from the end of its previous response), to send
#: a whole request head
HEADER_TIMEOUT_SECONDS = 10.0
#: more header lines than this are refused with 431 (a real client sends about ten)
MAX_HEADERS = 100
#: a body must arrive within this many seconds plus one second per MiB it declares
BODY_TIMEOUT_SECONDS = 30.0


def _plain_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` plus :data:`HEADER_TIMEOUT_SECONDS` and :data:`MAX_HEADERS`."""

    header_timeout = HEADER_TIMEOUT_SECONDS
    max_headers = MAX_HEADERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._header_count = 0
        self._refused = False

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, reason: str, text: str) -> None:
        self._disarm()
        self._refused = True
        if not self.transport.is_closing():
            self.transport.write(_plain_response(status, reason, text))
            self.transport.close()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(
                408, "Request Timeout", f"request head not received within {self.header_timeout:g} s"
            )

    def _body_too_slow(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(408, "Request Timeout", "request body not received in time")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        if self._head_timer is None:
            self._arm()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count <= self.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._header_count > self.max_headers:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                f"{self._header_count} header lines; this runtime accepts at most {self.max_headers}",
            )
            return
        super().on_headers_complete()
        declared = dict(self.headers).get(b"content-length", b"0")
        if declared.isdigit() and int(declared):
            seconds = BODY_TIMEOUT_SECONDS + int(declared) / (1024 * 1024)
            self._head_timer = self.loop.call_later(seconds, self._body_too_slow)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request head must arrive in time too
