"""Run the runtime: listen first, import the DAG folder in the background, drain on SIGTERM.

Order matters for a Knative pod: the port answers ``/healthz`` as soon as the process is up
(liveness), and ``/readyz`` turns 200 only once every DAG file imported, so the
queue-proxy sends no call before the functions exist. On SIGTERM uvicorn stops accepting,
lets in-flight calls finish (bounded by ``[knative] drain_timeout_seconds``), and the
process exits 0; calls still running after the drain timeout make it exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from airflow_provider_knative import config, records, versions
from airflow_provider_knative.functions import FunctionInfo
from airflow_provider_knative.runtime import claims, invoke, isolation, loader, logs
from airflow_provider_knative.runtime.app import WORKLOAD_STOP_SECONDS, RuntimeApp, RuntimeState
from airflow_provider_knative.runtime.forkserver import ForkServer
from airflow_provider_knative.runtime.http import GuardedHttpToolsProtocol
from airflow_provider_knative.runtime.observability import Observability
from airflow_provider_knative.runtime.workers import Workers
from airflow_provider_knative.runtime.workload_runs import WorkloadRuns

log = logging.getLogger("airflow_provider_knative.runtime")

#: worker threads when container_concurrency is 0 (Knative's "unlimited")
UNLIMITED_WORKERS = 64
#: GIL switch interval. CPU-bound task functions run in worker threads; with CPython's 5 ms
#: default, the event-loop thread waits behind every busy worker for each of the several GIL
#: acquisitions one health probe needs (hundreds of ms with 8 busy calls). A shorter interval
#: hands the loop the GIL sooner at a small cost to CPU-bound throughput.
SWITCH_INTERVAL_SECONDS = 0.0005


def _process_start() -> float:
    """Wall-clock time this process started (Linux /proc), for honest cold-start numbers."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class _Server(uvicorn.Server):
    """uvicorn.Server that marks the runtime as draining and exits 0 after a graceful stop.

    uvicorn >= 0.29 re-raises the captured SIGTERM after shutdown, which would end the
    process with -15 even after a clean drain; Knative and our tests expect exit 0. For the same
    reason the signal handlers are not given back when the server stops: a SIGTERM that arrives
    while the process finishes its exit (stopping workloads, the fork server, the workers) would
    otherwise kill it with -15 instead of the exit code the drain decided (0, or 1 when calls
    outlived it). From the first SIGTERM on, the process is on its way out; later ones change
    nothing (SIGKILL still ends it at once).
    """

    def __init__(self, config_: uvicorn.Config, app: RuntimeApp, drain: float, on_started: Any) -> None:
        super().__init__(config_)
        self.app = app
        self.state = app.state
        self.drain = drain
        self.on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        for sig in handled:
            signal.signal(sig, self.handle_exit)
        try:
            yield
        finally:
            for sig in handled:  # ignored, not logged: a handler could interrupt a write to stderr
                signal.signal(sig, signal.SIG_IGN)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.state.draining:
            log.info("received %s: draining in-flight calls", signal.Signals(sig).name)
            self.state.draining = True
            if self.started:
                self.loop.call_soon_threadsafe(self.app.start_drain, self.drain)
        super().handle_exit(sig, frame)

    async def startup(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            self.on_started()


def _boot(folder: str, state: RuntimeState, t0: float, forks: ForkServer | None, in_process: bool) -> None:
    """Loader thread: import the DAG folder here (thread isolation) and/or in the fork server
    (process isolation, and the executor's workloads), then flip readiness."""
    if forks is not None:
        forks.start()  # imports in its own process, in parallel with this thread
    functions: dict[str, FunctionInfo] = {}
    failures: list[loader.ImportFailure] = []
    files = 0
    timings: dict[str, float] = {}
    if in_process:
        t_start = time.time()
        # The runtime is a library user of Airflow: no metadata DB, no settings.initialize().
        os.environ.setdefault("_AIRFLOW__AS_LIBRARY", "1")
        try:
            import airflow.sdk  # noqa: F401 - timed on its own: it dominates cold start
        except Exception as exc:
            failures.append(loader.ImportFailure("airflow.sdk", f"{type(exc).__name__}: {exc}", ""))
        t_airflow = time.time()
        if not failures:
            registry = loader.load(folder)
            loader.set_current(registry)
            functions, failures, files = dict(registry.functions), registry.failures, len(registry.files)
        timings = {
            "airflow_import_s": round(t_airflow - t_start, 3),
            "dag_import_s": round(time.time() - t_airflow, 3),
        }
    if forks is not None:
        info = forks.wait_ready()
        if info is None:
            failures.append(
                loader.ImportFailure(folder, "the fork server died while importing (see above)", "")
            )
        else:
            if not in_process:
                functions = {
                    f["id"]: FunctionInfo(f["id"], f["source_hash"], f["dag_id"], f["task_id"], f["fileloc"])
                    for f in info["functions"]
                }
                files = len(info["files"])
                failures += [
                    loader.ImportFailure(f["path"], f["error"], f["traceback"]) for f in info["failures"]
                ]
            timings["forkserver_import_s"] = info["import_s"]
    for failure in failures:
        log.error("DAG file %s failed to import: %s\n%s", failure.path, failure.error, failure.traceback)
    _publish(state, folder, functions, failures, files, timings, t0)


def _publish(
    state: RuntimeState,
    folder: str,
    functions: dict[str, FunctionInfo],
    failures: list[loader.ImportFailure],
    files: int,
    timings: dict[str, float],
    t0: float,
) -> None:
    """Make the imported functions callable and flip readiness; say loudly what failed."""
    state.functions = functions
    state.failures.extend(failures)
    state.timings.update(timings, ready_after_s=round(time.time() - t0, 3))
    state.loaded = True
    if failures:
        log.error(
            "NOT READY: %d of %d DAG files failed to import (%s); /readyz stays 503",
            len(failures),
            files,
            ", ".join(f.path for f in failures),
        )
        return
    log.info(
        "ready: %d function(s) from %d DAG file(s) in %s; cold start %.3f s (%s)",
        len(functions),
        files,
        folder,
        state.timings["ready_after_s"],
        ", ".join(f"{k} {v}" for k, v in state.timings.items() if k != "ready_after_s"),
    )
    for fn in functions.values():
        log.info("  %s (source %s)", fn.function_id, fn.source_hash[:12])


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the port on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_signing(secret: bytes | None, host: str) -> None:
    """Refuse to serve unsigned calls beyond loopback unless ``[knative] allow_unsigned`` says so.

    Anyone who reaches an unsigned runtime's port runs its functions, and a web page can
    reach 127.0.0.1 too (that is what the 415 on non-msgpack bodies stops). On loopback, for
    the local stack and tests, a warning is enough; elsewhere it takes an explicit opt-in.
    """
    if secret is not None:
        return
    where = f"on {host}"
    if is_loopback(host):
        log.warning(
            "SECURITY: no signing secret is configured ([knative] signing_secret / "
            "AIRFLOW__KNATIVE__SIGNING_SECRET or signing_secret_file): any local process can run "
            "this runtime's functions. Set the same secret on Airflow and the runtime"
        )
        return
    if config.get("allow_unsigned"):
        log.warning(
            "SECURITY: serving UNSIGNED invocations %s because [knative] allow_unsigned is true: anyone "
            "who can reach this port runs the registered functions",
            where,
        )
        return
    raise config.ConfigError(
        f"airflow-knative serve: refusing to listen {where} without a signing secret: anyone who can "
        "reach the port could run the DAG's functions. Set [knative] signing_secret (or "
        "signing_secret_file, e.g. a mounted Kubernetes Secret) to the same value as in Airflow; or "
        "bind 127.0.0.1; or, on a network you trust, set AIRFLOW__KNATIVE__ALLOW_UNSIGNED=true"
    )


@dataclass(frozen=True)
class TLS:
    """HTTPS for the runtime: its certificate and key, and optionally the CAs of client certificates."""

    certfile: str
    keyfile: str
    client_ca: str | None = None

    def uvicorn_options(self) -> dict[str, Any]:
        import ssl

        options: dict[str, Any] = {"ssl_certfile": self.certfile, "ssl_keyfile": self.keyfile}
        if self.client_ca:
            options.update(ssl_ca_certs=self.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options


def serve(dags_folder: str, host: str, port: int, tls: TLS | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code."""
    t0 = _process_start()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logs.install()
    secret = config.signing_secret()
    check_signing(secret, host)
    limits = invoke.Limits(
        max_body_bytes=config.get("max_body_bytes"),
        log_max_bytes=config.get("log_max_bytes"),
        signing_secret=secret,
        signature_max_age_seconds=float(config.get("signature_max_age_seconds")),
        replica=claims.replica_name(),
    )
    workers = config.get("container_concurrency") or UNLIMITED_WORKERS
    drain = float(config.get("drain_timeout_seconds"))
    mode = config.get("isolation")
    workloads = bool(config.get("workloads"))
    state = RuntimeState()
    pool = Workers(workers, name="knative-invoke")
    forks = ForkServer(dags_folder, workloads=workloads) if mode == "process" or workloads else None
    book = claims.open_records(records.INVOCATIONS)
    ended: list[Any] = []  # the app, once it exists: told when a call ends by cancel or drain
    leases = (
        claims.Leases(book, lambda *args: ended[0].call_ended(*args) if ended else None)
        if book is not None
        else None
    )
    if book is None:
        log.warning(
            "no store for the record of calls ([knative] xcom_store_url is not set): this runtime "
            "remembers calls in its own memory only, so at-most-once, re-attach and replay protection "
            "hold for ONE replica. A Knative Service with several pods needs the store"
        )
    else:
        log.info("the record of every call is kept in %s (lease %g s)", book.where, book.lease_seconds)
    if mode == "process":
        assert forks is not None
        runner = isolation.ProcessRunner(forks, limits, leases)
        app = RuntimeApp(state, limits, pool, runner, on_expire=runner.kill_all, records_=book, leases=leases)
    else:
        app = RuntimeApp(
            state, limits, pool, isolation.run_in_thread(limits, leases), records_=book, leases=leases
        )
    ended.append(app)
    if workloads:
        assert forks is not None
        app.workloads = WorkloadRuns(
            forks,
            capacity=config.get("container_concurrency"),
            request_timeout=float(config.get("request_timeout_seconds")),
            records_=claims.open_records(records.DELIVERIES),
        )
    observed = Observability(app, pool, leases, limits.replica)  # GET /metrics; spans when OTEL_* asks
    load: tuple[Any, ...] = (_boot, (dags_folder, state, t0, forks, mode != "process"))

    def started() -> None:
        state.timings["server_up_s"] = round(time.time() - t0, 3)
        log.info(
            "listening on %s://%s:%d (%d workers, %s isolation%s); importing %s",
            "https" if tls else "http",
            host,
            port,
            workers,
            mode,
            ", Airflow task workloads" if workloads else "",
            dags_folder,
        )
        threading.Thread(target=load[0], args=load[1], name="knative-dag-import", daemon=True).start()

    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=max(1, round(drain)),
        server_header=False,
        # every answer says which Airflow this image carries, so callers can name a version skew
        headers=[(versions.RUNTIME_VERSION_HEADER, versions.version_header_value())],
        http=GuardedHttpToolsProtocol,
        **(tls.uvicorn_options() if tls else {}),
    )
    server = _Server(uv_config, app, drain, started)
    forks_failed = False
    try:
        server.run()
        if app.workloads is not None and not app.workloads.finish(WORKLOAD_STOP_SECONDS):
            log.error("workloads were stopped by the end of the drain; exiting 1")
            forks_failed = True
    finally:
        if forks is not None:
            forks.close()
        observed.close()
    pool.shutdown()
    if app.in_flight or app.outlived or forks_failed:
        log.error(
            "drain timeout (%s s) passed with %d call(s) still running; exiting 1",
            drain,
            max(app.in_flight, app.outlived),
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    if not server.started:
        return 1
    log.info("stopped after draining in-flight calls")
    return 0
