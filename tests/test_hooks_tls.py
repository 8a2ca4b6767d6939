"""HTTPS to the runtime: a private CA from the connection or the environment, mutual TLS, extra
headers, and the connection's Test button, on the sync (requests) and async (httpx) paths.

The runtime is the real ``airflow-knative serve --ssl-certfile/--ssl-keyfile`` process behind
a certificate of a CA made here (``tests/tls_certs.py``), so nothing trusts it by default.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_DAGS
from knative_dagrun import run_dag, task_states, xcom_value
from runtime_process import RuntimeProcess, start_runtime
from servers import free_port
from tls_certs import Certs, make_certs

from airflow_provider_knative import protocol
from airflow_provider_knative.errors import InvocationError, TLSError
from airflow_provider_knative.hooks import KnativeHook
from airflow_provider_knative.invoker import Request, Timeouts

CONN = "AIRFLOW_CONN_KNATIVE_DEFAULT"
QUICK = Timeouts(connect=2.0, read=10.0, startup_deadline=1.0)
CA_ENV = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_runtime(certs: Certs, airflow_home: Path) -> Iterator[RuntimeProcess]:
    """The runtime serving tests/dags over HTTPS with the private CA's server certificate."""
    args = ["--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key)]
    # a client whose TLS handshake failed leaves uvicorn a connection it waits for at shutdown:
    # a short drain keeps the teardown short
    env = {"AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS": "2"}
    with start_runtime(TEST_DAGS, env=env, extra_args=args, client={"verify": str(certs.ca)}) as rt:
        assert rt.url.startswith("https://")
        yield rt


@pytest.fixture(scope="module")
def mtls_runtime(certs: Certs, airflow_home: Path) -> Iterator[RuntimeProcess]:
    """The same, and every client must present a certificate of the client CA."""
    args = [
        "--ssl-certfile",
        str(certs.server_cert),
        "--ssl-keyfile",
        str(certs.server_key),
        "--ssl-ca-certs",
        str(certs.client_ca),
    ]
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))  # httpx 0.28 takes no cert=
    env = {"AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS": "2"}  # see tls_runtime
    with start_runtime(TEST_DAGS, env=env, extra_args=args, client={"verify": context}) as rt:
        yield rt


@pytest.fixture(autouse=True)
def _no_ca_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CA_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AIRFLOW__KNATIVE__URL_TEMPLATE", raising=False)


def _connection(monkeypatch: pytest.MonkeyPatch, host: str, **extra: Any) -> None:
    monkeypatch.setenv(CONN, json.dumps({"conn_type": "knative", "host": host, "extra": extra}))


def _ping(rt: RuntimeProcess) -> Request:
    """An invocation of knative_average/compute_sum: the smallest real call."""
    invocation = protocol.Invocation(
        function_id="knative_average/compute_sum",
        source_hash=rt.functions_with_client()["knative_average/compute_sum"],
        args=[[1, 2, 3]],
        kwargs={},
        context={},
    )
    return Request(url=rt.url + protocol.INVOKE_PATH, body=invocation.encode())


def _result(response: Any) -> Any:
    return protocol.Result.decode(response.body).value


def _functions_with_client(self: RuntimeProcess) -> dict[str, str]:
    import httpx

    with httpx.Client(timeout=10.0, **self.client) as client:
        resp = client.get(self.url + "/functions")
    resp.raise_for_status()
    return {f["id"]: f["source_hash"] for f in resp.json()["functions"]}


RuntimeProcess.functions_with_client = _functions_with_client  # type: ignore[attr-defined]


def _call_both_ways(request: Request) -> list[Any]:
    """The same request through ``invoke`` (requests) and ``ainvoke`` (httpx): both answers."""
    sync = KnativeHook().invoke(request, QUICK)
    deferred = asyncio.run(KnativeHook().ainvoke(request, QUICK))
    return [sync, deferred]


# ---------------------------------------------------------------------- a private CA


