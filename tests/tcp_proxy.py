"""A small TCP proxy on 127.0.0.1 that can cut one HTTP response mid-body.

It forwards bytes both ways, one thread per direction, and records every request head it
forwards (so a test can read the headers a client really sent). ``cut_range_start=N``: the
first response to a request carrying ``Range: bytes=N-...`` is forwarded up to its headers
plus ``cut_after`` body bytes, then both sockets are closed, as when a connection breaks in
the middle of a download. Later requests with that range pass untouched. ``cut_every_range``
cuts every ranged response instead (a download that can never finish).
"""

from __future__ import annotations

import re
import socket
import threading
from urllib.parse import urlsplit

_RANGE = re.compile(rb"\r\nrange:\s*bytes=(\d+)-", re.IGNORECASE)


class CuttingProxy:
    def __init__(
        self,
        target: str,
        *,
        cut_range_start: int | None = None,
        cut_after: int = 0,
        cut_every_range: bool = False,
    ) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.cut_range_start = cut_range_start
        self.cut_after = cut_after
        self.cut_every_range = cut_every_range
        self.cuts = 0
        self.heads: list[bytes] = []  # every request head seen (up to the blank line)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = False
        self._sockets: list[socket.socket] = []
        self._accept = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self._accept.start()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            armed = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, armed), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, armed), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, armed: threading.Event) -> None:
        buffered = b""
        try:
            while data := client.recv(65536):
                buffered += data
                while b"\r\n\r\n" in buffered:
                    head, _, buffered = buffered.partition(b"\r\n\r\n")
                    with self._lock:
                        self.heads.append(head)
                        match = _RANGE.search(head)
                        first = (
                            match is not None
                            and self.cut_range_start is not None
                            and int(match.group(1)) == self.cut_range_start
                            and self.cuts == 0
                        )
                        if first or (match is not None and self.cut_every_range):
                            self.cuts += 1
                            armed.set()
                    buffered = b""  # GET bodies are empty; uploads are never inspected past the head
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

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
                    _close(client)
                    _close(upstream)
                    return
        except OSError:
            pass
        finally:
            _close(client)

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
