"""KnativeHook: URL resolution (explicit, template, Kubernetes discovery), cold-start retries,
deadlines, signing, on_kill, and non-Python services. Every server here is a real HTTP server
on 127.0.0.1; only the Kubernetes API is a fake (``tests/fake_kube_api.py``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from airflow.sdk.exceptions import AirflowException
from conftest import TEST_DAGS
from fake_kube_api import FakeKnativeApi
from knative_dagrun import run_dag, xcom_value
from runtime_process import RuntimeProcess, start_runtime
from servers import free_port

from airflow_provider_knative import hooks, protocol
from airflow_provider_knative.hooks import KnativeHook, NoServiceURLError
from airflow_provider_knative.invoker import (
    HTTPStatusError,
    Request,
    ServiceUnavailableError,
    Timeouts,
)
from airflow_provider_knative.knative.api import discover_url
from airflow_provider_knative.operators import KnativeOperator


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 whose handler is a plain function of the request."""

    def __init__(self, handle) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append((self.command, self.path, dict(self.headers), body))
                status, headers, payload = handle(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _any

        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[_Server] = []

    def make(handle) -> _Server:
        s = _Server(handle)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def _cold_start_proxy(target: str, cold_seconds: float):
    """From its first request on, answers 503 (as Knative's activator can) for ``cold_seconds``,
    then forwards to ``target``."""
    began: list[float] = []

    def handle(method, path, headers, body):
        began.append(time.monotonic())
        if began[-1] - began[0] < cold_seconds:
            return 503, {"Content-Type": "text/plain"}, b"no healthy upstream"
        forwarded = {k: v for k, v in headers.items() if k.lower().startswith(("content-type", "x-knative"))}
        r = requests.request(method, target + path, data=body, headers=forwarded, timeout=30)
        return r.status_code, {"Content-Type": r.headers.get("Content-Type", "")}, r.content

    return handle


@pytest.fixture(scope="module")
def runtime(airflow_home) -> Iterator[RuntimeProcess]:
    with start_runtime(TEST_DAGS) as rt:
        yield rt


# ---------------------------------------------------------------------- URL resolution


def _use_kubeconfig(monkeypatch, path) -> None:
    """The kubernetes client reads $KUBECONFIG once, at import: point its default there."""
    from kubernetes.config import kube_config

    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def test_url_resolution_order(monkeypatch):
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", "http://{service}.{namespace}.example:8080/")
    monkeypatch.setenv("AIRFLOW__KNATIVE__NAMESPACE", "team-a")
    hook = KnativeHook("no_such_connection")
    assert hook.resolve_url("avg", url="http://explicit:1/") == "http://explicit:1"
    assert hook.resolve_url("avg") == "http://avg.team-a.example:8080"
    assert hook.resolve_url("avg", namespace="b") == "http://avg.b.example:8080"


def test_connection_overrides_config(monkeypatch):
    conn = json.dumps(
        {
            "conn_type": "knative",
            "host": "http://{service}.conn:9000",
            "password": "conn-secret",
            "extra": {"namespace": "from-conn", "invoke_timeout_seconds": "12.5"},
        }
    )
    monkeypatch.setenv("AIRFLOW_CONN_KNATIVE_DEFAULT", conn)
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", "http://ignored")
    hook = KnativeHook()
    assert hook.resolve_url("svc") == "http://svc.conn:9000"
    settings = hook.settings
    assert settings.namespace == "from-conn"
    assert settings.secret == b"conn-secret"
    assert settings.timeouts.read == 12.5
    assert settings.timeouts.connect == 10.0  # from [knative] defaults


def test_bad_template_is_reported(monkeypatch):
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", "http://{svc}.local")
    with pytest.raises(Exception, match=r"only \{service\} and \{namespace\}"):
        KnativeHook("none").resolve_url("a")


def test_no_url_source_names_all_three(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", "discover")
    _use_kubeconfig(monkeypatch, tmp_path / "missing-kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(NoServiceURLError) as err:
        KnativeHook("none").resolve_url("lonely", "ns1")
    text = str(err.value)
    assert "'lonely'" in text and "'ns1'" in text
    assert "url=" in text and "url_template" in text and "status.address.url" in text
    op = KnativeOperator(task_id="t", service="lonely")
    with pytest.raises(AirflowException, match="Configure one of"):
        op.execute({})


def test_discovery_reads_status_address_url_and_caches(monkeypatch, tmp_path):
    api = FakeKnativeApi().start()
    try:
        key = ("prod", "avg-worker")
        api.objects[key] = {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": "avg-worker", "namespace": "prod", "generation": 1, "labels": {}},
            "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}},
        }
        api.changed_at[key] = time.monotonic() - 60
        _use_kubeconfig(monkeypatch, api.write_kubeconfig(tmp_path / "kubeconfig"))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", "discover")
        discover_url.cache_clear()
        hook = KnativeHook("none")
        assert hook.resolve_url("avg-worker", "prod") == "http://avg-worker.prod.svc.cluster.local"
        calls = len(api.requests)
        assert hook.resolve_url("avg-worker", "prod") == "http://avg-worker.prod.svc.cluster.local"
        assert len(api.requests) == calls  # cached per process
        with pytest.raises(NoServiceURLError, match="'ghost'"):
            hook.resolve_url("ghost", "prod")
    finally:
        api.stop()


# ---------------------------------------------------------------------- cold start and deadlines


def test_cold_start_503s_then_task_succeeds(runtime, serve, monkeypatch, capfd):
    proxy = serve(_cold_start_proxy(runtime.url, cold_seconds=3.0))
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", proxy.url)
    run = run_dag("knative_outputs")
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-4000:]
    assert xcom_value(run, "spread") == 7
    assert "unavailable (HTTP 503)" in out
    refused = sum(1 for r in proxy.requests if r[1] == protocol.INVOKE_PATH) - 2  # 2 tasks got through
    assert refused >= 3


def test_service_that_never_comes_up_fails_with_url_attempts_deadline(serve):
    down = serve(lambda *a: (503, {"Content-Type": "text/plain"}, b"activator: no revision"))
    op = KnativeOperator(task_id="never", url=down.url, payload={"x": 1}, startup_deadline=1.5)
    started = time.monotonic()
    with pytest.raises(AirflowException) as err:
        op.execute({})
    elapsed = time.monotonic() - started
    text = str(err.value)
    assert down.url in text and "startup deadline 1.5 s" in text and "last: HTTP 503" in text
    attempts = int(text.split(" attempt(s)")[0].rsplit(" ", 1)[1])
    assert attempts == len(down.requests) and attempts >= 3
    assert 1.4 < elapsed < 30  # retried until the deadline, then stopped (slack for a loaded machine)


def test_connection_refused_is_retried_until_deadline():
    url = f"http://127.0.0.1:{free_port()}"
    hook = KnativeHook("none")
    with pytest.raises(ServiceUnavailableError, match=r"ConnectionError"):
        hook.invoke(Request(url, b"{}", content_type="application/json"), Timeouts(1.0, 5.0, 0.8))


def test_user_error_is_not_retried(runtime):
    """A 4xx/500 answer is final: one attempt only (Airflow's task retries apply)."""
    hook = KnativeHook("none")
    body = protocol.Invocation("knative_failing/explode", "wrong-hash").encode()
    with pytest.raises(HTTPStatusError, match="409 SourceHashMismatch"):
        from airflow_provider_knative.invoker import read_result

        read_result(hook.invoke(Request(runtime.url + "/invoke", body)), runtime.url)


def test_read_timeout_is_not_retried(serve):
    slow = serve(lambda *a: (time.sleep(2), (200, {}, b"late"))[1])
    hook = KnativeHook("none")
    with pytest.raises(Exception, match=r"did not answer within 0.5 s"):
        hook.invoke(Request(slow.url, b"", content_type="text/plain"), Timeouts(1.0, 0.5, 30))
    assert len(slow.requests) == 1


def test_on_kill_abandons_the_call_in_flight(serve):
    release = threading.Event()
    slow = serve(lambda *a: (release.wait(30), (200, {"Content-Type": "text/plain"}, b"too late"))[1])
    op = KnativeOperator(task_id="killed", url=slow.url, payload="x", invoke_timeout=60)
    threading.Timer(0.5, op.on_kill).start()
    started = time.monotonic()
    try:
        with pytest.raises(AirflowException, match="abandoned by on_kill"):
            op.execute({})
        assert time.monotonic() - started < 20  # on_kill's cut, not the server's 30 s answer
    finally:
        release.set()


# ---------------------------------------------------------------------- signing


def test_wrong_signing_secret_is_refused_with_a_hint(airflow_home, monkeypatch):
    with start_runtime(TEST_DAGS, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": "right"}) as rt:
        from airflow_provider_knative.invoker import read_result

        body = protocol.Invocation("knative_failing/explode", "x").encode()
        hook = KnativeHook("none")
        for secret in (None, b"wrong"):
            answer = hook.invoke(Request(rt.url + "/invoke", body, secret=secret))
            with pytest.raises(HTTPStatusError, match="401 SignatureError"):
                read_result(answer, rt.url)


# ---------------------------------------------------------------------- non-Python services


def test_raw_json_text_and_bytes_services(serve):
    def handle(method, path, headers, body):
        if path == "/json":
            return 200, {"Content-Type": "application/json"}, json.dumps({"got": json.loads(body)}).encode()
        if path == "/text":
            return 200, {"Content-Type": "text/plain; charset=utf-8"}, body.upper()
        if path == "/bytes":
            return 200, {"Content-Type": "application/octet-stream"}, body[::-1]
        return 418, {"Content-Type": "text/plain"}, b"I'm a teapot"

    svc = serve(handle)
    op = KnativeOperator(task_id="j", url=svc.url, path="json", payload={"a": [1, 2]})
    assert op.execute({}) == {"got": {"a": [1, 2]}}
    assert svc.requests[-1][2]["Content-Type"] == "application/json"
    op = KnativeOperator(task_id="t", url=svc.url, path="/text", payload="hello")
    assert op.execute({}) == "HELLO"
    op = KnativeOperator(task_id="b", url=svc.url, path="/bytes", method="put", payload=b"\x00\x01\x02")
    assert op.execute({}) == b"\x02\x01\x00"
    assert svc.requests[-1][0] == "PUT"
    op = KnativeOperator(task_id="e", url=svc.url, path="/nope", payload={})
    with pytest.raises(AirflowException, match="HTTP 418: I'm a teapot"):
        op.execute({})


def test_operator_needs_service_or_url():
    with pytest.raises(ValueError, match="needs service="):
        KnativeOperator(task_id="nothing")


def test_session_is_shared_per_process():
    assert hooks.http_session() is hooks.http_session()
    assert KnativeHook("a").get_conn() is KnativeHook("b").get_conn()


def test_long_service_names_resolve_to_the_deployed_name(monkeypatch):
    """A name over 63 characters is deployed shortened; the URL must use that same name."""
    from airflow_provider_knative.hooks import KnativeHook
    from airflow_provider_knative.knative.names import InvalidServiceName, service_name

    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", "http://{service}.{namespace}.svc.cluster.local")
    long_name = "feature-engineering-" + "x" * 60
    url = KnativeHook().resolve_url(long_name, "ml")
    deployed = service_name(long_name)
    assert len(deployed) <= 63 and deployed != long_name
    assert url == f"http://{deployed}.ml.svc.cluster.local"
    with pytest.raises(InvalidServiceName, match="Avg_Worker"):
        KnativeHook().resolve_url("Avg_Worker", "ml")