def test_untrusted_certificate_fails_at_once_with_what_to_set(
    tls_runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    _connection(monkeypatch, tls_runtime.url)
    request = _ping(tls_runtime)
    with pytest.raises(TLSError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed") as sync:
        KnativeHook().invoke(request, QUICK)
    with pytest.raises(TLSError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed") as deferred:
        asyncio.run(KnativeHook().ainvoke(request, QUICK))
    for err in (sync, deferred):
        assert "ca_bundle" in str(err.value) and "REQUESTS_CA_BUNDLE" in str(err.value)


def test_ca_from_the_connection_is_trusted(
    tls_runtime: RuntimeProcess, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    _connection(monkeypatch, tls_runtime.url, ca_bundle=str(certs.ca))
    assert [_result(r) for r in _call_both_ways(_ping(tls_runtime))] == [6, 6]
    # the requests convention: verify="/path/ca.pem"
    _connection(monkeypatch, tls_runtime.url, verify=str(certs.ca))
    assert [_result(r) for r in _call_both_ways(_ping(tls_runtime))] == [6, 6]
    # an unrelated CA is not enough
    _connection(monkeypatch, tls_runtime.url, ca_bundle=str(certs.other_ca))
    with pytest.raises(TLSError):
        KnativeHook().invoke(_ping(tls_runtime), QUICK)
    with pytest.raises(TLSError):
        asyncio.run(KnativeHook().ainvoke(_ping(tls_runtime), QUICK))


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_ca_bundle_environment_variables_are_honoured(
    tls_runtime: RuntimeProcess, certs: Certs, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    _connection(monkeypatch, tls_runtime.url)
    monkeypatch.setenv(variable, str(certs.ca))
    assert [_result(r) for r in _call_both_ways(_ping(tls_runtime))] == [6, 6]
    # the connection's extra wins over the environment
    _connection(monkeypatch, tls_runtime.url, ca_bundle=str(certs.other_ca))
    with pytest.raises(TLSError):
        KnativeHook().invoke(_ping(tls_runtime), QUICK)


def test_verify_false_skips_the_check(tls_runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    _connection(monkeypatch, tls_runtime.url, verify=False)
    assert [_result(r) for r in _call_both_ways(_ping(tls_runtime))] == [6, 6]


def test_bad_tls_paths_are_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from airflow_provider_knative.errors import ConfigError

    _connection(monkeypatch, "https://127.0.0.1:1", ca_bundle=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r'"ca_bundle" .*nope\.pem.* is not a readable file'):
        _ = KnativeHook().settings
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "gone.pem"))
    _connection(monkeypatch, "https://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"\$REQUESTS_CA_BUNDLE .*gone\.pem"):
        _ = KnativeHook().settings
    _connection(monkeypatch, "https://127.0.0.1:1", client_key=str(tmp_path))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with pytest.raises(ConfigError, match=r"client_key.*without.*client_cert"):
        _ = KnativeHook().settings


# ---------------------------------------------------------------------- mutual TLS


def test_client_certificate_from_the_connection(
    mtls_runtime: RuntimeProcess, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    _connection(monkeypatch, mtls_runtime.url, ca_bundle=str(certs.ca))
    # without a client certificate the server drops the connection (TLS 1.3: after the handshake)
    with pytest.raises(InvocationError):
        KnativeHook().invoke(_ping(mtls_runtime), QUICK)
    with pytest.raises(InvocationError):
        asyncio.run(KnativeHook().ainvoke(_ping(mtls_runtime), QUICK))
    _connection(
        monkeypatch,
        mtls_runtime.url,
        ca_bundle=str(certs.ca),
        client_cert=str(certs.client_cert),
        client_key=str(certs.client_key),
    )
    assert [_result(r) for r in _call_both_ways(_ping(mtls_runtime))] == [6, 6]


# ---------------------------------------------------------------------- whole DAG runs, sync and deferred


@pytest.mark.parametrize("dag_id", ["knative_average", "knative_average_deferrable"])
def test_dag_over_tls_fails_without_the_ca_and_succeeds_with_it(
    tls_runtime: RuntimeProcess,
    certs: Certs,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    dag_id: str,
) -> None:
    _connection(monkeypatch, tls_runtime.url)
    run = run_dag(dag_id, conf={"data": [1, 2, 3, 4]})
    out = capfd.readouterr().out
    assert str(run.state) == "failed", out[-3000:]
    assert task_states(run)[("extract", -1)] == "failed"
    assert "TLS handshake failed" in out and "ca_bundle" in out, out[-3000:]

    _connection(monkeypatch, tls_runtime.url, ca_bundle=str(certs.ca))
    run = run_dag(dag_id, conf={"data": [1, 2, 3, 4]})
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-3000:]
    assert xcom_value(run, "compute_avg") == 2.5
    if dag_id.endswith("deferrable"):
        assert "Deferring the call to https://" in out


# ---------------------------------------------------------------------- extra headers


def test_connection_and_task_headers_reach_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Host header for a Knative ingress, from the connection; a task header over it."""
    from test_hooks import _Server

    server = _Server(lambda method, path, headers, body: (200, {"Content-Type": "application/json"}, b"1"))
    try:
        _connection(monkeypatch, server.url, headers={"Host": "scorer.prod.example.com", "X-Team": "a"})
        request = Request(
            url=server.url + "/score",
            body=b"{}",
            content_type="application/json",
            headers_extra={"X-Team": "b"},
        )
        _call_both_ways(request)
        assert len(server.requests) == 2
        for _method, _path, headers, _body in server.requests:
            lowered = {k.lower(): v for k, v in headers.items()}
            assert lowered["host"] == "scorer.prod.example.com"
            assert lowered["x-team"] == "b"
    finally:
        server.stop()


def test_headers_extra_may_be_json_text_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_knative.errors import ConfigError

    monkeypatch.setenv(
        CONN,
        json.dumps(
            {"conn_type": "knative", "host": "http://x", "extra": {"headers": '{"Host": "h.example"}'}}
        ),
    )
    assert dict(KnativeHook().settings.headers) == {"Host": "h.example"}
    _connection(monkeypatch, "http://x", headers="not json")
    with pytest.raises(ConfigError, match='"headers" must be a JSON object'):
        _ = KnativeHook().settings


# ---------------------------------------------------------------------- the Test button


def _airflow_test(monkeypatch: pytest.MonkeyPatch, host: str, **extra: Any) -> tuple[bool, str]:
    """What the api-server's POST /connections/test does: a transient env connection, then
    ``Connection.test_connection()`` (which finds our hook through the providers manager)."""
    from airflow.models.connection import Connection

    conn = Connection(conn_id="knative_ui_test", conn_type="knative", host=host, extra=json.dumps(extra))
    monkeypatch.setenv("AIRFLOW_CONN_KNATIVE_UI_TEST", conn.get_uri())
    return conn.test_connection()


def test_test_button_reports_a_ready_runtime(
    tls_runtime: RuntimeProcess, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = _airflow_test(monkeypatch, tls_runtime.url, ca_bundle=str(certs.ca))
    assert ok, message
    assert message.startswith(f"{tls_runtime.url}/readyz: the runtime is ready, serving ")
    # a template needs the service name to test
    template = tls_runtime.url.replace("127.0.0.1", "{service}")
    ok, message = _airflow_test(monkeypatch, template, ca_bundle=str(certs.ca))
    assert not ok and "test_service" in message, message
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", "unused")
    # the server certificate also names "localhost", a valid service name
    ok, message = _airflow_test(monkeypatch, template, ca_bundle=str(certs.ca), test_service="localhost")
    assert ok, message
    assert message.startswith(f"https://localhost:{tls_runtime.port}/readyz: the runtime is ready")


def test_test_button_explains_failures(
    tls_runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from test_hooks import _Server

    ok, message = _airflow_test(monkeypatch, tls_runtime.url)
    assert not ok and "TLS handshake failed" in message and "ca_bundle" in message, message

    closed = f"http://127.0.0.1:{free_port()}"
    ok, message = _airflow_test(monkeypatch, closed)
    assert not ok and message.startswith(f"cannot reach {closed}/readyz: ConnectionError"), message

    server = _Server(
        lambda method, path, headers, body: (404, {"Content-Type": "text/html"}, b"<h1>nginx</h1>")
    )
    try:
        ok, message = _airflow_test(monkeypatch, server.url)
        assert not ok and "HTTP 404" in message and "not an airflow-knative runtime" in message, message
    finally:
        server.stop()

    broken = tmp_path / "dags"
    broken.mkdir()
    (broken / "broken_dag.py").write_text(
        "from airflow.sdk import dag\nraise RuntimeError('boom at import')\n"
    )
    with start_runtime(broken, wait_ready=False) as rt:
        deadline = time.monotonic() + 30
        while True:  # "importing" first, then the import error
            ok, message = _airflow_test(monkeypatch, rt.url)
            if "importing" not in message or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert not ok and "not ready (DAG folder failed to import)" in message, message
    assert "broken_dag.py: RuntimeError: boom at import" in message
