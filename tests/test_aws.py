"""``[knative] aws_conn_id``: the object store's S3 credentials, endpoint and region from an
Airflow ``aws`` connection (``AIRFLOW_CONN_...``), instead of boto3's default chain.

The amazon provider is not installed here, so the connection's own fields are read. A proxy
in front of the moto server records the request heads, so the tests see which access key and
region really signed each request.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tcp_proxy import CuttingProxy
from xcom_dagrun import run_dag, task_states, xcom_rows

from airflow_provider_knative import store
from airflow_provider_knative.errors import ConfigError, SpilledValueError
from airflow_provider_knative.xcom import KnativeXComBackend

ACCESS_KEY = "AKIDFROMCONNECTION"
CONN_ENV = "AIRFLOW_CONN_KNATIVE_S3"


@pytest.fixture
def no_default_chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3's default chain finds nothing: no environment keys, no files, no instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AIRFLOW__KNATIVE__S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__KNATIVE__S3_REGION_NAME", raising=False)


@pytest.fixture
def s3_via_connection(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, no_default_chain: None
) -> Iterator[tuple[str, CuttingProxy]]:
    """A bucket reached only through the connection's endpoint (a recording proxy to moto)."""
    import boto3

    bucket = f"conn-{uuid.uuid4().hex[:10]}"
    boto3.client(
        "s3",
        endpoint_url=moto_server,
        aws_access_key_id="x",
        aws_secret_access_key="y",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    with CuttingProxy(moto_server) as proxy:
        monkeypatch.setenv(
            CONN_ENV,
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": ACCESS_KEY,
                    "password": "secret-from-connection",
                    "extra": {"endpoint_url": proxy.url, "region_name": "eu-west-1"},
                }
            ),
        )
        monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", f"s3://{bucket}/xcom")
        store.forget_stores()
        yield bucket, proxy
    store.forget_stores()


def _signed_by(proxy: CuttingProxy) -> set[str]:
    """The access key and region of every signed request the proxy forwarded."""
    found = set()
    for head in proxy.heads:
        match = re.search(rb"Credential=([^/]+)/\d+/([^/]+)/s3/", head)
        if match:
            found.add(f"{match.group(1).decode()} {match.group(2).decode()}")
    return found


def test_without_credentials_the_error_says_what_to_set(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, no_default_chain: None
) -> None:
    monkeypatch.setenv("AIRFLOW__KNATIVE__S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", "s3://any-bucket/xcom")
    monkeypatch.delenv("AIRFLOW__KNATIVE__AWS_CONN_ID", raising=False)
    store.forget_stores()
    try:
        with pytest.raises(SpilledValueError, match=r"no AWS credentials.*\[knative\] aws_conn_id"):
            KnativeXComBackend.serialize_value(
                np.zeros(100_000), key="k", dag_id="d", run_id="r", task_id="t"
            )
    finally:
        store.forget_stores()


def test_store_uses_the_connections_keys_endpoint_and_region(
    s3_via_connection: tuple[str, CuttingProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, proxy = s3_via_connection
    monkeypatch.setenv("AIRFLOW__KNATIVE__AWS_CONN_ID", "knative_s3")
    store.forget_stores()
    value = np.arange(300_000, dtype=np.float64)
    stored = KnativeXComBackend.serialize_value(value, key="k", dag_id="d", run_id="r", task_id="t")
    assert stored["ref"].startswith(f"s3://{bucket}/xcom/d/r/t/k/")
    back = KnativeXComBackend.deserialize_value(type("Row", (), {"value": stored})())
    np.testing.assert_array_equal(back, value)
    assert _signed_by(proxy) == {f"{ACCESS_KEY} eu-west-1"}


def test_knative_settings_win_over_the_connections_endpoint(
    s3_via_connection: tuple[str, CuttingProxy], moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bucket, proxy = s3_via_connection
    monkeypatch.setenv("AIRFLOW__KNATIVE__AWS_CONN_ID", "knative_s3")
    monkeypatch.setenv("AIRFLOW__KNATIVE__S3_ENDPOINT_URL", moto_server)  # straight to moto, not the proxy
    store.forget_stores()
    KnativeXComBackend.serialize_value(np.zeros(100_000), key="k", dag_id="d", run_id="r", task_id="t")
    assert proxy.heads == []  # the connection's endpoint was not used


def test_a_dag_run_spills_through_the_connection(
    s3_via_connection: tuple[str, CuttingProxy], monkeypatch: pytest.MonkeyPatch, airflow_home: Path
) -> None:
    """The real path: dag.test() runs the tasks, which look the connection up through Airflow."""
    bucket, proxy = s3_via_connection
    monkeypatch.setenv("AIRFLOW__KNATIVE__AWS_CONN_ID", "knative_s3")
    store.forget_stores()
    dr = run_dag("xcom_spill")
    assert str(dr.state) == "success", task_states(dr)
    ref = xcom_rows("xcom_spill", dr.run_id)[("produce", -1, "return_value")]["ref"]
    assert ref.startswith(f"s3://{bucket}/xcom/xcom_spill/")
    assert _signed_by(proxy) == {f"{ACCESS_KEY} eu-west-1"}


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        (None, r"names the connection 'knative_s3', which does not exist"),
        (
            {"conn_type": "aws", "extra": {"role_arn": "arn:aws:iam::1:role/x"}},
            r"sets role_arn, which needs the amazon provider",
        ),
    ],
)
def test_connection_problems_are_explained(
    monkeypatch: pytest.MonkeyPatch, no_default_chain: None, connection: Any, message: str
) -> None:
    from airflow_provider_knative.aws import s3_session

    if connection is None:
        monkeypatch.delenv(CONN_ENV, raising=False)
    else:
        monkeypatch.setenv(CONN_ENV, json.dumps(connection))
    with pytest.raises(ConfigError, match=message):
        s3_session("knative_s3")
