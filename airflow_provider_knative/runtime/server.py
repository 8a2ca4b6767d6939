"""Run the runtime: listen first, import the DAG folder in the background, drain on SIGTERM.

Order matters for a Knative pod: the port answers ``/healthz`` as soon as the process is up
(liveness), and ``/readyz`` turns 200 only once every DAG file imported, so the
queue-proxy sends no call before the functions exist. On SIGTERM uvicorn stops accepting,
lets in-flight calls finish (bounded by ``[knative] drain_timeout_seconds``), and the
process exits 0; calls still running after the drain timeout make it exit 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from airflow_provider_knative import config
from airflow_provider_knative.runtime import invoke, loader, logs
from airflow_provider_knative.runtime.app import RuntimeApp, RuntimeState

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
    process with -15 even after a clean drain; Knative and our tests expect exit 0.
    """

    def __init__(self, config_: uvicorn.Config, state: RuntimeState, on_started: Any) -> None:
        super().__init__(config_)
        self.state = state
        self.on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.state.draining:
            log.info("received %s: draining in-flight calls", signal.Signals(sig).name)
        self.state.draining = True
        super().handle_exit(sig, frame)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_started()


def _import_dags(folder: str, state: RuntimeState, t0: float) -> None:
    """Import the DAG folder (loader thread); report failures loudly; flip readiness."""
    t_start = time.time()
    # The runtime is a library user of Airflow: no metadata DB, no settings.initialize().
    os.environ.setdefault("_AIRFLOW__AS_LIBRARY", "1")
    try:
        import airflow.sdk  # noqa: F401 - timed on its own: it dominates cold start
    except Exception as exc:
        state.failures.append(loader.ImportFailure("airflow.sdk", f"{type(exc).__name__}: {exc}", ""))
        log.error("cannot import the Airflow task SDK: %s", exc)
        return
    t_airflow = time.time()

    def report(failure: loader.ImportFailure) -> None:
        log.error("DAG file %s failed to import: %s\n%s", failure.path, failure.error, failure.traceback)

    registry = loader.load(folder, on_failure=report)
    t_done = time.time()
    state.functions = registry.functions
    state.failures.extend(registry.failures)
    state.timings.update(
        {
            "airflow_import_s": round(t_airflow - t_start, 3),
            "dag_import_s": round(t_done - t_airflow, 3),
            "ready_after_s": round(t_done - t0, 3),
        }
    )
    state.loaded = True
    if registry.failures:
        log.error(
            "NOT READY: %d of %d DAG files failed to import (%s); /readyz stays 503",
            len(registry.failures),
            len(registry.files),
            ", ".join(f.path for f in registry.failures),
        )
    else:
        log.info(
            "ready: %d function(s) from %d DAG file(s) in %s; cold start %.3f s "
            "(python+server %.3f s, airflow import %.3f s, DAG import %.3f s)",
            len(registry.functions),
            len(registry.files),
            folder,
            t_done - t0,
            state.timings.get("server_up_s", 0.0),
            t_airflow - t_start,
            t_done - t_airflow,
        )
        for fn in registry.functions.values():
            log.info("  %s (source %s)", fn.function_id, fn.source_hash[:12])


def serve(dags_folder: str, host: str, port: int) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code."""
    t0 = _process_start()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logs.install()
    secret = config.signing_secret()
    if secret is None:
        log.warning(
            "SECURITY: no signing secret is configured ([knative] signing_secret / "
            "AIRFLOW__KNATIVE__SIGNING_SECRET or signing_secret_file): this runtime runs any "
            "registered function for anyone who can reach its port. Set the same secret on "
            "Airflow and the runtime"
        )
    limits = invoke.Limits(
        max_body_bytes=config.get("max_body_bytes"),
        log_max_bytes=config.get("log_max_bytes"),
        signing_secret=secret,
        signature_max_age_seconds=float(config.get("signature_max_age_seconds")),
    )
    workers = config.get("container_concurrency") or UNLIMITED_WORKERS
    drain = float(config.get("drain_timeout_seconds"))
    state = RuntimeState()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="knative-invoke")
    app = RuntimeApp(state, limits, pool)

    def started() -> None:
        state.timings["server_up_s"] = round(time.time() - t0, 3)
        log.info(
            "listening on http://%s:%d (%d worker threads); importing %s", host, port, workers, dags_folder
        )
        threading.Thread(
            target=_import_dags, args=(dags_folder, state, t0), name="knative-dag-import", daemon=True
        ).start()

    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=max(1, round(drain)),
        server_header=False,
    )
    server = _Server(uv_config, state, started)
    server.run()
    pool.shutdown(wait=False, cancel_futures=True)
    if app.in_flight:
        log.error(
            "drain timeout (%s s) passed with %d call(s) still running; exiting 1", drain, app.in_flight
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    if not server.started:
        return 1
    log.info("stopped after draining in-flight calls")
    return 0
