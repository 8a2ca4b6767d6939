"""A fork server: one process that imported the DAG folder once and forks a child per job.

Why: a task function (or a whole Airflow task, for the executor) should run in a process of
its own, as Airflow's own workers run tasks, so module globals, ``os.chdir``, signal handlers,
crashes and the GIL stay inside one call. Forking the HTTP server itself is unsafe (it has
threads and an event loop, and a lock held by another thread at fork time stays locked in the
child forever), and spawning a fresh interpreter per call costs the whole Airflow import
(about a second). So a separate, single-threaded process imports Airflow and the DAG folder
once and forks a child for every job: the child starts with everything imported, in a few
milliseconds, and exits when its job is done.

The server talks to it over a UNIX socket pair with length-prefixed msgpack messages:

* server -> fork server: ``["run", job, kind, payload]``, ``["kill", job, signal]``;
* fork server -> server: ``["ready", info]`` once, ``["msg", job, data]`` for whatever the
  child emits (in order), ``["exit", job, status]`` when the child is gone (``status`` as
  ``os.waitstatus_to_exitcode``: negative for a signal).

A child runs in its own process group (so killing a job kills what it started) and writes its
messages to a pipe the fork server relays. If the server dies, the fork server kills every
child and exits; if the fork server dies, every running job ends with an error.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import queue
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

_LEN = struct.Struct(">I")
#: a child message larger than this is refused (results are small; big ones are references)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

#: job kind -> "module:function" run in the child as ``function(payload, emit) -> None``
HANDLERS = {
    "invoke": "airflow_provider_knative.runtime.isolation:run_in_child",
    "workload": "airflow_provider_knative.runtime.workload:run_in_child",
}


def send_message(sock: socket.socket, message: Any) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    sock.sendall(_LEN.pack(len(data)) + data)


class _Reader:
    """Length-prefixed msgpack messages from a byte stream, fed as data arrives."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Any]:
        self._buffer += data
        while len(self._buffer) >= _LEN.size:
            (size,) = _LEN.unpack_from(self._buffer)
            if size > MAX_MESSAGE_BYTES:
                raise ValueError(f"message of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
            if len(self._buffer) < _LEN.size + size:
                return
            data_ = bytes(self._buffer[_LEN.size : _LEN.size + size])
            del self._buffer[: _LEN.size + size]
            yield msgpack.unpackb(data_, raw=False)


# ======================================================================================
# The server's side
# ======================================================================================


@dataclass
class Job:
    """One job in a child process: its messages arrive on ``events`` (``("msg", data)`` ...,
    then ``("exit", status)``)."""

    id: int
    kind: str
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    exit_status: int | None = None
    _server: ForkServer | None = None

    def kill(self, sig: int = signal.SIGKILL, *, target: str = "session") -> None:
        """Signal the job (no-op once it has exited): ``session``, every process it started;
        ``leader``, only its own process; ``others``, every process it started but itself."""
        if self.exit_status is None and self._server is not None:
            self._server.kill(self.id, sig, target=target)

    def messages(self, timeout: float | None = None) -> Iterator[Any]:
        """The child's messages in order, until it exits (``exit_status`` is set then)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                kind, value = self.events.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"job {self.id} sent nothing for {timeout} s") from None
            if kind == "exit":
                self.exit_status = value
                return
            yield value


class ForkServer:
    """The server's handle on the fork server process (see the module docstring)."""

    def __init__(
        self, dags_folder: str, *, env: dict[str, str] | None = None, workloads: bool = False
    ) -> None:
        self.dags_folder = dags_folder
        self.env = env
        self.workloads = workloads
        self.ready: dict[str, Any] | None = None
        self.alive = False
        self._ready = threading.Event()
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the fork server; it imports the DAG folder, then reports ``ready``."""
        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen(
            [
                *(sys.executable, "-m", __name__, "--dags-folder", self.dags_folder),
                *("--fd", str(theirs.fileno())),
                *(["--workloads"] if self.workloads else []),
            ],
            pass_fds=(theirs.fileno(),),
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._sock = ours
        self.alive = True
        threading.Thread(target=self._read, name="knative-forkserver-reader", daemon=True).start()

    def wait_ready(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The fork server's ``ready`` report (functions, import failures, timings), or None if it died."""
        self._ready.wait(timeout)
        return self.ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def submit(self, kind: str, payload: Any) -> Job:
        """Start a job in a fresh child; its messages arrive on the returned ``Job``."""
        job = Job(id=next(self._ids), kind=kind, _server=self)
        with self._lock:
            if not self.alive or self._sock is None:
                job.events.put(("exit", None))
                return job
            self._jobs[job.id] = job
            send_message(self._sock, ["run", job.id, kind, payload])
        return job

    def kill(self, job_id: int, sig: int, *, target: str = "session") -> None:
        """Signal a job (see :meth:`Job.kill`)."""
        with self._lock:
            if self.alive and self._sock is not None and job_id in self._jobs:
                send_message(self._sock, ["kill", job_id, int(sig), target])

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def close(self, timeout: float = 5.0) -> None:
        """Stop the fork server: it kills any child still running, then exits."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _read(self) -> None:
        reader = _Reader()
        sock = self._sock
        assert sock is not None
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                for message in reader.feed(data):
                    self._dispatch(message)
        except (OSError, ValueError):
            pass
        with self._lock:
            self.alive = False
            orphans, self._jobs = list(self._jobs.values()), {}
        for job in orphans:
            job.events.put(("exit", None))  # None: the fork server died under it
        self._ready.set()

    def _dispatch(self, message: list[Any]) -> None:
        tag = message[0]
        if tag == "ready":
            self.ready = message[1]
            self._ready.set()
            return
        with self._lock:
            job = self._jobs.get(message[1])
            if tag == "exit":
                self._jobs.pop(message[1], None)
        if job is None:
            return
        if tag == "msg":
            job.events.put(("msg", message[2]))
        elif tag == "exit":
            job.events.put(("exit", message[2]))


# ======================================================================================
# The fork server process
# ======================================================================================


@dataclass
class _Child:
    job: int
    pid: int
    pipe: int
    reader: _Reader = field(default_factory=_Reader)
    eof: bool = False
    status: int | None = None  # waitpid status once reaped


def _resolve(kind: str) -> Callable[[Any, Callable[[Any], None]], None]:
    import importlib

    module, _, name = HANDLERS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def _child(job: int, kind: str, payload: Any, write_fd: int, control: socket.socket) -> None:
    """In the forked child: run the job's handler, emit its messages, exit. Never returns."""
    code = 0
    try:
        control.close()
        os.setsid()  # a session of its own: killing the job's group kills what it started
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # nothing of the fork server's survives in the job but its pipe: other jobs' pipes,
        # sockets and the selector would otherwise stay open in every child
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, os.sysconf("SC_OPEN_MAX"))
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

        writing = threading.Lock()  # the job's threads (its live output's flusher) emit too

        def emit(data: Any) -> None:
            blob = msgpack.packb(data, use_bin_type=True)
            view = memoryview(_LEN.pack(len(blob)) + blob)
            with writing:
                while view:
                    view = view[os.write(write_fd, view) :]

        _resolve(kind)(payload, emit)
    except BaseException:  # the handler reports its own errors; this is a bug in it
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve_forks(control: socket.socket, functions_ready: dict[str, Any]) -> None:
    """The fork server's loop: fork on ``run``, relay children's messages, reap them."""
    # SIGCHLD wakes the loop at once (through the wakeup pipe), so a finished child is reaped
    # and reported without waiting for a poll interval
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # Everything imported so far (Airflow, the DAGs) lives as long as this process: moved out of
    # the collector's reach, a child's garbage collections no longer walk it, and so no longer
    # copy every page it sits on (what LocalExecutor does before it forks its workers).
    gc.freeze()
    send_message(control, ["ready", functions_ready])
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, None)
    selector.register(wake_read, selectors.EVENT_READ, "wake")
    children: dict[int, _Child] = {}  # by job id
    by_pid: dict[int, _Child] = {}
    reader = _Reader()
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.data == "wake":
                try:
                    while os.read(wake_read, 4096):
                        pass
                except BlockingIOError:
                    pass
            elif key.data is None:
                data = control.recv(1 << 20)
                if not data:  # the server is gone: so are its jobs
                    for child in children.values():
                        _signal_job(child.pid, signal.SIGKILL, "session")
                    return
                for message in reader.feed(data):
                    if message[0] == "run":
                        _, job, kind, payload = message
                        read_fd, write_fd = os.pipe()
                        pid = os.fork()
                        if pid == 0:
                            os.close(read_fd)
                            selector.close()
                            signal.set_wakeup_fd(-1)
                            os.close(wake_read)
                            os.close(wake_write)
                            _child(job, kind, payload, write_fd, control)
                        os.close(write_fd)
                        children[job] = by_pid[pid] = _Child(job, pid, read_fd)
                        selector.register(read_fd, selectors.EVENT_READ, job)
                    elif message[0] == "kill" and message[1] in children:
                        _signal_job(children[message[1]].pid, message[2], message[3])
            else:
                child = children[key.data]
                chunk = os.read(child.pipe, 1 << 20)
                if chunk:
                    for item in child.reader.feed(chunk):
                        send_message(control, ["msg", child.job, item])
                else:
                    selector.unregister(child.pipe)
                    os.close(child.pipe)
                    child.eof = True
        _reap(by_pid)
        for job, child in list(children.items()):
            if child.eof and child.status is not None:
                _signal_job(child.pid, signal.SIGKILL, "session")  # whatever the job left behind
                del children[job]
                del by_pid[child.pid]
                send_message(control, ["exit", job, os.waitstatus_to_exitcode(child.status)])


