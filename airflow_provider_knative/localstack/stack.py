"""A real Airflow 3 deployment on one machine: the embedded stack behind ``local-stack``.

api-server (with the gateway plugin), scheduler (LocalExecutor), dag-processor, triggerer
and one Knative runtime (``airflow-knative serve``) — each a separate process in its own
process group on a free 127.0.0.1 port, configured only through an explicit environment
(nothing leaks in from the caller's ``AIRFLOW_*`` variables). SQLite and the ``file://``
store by default; the end-to-end tests pass a PostgreSQL URL and S3 settings instead.

``stop()`` terminates each process group (SIGTERM, then SIGKILL after a grace period), so
task processes forked by the LocalExecutor go with the scheduler: no orphans.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from airflow_provider_knative.localstack.client import StackClient, StackError

USERS = {"admin": "admin", "viewer": "viewer"}  # user -> simple auth manager role
COMPONENTS = ("scheduler", "dag-processor", "triggerer")
HEALTH_TIMEOUT_SECONDS = 180.0


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens on it, else any free port on 127.0.0.1."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: how the local stack names the KnativeExecutor in [core] executor (tasks opt in with executor="knative")
KNATIVE_EXECUTOR = "knative:airflow_provider_knative.executors.KnativeExecutor"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalStack:
    """One deployment. ``start()`` returns once every component is healthy and DAGs are parsed."""

    state_dir: Path
    dags_folder: Path
    api_port: int | None = None
    db_url: str | None = None  # default: SQLite in state_dir
    extra_env: Mapping[str, str] = field(default_factory=dict)
    wait_for_dags: tuple[str, ...] = ()
    #: "local": LocalExecutor runs every task; "knative": the KnativeExecutor runs every task that
    #: does not ask for another executor (executor="LocalExecutor"), in the runtime
    executor: str = "local"
    #: environment only the runtime process gets (after ``extra_env``)
    runtime_env: Mapping[str, str] = field(default_factory=dict)
    #: the DAG folder baked into the runtime's "image" (default: the same as Airflow's)
    runtime_dags_folder: Path | None = None
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.dags_folder = Path(self.dags_folder).resolve()
        self.runtime_dags_folder = Path(self.runtime_dags_folder or self.dags_folder).resolve()
        self.home = self.state_dir / "airflow"
        self.api_port = free_port(self.api_port)
        self.runtime_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.runtime_url = f"http://127.0.0.1:{self.runtime_port}"
        self.passwords = self._passwords()
        self.env = self._environment()

    # --- configuration ---------------------------------------------------------------------
    def _passwords(self) -> dict[str, str]:
        """Fixed per state folder, so the printed password keeps working across restarts."""
        path = self.state_dir / "passwords.json"
        self.home.mkdir(parents=True, exist_ok=True)
        known = json.loads(path.read_text()) if path.exists() else {}
        passwords = {user: known.get(user) or secrets.token_urlsafe(12) for user in USERS}
        path.write_text(json.dumps(passwords))
        path.chmod(0o600)
        return passwords

    def _environment(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        keep = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME")
        env = {k: v for k, v in os.environ.items() if k in keep}
        db = self.db_url or f"sqlite:///{self.state_dir / 'airflow.db'}"
        env.update(
            {
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                "PYTHONUNBUFFERED": "1",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "16",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
                "AIRFLOW__CORE__XCOM_BACKEND": "airflow_provider_knative.xcom.KnativeXComBackend",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.state_dir / "passwords.json"),
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
                "AIRFLOW__KNATIVE__XCOM_STORE_URL": (self.state_dir / "store").as_uri(),
                "AIRFLOW__KNATIVE__URL_TEMPLATE": self.runtime_url,
            }
        )
        if self.executor == "knative":
            env.update(
                {
                    "AIRFLOW__CORE__EXECUTOR": f"{KNATIVE_EXECUTOR},LocalExecutor",
                    "AIRFLOW__KNATIVE__WORKLOADS": "true",
                    # no shared disk between Airflow and the runtime: task logs go through the store
                    "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS": "airflow_provider_knative.log_config.LOGGING_CONFIG",
                    "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": "knative+"
                    + (self.state_dir / "task-logs").as_uri(),
                }
            )
        elif self.executor != "local":
            raise StackError(f"executor must be 'local' or 'knative', got {self.executor!r}")
        env.update(self.extra_env)
        return env

    # --- lifecycle -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Process:
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log_file = open(log_path, "ab")
        popen = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            cwd=self.state_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() kills it with its children
        )
        process = Process(name, popen, log_path, log_file)
        self.processes.append(process)
        return process

    def migrate(self) -> None:
        result = subprocess.run(
            ["airflow", "db", "migrate"], env=self.env, cwd=self.state_dir, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{(result.stdout + result.stderr)[-3000:]}")

    def start(self) -> None:
        """Migrate the DB, start every component, wait until healthy; stops all on failure."""
        try:
            self.migrate()
            self._spawn(
                "api-server", ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)]
            )
            for name in COMPONENTS:
                self._spawn(name, ["airflow", name])
            self.start_runtime()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def start_runtime(
        self, name: str = "runtime", port: int | None = None, env: Mapping[str, str] | None = None
    ) -> Process:
        """A runtime (``airflow-knative serve``, the container entrypoint): by default the stack's
        own, on its fixed port; another one (a second "Service") with ``name``/``port``/``env``."""
        return self._spawn(
            name,
            [  # = airflow-knative serve, the container entrypoint (imports only the runtime)
                sys.executable,
                "-m",
                "airflow_provider_knative.runtime",
                "serve",
                "--dags-folder",
                str(self.runtime_dags_folder),
                "--host",
                "127.0.0.1",
                "--port",
                str(port or self.runtime_port),
            ],
            env={
                # the pod's own image and log folder (nothing shared with Airflow's), no database
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.runtime_dags_folder),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.state_dir / "runtime-logs"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://nobody@127.0.0.1:1/not-for-the-runtime",
                **self.runtime_env,
                **(env or {}),
            },
        )

    def process(self, name: str) -> Process:
        """The running process called ``name`` (the last one started)."""
        for p in reversed(self.processes):
            if p.name == name:
                return p
        raise StackError(f"no process {name!r} in this stack")

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal ``name`` and every process under it, as a pod or host going down would, and reap it."""
        import psutil

        p = self.process(name)
        try:
            tree = [psutil.Process(p.popen.pid), *psutil.Process(p.popen.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for proc in tree:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if sig == signal.SIGKILL:
            p.popen.wait()

    def restart(self, name: str) -> Process:
        """Start ``name`` again (after :meth:`kill`): the runtime on its port, or an Airflow component."""
        old = self.process(name)
        if old.popen.poll() is None:
            raise StackError(f"{name} is still running (pid {old.popen.pid}); kill it first")
        old.log_file.close()
        self.processes.remove(old)
        if name == "runtime":
            return self.start_runtime()
        return self._spawn(name, ["airflow", name])

    def _check_alive(self) -> None:
        for p in self.processes:
            if p.popen.poll() is not None:
                raise StackError(f"{p.name} exited with {p.popen.returncode}; its log ends:\n{p.log_tail()}")

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        client = StackClient(self.url)
        runtime = StackClient(self.runtime_url)
        pending = "api-server"
        while time.monotonic() < deadline:
            self._check_alive()
            pending = self._not_ready(client, runtime)
            if not pending:
                client.close()
                runtime.close()
                return
            time.sleep(0.5)
        client.close()
        runtime.close()
        raise StackError(f"the local stack was not ready after {timeout:.0f} s: waiting for {pending}")

    def _not_ready(self, client: StackClient, runtime: StackClient) -> str:
        """What is not ready yet ('' when everything is)."""
        health = client.health()
        if health is None:
            return "api-server"
        for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
            if (health.get(component) or {}).get("status") != "healthy":
                return component
        if not runtime.ready("/readyz"):
            return "runtime /readyz"
        if self.wait_for_dags:
            token = client.login("admin", self.passwords["admin"])
            for dag_id in self.wait_for_dags:
                if not client.dag_exists(dag_id, token):
                    return f"DAG {dag_id} to be parsed"
        return ""

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds."""
        for p in reversed(self.processes):
            _signal_group(p.popen, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in reversed(self.processes):
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.processes:
            _signal_group(p.popen, signal.SIGKILL)  # the group: children outlive a leader that exited
            if p.popen.poll() is None:
                p.popen.wait()
            p.log_file.close()
        self.processes.clear()

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self.processes]

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(popen: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
