"""A small TCP proxy on 127.0.0.1 for fault tests: subclasses decide what to do per request.

Tests put it between a client and a real runtime to break connections at chosen moments,
answer like a cold Knative activator, or record requests to replay them. ``CuttingProxy``
relays keep-alive connections (boto3's) byte for byte and cuts one download mid-body.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from urllib.parse import urlsplit


def read_message(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """One HTTP message (head, body by Content-Length) from ``sock``; None if it closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None if not data else (data, b"")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def close_after(head: bytes) -> bytes:
    """A request head that asks the server to close the connection after answering it."""
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"])


class TcpProxy:
    """Accepts on a free 127.0.0.1 port; each request goes to :meth:`handle` (default: relay)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            message = read_message(client)
            if message is not None:
                self.handle(client, *message)

    def upstream(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.target_port))

    def handle(self, client: socket.socket, head: bytes, body: bytes) -> None:
        """Relay the request and stream the answer back, whatever its length (event streams too).

        One request per connection: the request goes upstream with ``Connection: close``, so the
        answer ends when the upstream closes, and so does the client's connection (a client that
        keeps connections alive opens a new one for its next request).
        """
        with self.upstream() as upstream:
            upstream.sendall(close_after(head) + b"\r\n\r\n" + body)
            while chunk := upstream.recv(65536):
                client.sendall(chunk)

    def close(self) -> None:
        self._stop.set()
        self.server.close()


class RelayProxy(TcpProxy):
    """A relay to the runtime. For ``cold_seconds`` after its first connection it answers 503
    (as Knative's activator can while a revision scales from zero); it records every request
    it relays."""

    def __init__(self, target_port: int, cold_seconds: float = 0.0) -> None:
        super().__init__(target_port)
        self.cold_seconds = cold_seconds
        self.first: float | None = None
        self.refused = 0
        self.requests: list[bytes] = []

    def handle(self, client: socket.socket, head: bytes, body: bytes) -> None:
        now = time.monotonic()
        self.first = self.first or now
        if now - self.first < self.cold_seconds:
            self.refused += 1
            client.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 19\r\n"
                b"connection: close\r\n\r\nno healthy upstream"
            )
            return
        self.requests.append(head + b"\r\n\r\n" + body)
        super().handle(client, head, body)


_RANGE = re.compile(rb"\r\nrange:\s*bytes=(\d+)-", re.IGNORECASE)


class CuttingProxy(TcpProxy):
    """Forwards bytes both ways over keep-alive connections and can cut one HTTP response mid-body.

    It records every request head it forwards (``heads``: a test reads the headers a client
    really sent). ``cut_range_start=N``: the first response to a request carrying
    ``Range: bytes=N-...`` is forwarded up to its headers plus ``cut_after`` body bytes, then both
    sockets are closed, as when a connection breaks in the middle of a download; later requests
    pass untouched. ``cut_every_range`` cuts every ranged response (a download that never ends).
    """

    def __init__(
        self,
        target: str,
        *,
        cut_range_start: int | None = None,
        cut_after: int = 0,
        cut_every_range: bool = False,
    ) -> None:
        self.cut_range_start = cut_range_start
        self.cut_after = cut_after
        self.cut_every_range = cut_every_range
        self.cuts = 0
        self.heads: list[bytes] = []
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        super().__init__(urlsplit(target).port or 80)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self.upstream()
        except OSError:
            client.close()
            return
        with self._lock:
            self._open += [client, upstream]
        armed = threading.Event()
        threading.Thread(target=self._requests, args=(client, upstream, armed), daemon=True).start()
        self._responses(upstream, client, armed)

    def _requests(self, client: socket.socket, upstream: socket.socket, armed: threading.Event) -> None:
        pending = b""
        try:
            while data := client.recv(65536):
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    self._saw(head, armed)
                    pending = b""  # request bodies are never inspected
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            close_socket(upstream)

    def _saw(self, head: bytes, armed: threading.Event) -> None:
        with self._lock:
            self.heads.append(head)
            match = _RANGE.search(head)
            if match is None:
                return
            first = self.cut_range_start == int(match.group(1)) and self.cuts == 0
            if first or self.cut_every_range:
                self.cuts += 1
                armed.set()

    def _responses(self, upstream: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        pending = b""  # bytes of the armed response whose head is not complete yet
        head_sent = False
        body_sent = 0
        try:
            while data := upstream.recv(65536):
                if not armed.is_set():
                    client.sendall(data)
                    continue
                if not head_sent:
                    pending += data
                    if b"\r\n\r\n" not in pending:
                        continue
                    head, _, data = pending.partition(b"\r\n\r\n")
                    client.sendall(head + b"\r\n\r\n")
                    head_sent = True
                piece = data[: self.cut_after - body_sent]
                client.sendall(piece)
                body_sent += len(piece)
                if body_sent >= self.cut_after:
                    return
        except OSError:
            pass
        finally:
            close_socket(client)
            close_socket(upstream)

    def close(self) -> None:
        super().close()
        with self._lock:
            for sock in self._open:
                close_socket(sock)

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
