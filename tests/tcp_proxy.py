"""A small TCP proxy on 127.0.0.1 for fault tests: subclasses decide what to do per request.

Tests put it between a client and a real runtime to break connections at chosen moments,
answer like a cold Knative activator, or record requests to replay them.
"""

from __future__ import annotations

import socket
import threading


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
        """Relay the request and stream the answer back, whatever its length (event streams too)."""
        with self.upstream() as upstream:
            upstream.sendall(head + b"\r\n\r\n" + body)
            while chunk := upstream.recv(65536):
                client.sendall(chunk)

    def close(self) -> None:
        self._stop.set()
        self.server.close()
