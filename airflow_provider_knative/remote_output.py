"""A remote function's output in the Airflow task log: fenced, line by line, as it arrives.

The runtime streams what the function prints while it runs (``LogFollower`` hands each piece
on once). Pieces are not lines: this joins them into lines and logs each complete one at once,
so the task log (worker or triggerer) shows the function's progress within moments, inside a
fence that keeps it apart from the operator's own messages::

    ---- remote logs (avg-worker) ----
    ...the function's lines...
    ---- end of remote logs ----
"""

from __future__ import annotations

import threading
from typing import Any

REMOTE_LOG_END = "---- end of remote logs ----"


def opening(where: str, note: str = "") -> str:
    return f"---- remote logs ({where}){note} ----"


class RemoteOutput:
    """Logs a remote call's output to ``log`` line by line, fenced (see the module docstring)."""

    def __init__(self, log: Any, where: str) -> None:
        """``log``: the task's logger (Airflow's structlog logger, or a ``logging`` one)."""
        self.log = log
        self.where = where
        self.opened = False
        self._partial = ""
        self._lock = threading.Lock()  # on_kill may close it from the signal handler's frame

    def __call__(self, text: str) -> None:
        """A piece of the function's output (any size, not cut at lines)."""
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                self._line(line)

    def _line(self, line: str) -> None:
        if not self.opened:
            self.log.info("%s", opening(self.where, ", as it runs"))
            self.opened = True
        self.log.info("%s", line)

    def close(self) -> None:
        """The call ended: the last partial line, and the closing fence if anything was shown."""
        with self._lock:
            if self._partial:
                self._line(self._partial)
                self._partial = ""
            if self.opened:
                self.log.info("%s", REMOTE_LOG_END)
                self.opened = False
