"""Per-invocation log capture that stays correct when many calls run at once.

Why not ``contextlib.redirect_stdout``: it swaps a process-wide global, so two concurrent
calls would write into each other's buffers. Instead ``sys.stdout``/``sys.stderr`` are
replaced once by proxies and a handler is added to the root logger; both look up the
capture of the *current* call in a :class:`contextvars.ContextVar`, which each worker
thread sets for the call it runs. Output with no capture (the server's own logs) goes to
the real streams unchanged. Captured output is also echoed to the real stream, so
``kubectl logs`` still shows it.

Limit: threads that the user function starts itself do not inherit the context, so their
prints reach the pod log but not the task log.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

_current: contextvars.ContextVar[LogCapture | None] = contextvars.ContextVar("knative_log", default=None)


class LogCapture:
    """Text of one invocation, at most ``max_bytes``: the head and the tail, with a cut marker.

    Keeping both ends matters: the start says what the function was doing, the end holds the
    last messages before a failure.
    """

    def __init__(self, max_bytes: int, listener: Callable[[str], None] | None = None) -> None:
        self.max_bytes = max(0, max_bytes)
        #: sees every piece as it is written (the call's live output: ``livelog.Journal``)
        self.listener = listener
        self._head_limit = self.max_bytes // 2
        self._tail_limit = self.max_bytes - self._head_limit
        self._head: list[str] = []
        self._head_bytes = 0
        self._tail: deque[str] = deque()
        self._tail_bytes = 0
        self._cut_bytes = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        if not text:
            return
        if self.listener is not None:
            self.listener(text)
        data_len = len(text.encode("utf-8", "replace"))
        with self._lock:
            if self._tail_bytes == 0 and self._head_bytes + data_len <= self._head_limit:
                self._head.append(text)
                self._head_bytes += data_len
                return
            self._tail.append(text)
            self._tail_bytes += data_len
            while self._tail and self._tail_bytes > self._tail_limit:
                dropped = self._tail.popleft()
                dropped_len = len(dropped.encode("utf-8", "replace"))
                over = self._tail_bytes - self._tail_limit
                if dropped_len > over:  # keep the end of a long piece
                    kept = dropped.encode("utf-8", "replace")[over:].decode("utf-8", "ignore")
                    self._tail.appendleft(kept)
                    self._tail_bytes -= over
                    self._cut_bytes += over
                else:
                    self._tail_bytes -= dropped_len
                    self._cut_bytes += dropped_len

    @property
    def truncated(self) -> bool:
        return self._cut_bytes > 0

    def text(self) -> str:
        with self._lock:
            head = "".join(self._head)
            tail = "".join(self._tail)
            if not self._cut_bytes:
                return head + tail
            if head and not head.endswith("\n"):
                head += "\n"
            marker = (
                f"[... {self._cut_bytes} bytes of log cut by the Knative runtime "
                f"([knative] log_max_bytes = {self.max_bytes}) ...]\n"
            )
            return head + marker + tail


class _StreamProxy:
    """Stands in for sys.stdout/sys.stderr: routes writes to the current call's capture."""

    def __init__(self, real: TextIO) -> None:
        self._real = real

    def write(self, text: str) -> int:
        capture = _current.get()
        if capture is not None:
            capture.write(text)
        return self._real.write(text)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer, ...
        return getattr(self._real, name)


class _CaptureHandler(logging.Handler):
    """Root-logger handler that copies records of the current call into its capture."""

    def emit(self, record: logging.LogRecord) -> None:
        capture = _current.get()
        if capture is None:
            return
        try:
            capture.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_installed = False
_install_lock = threading.Lock()


def install(level: int = logging.INFO) -> None:
    """Replace sys.stdout/stderr by routing proxies and hook the root logger (once per process).

    The root logger gets a handler writing to the *real* stderr so the runtime's own
    messages are not captured twice, and level INFO so ``logging.info`` in a task function
    shows up as it would in an Airflow task log.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        real_err = sys.stderr
        sys.stdout = _StreamProxy(sys.stdout)  # type: ignore[assignment]
        sys.stderr = _StreamProxy(real_err)  # type: ignore[assignment]
        root = logging.getLogger()
        fmt = logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s")
        if not root.handlers:
            console = logging.StreamHandler(real_err)
            console.setFormatter(fmt)
            root.addHandler(console)
        capture = _CaptureHandler()
        capture.setFormatter(fmt)
        root.addHandler(capture)
        if root.level == logging.NOTSET or root.level > level:
            root.setLevel(level)
        _installed = True


def start(
    max_bytes: int, listener: Callable[[str], None] | None = None
) -> tuple[LogCapture, contextvars.Token[LogCapture | None]]:
    """Begin capturing for the calling context (a worker thread running one invocation)."""
    capture = LogCapture(max_bytes, listener)
    return capture, _current.set(capture)


def stop(token: contextvars.Token[LogCapture | None]) -> None:
    _current.reset(token)
