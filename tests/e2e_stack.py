"""Fixtures for the real local deployment the end-to-end and gateway tests share.

One deployment per test session: a private PostgreSQL cluster (Debian's binaries, started
with ``initdb`` + ``pg_ctl`` as the ``postgres`` user when running as root), a bucket on the
moto S3 server, and the same :class:`LocalStack` the ``local-stack`` command runs
(api-server with the gateway, scheduler with LocalExecutor, dag-processor, triggerer, one
Knative runtime) serving ``example_dags/`` plus ``tests/gateway_dags/``. Test modules import
the fixtures they use from here.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO
from servers import free_port

from airflow_provider_knative.localstack.client import StackClient
from airflow_provider_knative.localstack.stack import LocalStack

GATEWAY_DAGS = Path(__file__).resolve().parent / "gateway_dags"
EXAMPLE_DAGS = REPO / "example_dags"
WAIT_FOR = (
    "compute_avg_distributed",
    "currency_etl",
    "fanout_knative",
    "pandas_etl",
    "trigger_flaky_child",
    "flaky_child",
    "gateway_fails",
    "gateway_slow",
    "gateway_two_leaves",
    "gateway_paused",
    "live_logs",
    "live_logs_deferrable",
)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster on a free 127.0.0.1 port; yields a SQLAlchemy URL."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL binaries are not installed (apt-get install postgresql; scripts/test.sh does)"
        )
    root = Path(tempfile.mkdtemp(prefix="knative-e2e-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    run = lambda argv: subprocess.run(_as_postgres(argv), check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "postgres.log"),
                "-w",
                "-o",
                f"-p {port} -h 127.0.0.1 -k {root} -c max_connections=200 -c fsync=off",
                "start",
            ]
        )
        run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "airflow"])
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/airflow"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class E2EStack:
    stack: LocalStack
    client: StackClient
    admin: str  # bearer tokens
    viewer: str
    bucket: str
    s3_endpoint: str

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint)


@pytest.fixture(scope="session")
def e2e_stack(postgres_url: str, moto_server: str) -> Iterator[E2EStack]:
    """The whole deployment on PostgreSQL + moto S3, started once per session."""
    import boto3

    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    state = Path(tempfile.mkdtemp(prefix="knative-e2e-stack-"))
    dags = state / "dags"
    dags.mkdir()
    for source in (EXAMPLE_DAGS, GATEWAY_DAGS):
        for path in source.glob("*.py"):
            shutil.copy(path, dags / path.name)
    stack = LocalStack(
        state,
        dags,
        db_url=postgres_url,
        extra_env={
            "AIRFLOW__KNATIVE__XCOM_STORE_URL": f"s3://{bucket}/xcom",
            "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": moto_server,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        },
        wait_for_dags=WAIT_FOR,
    )
    stack.start()
    client = StackClient(stack.url, timeout=60)
    try:
        yield E2EStack(
            stack=stack,
            client=client,
            admin=client.login("admin", stack.passwords["admin"]),
            viewer=client.login("viewer", stack.passwords["viewer"]),
            bucket=bucket,
            s3_endpoint=moto_server,
        )
    finally:
        client.close()
        stack.stop()
        shutil.rmtree(state, ignore_errors=True)
