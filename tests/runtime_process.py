"""Start the Knative runtime (``airflow-knative serve``) as a real process, for tests and benches.

Stable API, imported by the runtime, operator and end-to-end tests::

    from runtime_process import start_runtime   # tests/ is on sys.path (pytest rootdir conftest)

    with start_runtime(dags_folder, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": "s"}) as rt:
        httpx.post(rt.url + "/invoke", ...)       # rt.url == "http://127.0.0.1:<port>"
    # leaving the block sends SIGTERM and waits for the process to exit

``start_runtime(dags_folder, env=None, port=None, *, wait_ready=True, timeout=30.0,
console_script=False, wrapper=(), extra_args=(), client=None)``
returns a :class:`RuntimeProcess` (``.url``, ``.port``, ``.proc``, ``.output()``,
``.stop()``, ``.terminate()``, ``.wait_for(path)``, and the conveniences ``.functions()``
and ``.invoke(function_id, *args, **kwargs)``) that is also a context manager. It binds 127.0.0.1 on a free port (or
``port``), inherits this process's environment plus ``env`` (so the conftest's
``AIRFLOW_HOME``, ``AWS_*`` and ``AIRFLOW__KNATIVE__*`` settings reach the runtime), and
waits for ``GET /readyz`` to answer 200. If the process dies or never becomes ready the
error carries its output, so a broken DAG file shows up in the test failure, not in a
timeout. ``wait_ready=False`` waits only for ``/healthz`` (to observe readiness yourself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from servers import free_port

BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = [str(BIN / "airflow-knative"), "serve"]
MODULE_COMMAND = [sys.executable, "-m", "airflow_provider_knative.runtime", "serve"]
__all__ = ["RuntimeProcess", "serving_tasks", "start_runtime"]


class RuntimeProcess:
    """A running ``airflow-knative serve``; stop it with :meth:`stop` or a ``with`` block."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        log_path: Path,
        scheme: str = "http",
        client: Mapping[str, Any] | None = None,
    ) -> None:
        self.proc = proc
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.log_path = log_path
        #: httpx.Client options for the health checks (verify=, cert= for a TLS runtime)
        self.client = dict(client or {})
        self._final_output: str | None = None

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far (also after stop())."""
        if self._final_output is not None:
            return self._final_output
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, path: str, status: int = 200, timeout: float = 30.0) -> None:
        """Poll ``GET path`` until it answers ``status``; raise with the output if it never does."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2.0, **self.client) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"runtime exited with {self.proc.returncode} before {path} answered "
                        f"{status}; its output:\n{self.output()}"
                    )
                try:
                    resp = client.get(self.url + path)
                    if resp.status_code == status:
                        return
                    last = f"{resp.status_code} {resp.text[:500]}"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.02)
        raise TimeoutError(
            f"{self.url}{path} did not answer {status} within {timeout} s (last: {last}); "
            f"runtime output:\n{self.output()}"
        )

    def functions(self) -> dict[str, str]:
        """``GET /functions`` as ``{function_id: source_hash}``."""
        resp = httpx.get(self.url + "/functions", timeout=10.0)
        resp.raise_for_status()
        return {f["id"]: f["source_hash"] for f in resp.json()["functions"]}

    def invoke(
        self,
        function_id: str,
        *args: Any,
        secret: bytes | None = None,
        store: Any = None,
        context: dict[str, Any] | None = None,
        source_hash: str | None = None,
        timeout: float = 60.0,
        invocation_id: str = "",
        **kwargs: Any,
    ) -> tuple[httpx.Response, Any]:
        """POST one invocation; return the raw response and its decoded ``protocol.Result``.

        ``source_hash`` defaults to the one the runtime reports for ``function_id``, and
        ``store`` is a ``protocol.StoreSettings`` (or None); signed when ``secret`` is given.
        """
        from airflow_provider_knative import protocol

        if source_hash is None:
            source_hash = self.functions().get(function_id, "0" * 64)
        body = protocol.Invocation(
            function_id=function_id,
            source_hash=source_hash,
            args=list(args),
            kwargs=kwargs,
            context=context or {},
            store=store,
            invocation_id=invocation_id,
        ).encode()
        headers = {"content-type": protocol.CONTENT_TYPE}
        if secret is not None:
            headers.update(protocol.sign(secret, body))
        resp = httpx.post(self.url + protocol.INVOKE_PATH, content=body, headers=headers, timeout=timeout)
        return resp, protocol.Result.decode(resp.content)

    def terminate(self) -> None:
        """Send SIGTERM (the runtime drains in-flight calls) without waiting."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to ``timeout`` (then SIGKILL); return the exit code."""
        self.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._final_output is None:
            self._final_output = self.output()
        try:
            self.log_path.unlink()
        except FileNotFoundError:
            pass
        return int(self.proc.returncode)

    def __enter__(self) -> RuntimeProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_runtime(
    dags_folder: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    *,
    wait_ready: bool = True,
    timeout: float = 30.0,
    console_script: bool = False,
    wrapper: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    client: Mapping[str, Any] | None = None,
    python: str | os.PathLike[str] | None = None,
) -> RuntimeProcess:
    """Start ``serve --dags-folder DIR --host 127.0.0.1 --port P`` and wait for it.

    By default through ``python -m airflow_provider_knative.runtime serve`` (the same
    ``serve`` subcommand, without importing the other subsystems' CLI modules); with
    ``console_script=True`` through the installed ``airflow-knative serve``. ``wrapper`` is a
    command that execs the runtime's command line given as its last arguments (for example
    one that changes the process's mount namespace first). ``extra_args`` go after the
    command line (``--ssl-certfile`` ... makes ``.url`` https), ``client`` are the httpx.Client
    options the readiness wait needs to reach it (``verify=``, ``cert=``). ``python`` runs it
    with another interpreter (another venv: a runtime image of another Airflow version).
    """
    port = port or free_port()
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    fd, log_name = tempfile.mkstemp(prefix="knative-runtime-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            [
                *wrapper,
                *(
                    CONSOLE_SCRIPT
                    if console_script
                    else [str(python), *MODULE_COMMAND[1:]]
                    if python
                    else MODULE_COMMAND
                ),
                "--dags-folder",
                str(dags_folder),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )
    scheme = "https" if "--ssl-certfile" in extra_args else "http"
    runtime = RuntimeProcess(proc, port, log_path, scheme, client)
    try:
        runtime.wait_for("/readyz" if wait_ready else "/healthz", timeout=timeout)
    except BaseException:
        runtime.stop()
        raise
    return runtime


@contextlib.contextmanager
def serving_tasks(
    dags_folder: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> Iterator[RuntimeProcess]:
    """A runtime that every ``@task.knative`` of this process calls: ``[knative] url_template``
    points at it while the block runs, and is restored after."""
    with start_runtime(dags_folder, env=env) as rt:
        before = os.environ.get("AIRFLOW__KNATIVE__URL_TEMPLATE")
        os.environ["AIRFLOW__KNATIVE__URL_TEMPLATE"] = rt.url
        try:
            yield rt
        finally:
            if before is None:
                os.environ.pop("AIRFLOW__KNATIVE__URL_TEMPLATE", None)
            else:
                os.environ["AIRFLOW__KNATIVE__URL_TEMPLATE"] = before