def _reap(by_pid: dict[int, _Child]) -> None:
    """Collect every exited child (ours, or one a job started and left to us)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        child = by_pid.get(pid)
        if child is not None:
            child.status = status


def _session_members(sid: int) -> list[int]:
    """Every live process in session ``sid`` (a job's child leads its own session): the
    supervisor puts the task in a process group of its own, so a group is not enough."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session ...
            members.append(int(entry))
    return members


def _signal_job(leader: int, sig: int, target: str) -> None:
    """Signal a job's ``leader`` process, the ``others`` in its session, or its whole ``session``."""
    pids = [leader] if target == "leader" else _session_members(leader)
    if target == "others":
        pids = [pid for pid in pids if pid != leader]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_knative.runtime.forkserver")
    parser.add_argument("--dags-folder", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--workloads", action="store_true", help="pre-import what Airflow tasks need")
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.fd)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the server decides when jobs stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from airflow_provider_knative.runtime import loader, logs

    logs.install()
    started = time.time()
    if args.workloads:
        # Airflow tasks run here: Airflow initialises as in its own workers (plugins, settings),
        # without a database connection, which a task never needs (it has the Execution API)
        os.environ.pop("_AIRFLOW__AS_LIBRARY", None)
        os.environ["_AIRFLOW__REEXECUTED_PROCESS"] = "1"
    else:
        os.environ.setdefault("_AIRFLOW__AS_LIBRARY", "1")  # a library user: no settings.initialize()
    registry = loader.load(args.dags_folder)
    if args.workloads:
        from airflow_provider_knative.runtime import workload

        workload.preimport()
    import_seconds = time.time() - started
    loader.set_current(registry)
    for kind in HANDLERS:  # imported here once, not in every child
        _resolve(kind)
    from airflow_provider_knative.runtime import claims

    claims.warm()
    info = {
        "functions": [
            {
                "id": f.function_id,
                "source_hash": f.source_hash,
                "dag_id": f.dag_id,
                "task_id": f.task_id,
                "fileloc": f.fileloc,
            }
            for f in registry.functions.values()
        ],
        "failures": [{"path": f.path, "error": f.error, "traceback": f.traceback} for f in registry.failures],
        "files": registry.files,
        "import_s": round(import_seconds, 3),
        "pid": os.getpid(),
    }
    serve_forks(control, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
