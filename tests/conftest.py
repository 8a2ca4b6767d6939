"""Shared fixtures: an isolated Airflow home with a migrated SQLite DB, and a moto S3 server.

Airflow reads ``[core] xcom_backend`` once, at import, so the environment is set here, at
collection time, before any test module imports Airflow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from servers import BIN, running_moto_server

# No example may fail for being slow: these machines are shared, and speed lives in bench/.
settings.register_profile("knative", deadline=None)
settings.load_profile("knative")

REPO = Path(__file__).resolve().parent.parent
TEST_DAGS = Path(__file__).resolve().parent / "dags"

_HOME = Path(tempfile.mkdtemp(prefix="knative-test-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__XCOM_BACKEND": "airflow_provider_knative.xcom.KnativeXComBackend",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        "AIRFLOW__KNATIVE__XCOM_STORE_URL": (_HOME / "store").as_uri(),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def airflow_home() -> Iterator[Path]:
    """The session's AIRFLOW_HOME with a migrated database (needed by ``dag.test()``)."""
    db = _HOME / "airflow.db"
    if not db.exists():
        subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=os.environ.copy(),
        )
    yield _HOME


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """The session's moto S3 server (see ``running_moto_server``)."""
    with running_moto_server() as url:
        yield url


@pytest.fixture
def s3_store(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on the moto server, configured as the XCom store; yields its URL."""
    import boto3

    from airflow_provider_knative import store

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/xcom"
    monkeypatch.setenv("AIRFLOW__KNATIVE__S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", url)
    store.forget_stores()
    yield url
    store.forget_stores()


@pytest.fixture
def file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh folder configured as the XCom store; yields its file:// URL."""
    from airflow_provider_knative import store

    url = (tmp_path / "store").as_uri()
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", url)
    store.forget_stores()
    yield url
    store.forget_stores()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)
