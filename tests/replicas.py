"""Several runtime processes behind a balancer with no affinity: a Knative Service, as tests see it.

Knative's activator and queue-proxy spread requests over a Service's pods with no affinity, and
any pod may be scaled away. Here a Service is ``Replicas``: N real ``airflow-knative serve``
processes on loopback ports sharing one DAG folder and one store, behind a ``Balancer``: a TCP
proxy on 127.0.0.1 that sends each connection to a replica picked at random, one request per
connection (it adds ``Connection: close``, so a retry, a status query or a re-attach lands on
a random pod, as in a cluster), and that can cut a connection after the request was delivered
(the replica keeps running it; the client never hears back) or in the middle of an answer.

Stable API::

    with Replicas(dags_folder, count=3, env={...}) as service:   # all ready
        service.url                       # the balancer, http://127.0.0.1:<port>
        service.balancer.cut = lambda head: "request" if random() < 0.3 else None
        service.kill(i); service.restart(i); service.terminate(i)
        service.replicas[i].url           # one replica directly
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from runtime_process import RuntimeProcess, start_runtime
from servers import free_port
from tcp_proxy import TcpProxy, close_after, close_socket, read_message

#: what to do with one request: None (relay it), "request" (deliver it, then cut the client's
#: connection before any answer), "answer" (relay the answer's head and part of its body, then
#: cut), ("lines", n) (relay the head and n lines of a streamed answer, then cut), or
#: ("after", s) (relay for s seconds, then cut: a stream broken mid-call)
Cut = Callable[[bytes], Any]


class Balancer(TcpProxy):
    """A TCP balancer on 127.0.0.1 with no affinity (see the module docstring)."""

    def __init__(self, ports: Callable[[], list[int]], *, seed: int = 0) -> None:
        self.ports = ports
        self.cut: Cut = lambda head: None
        self.rng = random.Random(seed)
        self.cuts = 0
        #: (request line, replica port) of every request relayed, in order
        self.routed: list[tuple[bytes, int]] = []
        #: the bodies of the requests whose head ``keep`` accepts (to send them again)
        self.keep: Callable[[bytes], bool] = lambda head: False
        self.kept: list[bytes] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        super().__init__(target_port=0)  # no one target: each connection picks a replica

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.update(socks)

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        try:
            message = read_message(client)
            if message is None:
                return
            head, body = message
            head = close_after(head)
            with self._lock:
                port = self.rng.choice(self.ports())
                self.routed.append((head.split(b"\r\n", 1)[0], port))
                if self.keep(head):
                    self.kept.append(body)
                action = self.cut(head)
                if action is not None:
                    self.cuts += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                return  # the replica is down: the client sees its connection closed, unanswered
            upstream.settimeout(None)
            self._track(upstream)
            upstream.sendall(head + b"\r\n\r\n" + body)
            if action == "request":
                close_socket(client)  # delivered; the client never hears back
                self._drain(upstream)
                return
            self._relay(upstream, client, action)
        except OSError:
            pass
        finally:
            close_socket(client)

    @staticmethod
    def _drain(upstream: socket.socket) -> None:
        """Read the answer nobody will get, so the replica is not disturbed by a closed socket."""
        try:
            while upstream.recv(65536):
                pass
        except OSError:
            pass
        finally:
            close_socket(upstream)

    def _relay(self, upstream: socket.socket, client: socket.socket, action: Any) -> None:
        sent = b""
        if isinstance(action, tuple) and action[0] == "after":
            deadline = time.monotonic() + action[1]
            try:
                while (remaining := deadline - time.monotonic()) > 0:
                    upstream.settimeout(remaining)
                    chunk = upstream.recv(65536)
                    if not chunk:
                        break
                    client.sendall(chunk)
            except OSError:  # time is up (a timeout is an OSError): cut mid-answer, below
                pass
            finally:
                close_socket(client)
                upstream.settimeout(None)
                threading.Thread(target=self._drain, args=(upstream,), daemon=True).start()
            return
        try:
            while chunk := upstream.recv(65536):
                if action is None:
                    client.sendall(chunk)
                    continue
                sent += chunk
                if b"\r\n\r\n" not in sent:
                    continue
                head, _, rest = sent.partition(b"\r\n\r\n")
                if action == "answer":
                    client.sendall(head + b"\r\n\r\n" + rest[: max(1, len(rest) // 2)])
                    break
                if isinstance(action, tuple) and action[0] == "lines":
                    # an event stream is chunked: each line ends its chunk with "\n\r\n"
                    end = b"\n\r\n" if b"chunked" in head.lower() else b"\n"
                    if rest.count(end) >= action[1]:
                        keep = end.join(rest.split(end)[: action[1]]) + end
                        client.sendall(head + b"\r\n\r\n" + keep)
                        break
        except OSError:
            pass
        finally:
            close_socket(client)
            threading.Thread(target=self._drain, args=(upstream,), daemon=True).start()

    def close(self) -> None:
        super().close()
        with self._lock:
            for sock in list(self._open):
                try:
                    sock.close()
                except OSError:
                    pass


class Replicas:
    """``count`` runtimes serving ``dags_folder`` behind a :class:`Balancer` (module docstring)."""

    def __init__(
        self,
        dags_folder: Path,
        count: int = 3,
        env: Mapping[str, str] | None = None,
        *,
        seed: int = 0,
        timeout: float = 90.0,
    ) -> None:
        self.dags_folder = dags_folder
        self.env = dict(env or {})
        self.ports = [free_port() for _ in range(count)]
        self.timeout = timeout
        self.replicas: list[RuntimeProcess | None] = [None] * count
        self.stopped: list[RuntimeProcess] = []
        self.balancer = Balancer(self.live_ports, seed=seed)
        self.url = self.balancer.url

    def live_ports(self) -> list[int]:
        up = [p for p, rt in zip(self.ports, self.replicas, strict=True) if rt is not None]
        return up or self.ports  # all down: connections are refused, as by a Service at zero

    def start(self, index: int | None = None) -> None:
        """Start every replica (in parallel: each imports Airflow), or only replica ``index``."""
        indexes = range(len(self.ports)) if index is None else [index]
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                self.replicas[i] = start_runtime(
                    self.dags_folder, env=self.env, port=self.ports[i], timeout=self.timeout
                )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in indexes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def runtime(self, index: int) -> RuntimeProcess:
        rt = self.replicas[index]
        assert rt is not None, f"replica {index} is not running"
        return rt

    def kill(self, index: int) -> None:
        """SIGKILL: the pod is gone at once (evicted, OOM-killed, node lost)."""
        rt = self.runtime(index)
        rt.proc.kill()
        rt.proc.wait()
        self.replicas[index] = None
        self.stopped.append(rt)

    def terminate(self, index: int) -> int:
        """SIGTERM and wait: scale-down (the replica drains, records, exits); its exit code."""
        rt = self.runtime(index)
        self.replicas[index] = None
        code = rt.stop()
        self.stopped.append(rt)
        return code

    def restart(self, index: int) -> None:
        """A new pod in place of replica ``index`` (same port: the balancer finds it again)."""
        if self.replicas[index] is not None:
            self.kill(index)
        self.start(index)

    def outputs(self) -> str:
        """Every replica's output so far, for failure messages."""
        everyone = [rt for rt in self.replicas if rt is not None] + self.stopped
        return "\n".join(f"---- replica :{rt.port} ----\n{rt.output()[-4000:]}" for rt in everyone)

    def close(self) -> None:
        self.balancer.close()
        for i, rt in enumerate(self.replicas):
            if rt is not None:
                rt.stop()
                self.replicas[i] = None

    def __enter__(self) -> Replicas:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
