"""``airflow-knative xcom-cleanup``: removes orphaned spilled objects and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from xcom_dagrun import load_dag, xcom_rows

from airflow_provider_knative import cli, store
from airflow_provider_knative.codec import ObjectRef
from airflow_provider_knative.xcom import spill

DAY = 24 * 3600


def age(url: str, seconds: float) -> None:
    """Backdate an object in a file store."""
    path = Path(url[len("file://") :])
    then = time.time() - seconds
    os.utime(path, (then, then))


def urls(root: str) -> set[str]:
    return {o.url for o in store.open_store(root).list()}


def cleanup(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = cli.main(["xcom-cleanup", *args])
    return code, capsys.readouterr().out


def test_cleanup_removes_orphans_and_nothing_else(
    file_store: str, airflow_home: Path, capsys: pytest.CaptureFixture
) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = load_dag("xcom_spill")
    dr = dag.test()
    assert str(dr.state) == "success"
    live = xcom_rows("xcom_spill", dr.run_id)[("produce", -1, "return_value")]["ref"]

    target = store.open_store()
    # an object referenced only from inside a packed value (a forwarded ObjectRef)
    nested = target.put(target.new_key("xcom_spill", "nested"), [b"nested object"])
    packed = spill((ObjectRef(nested.url, nested.size, nested.sha256, "bytes"), "extra"))
    assert "packed" in packed
    XComModel.set(
        "forwarded", packed, dag_id="xcom_spill", task_id="consume", run_id=dr.run_id, serialize=False
    )
    orphan = target.put(target.new_key("xcom_spill", "gone"), [b"orphan"]).url
    young_orphan = target.put(target.new_key("xcom_spill", "gone"), [b"just uploaded"]).url
    foreign = Path(file_store[len("file://") :]) / "not-ours.txt"
    foreign.write_text("someone else's file")
    for url in (live, nested.url, orphan, foreign.as_uri()):
        age(url, 2 * DAY)
    before = urls(file_store)
    assert before == {live, nested.url, orphan, young_orphan, foreign.as_uri()}

    code, out = cleanup(capsys, "--dry-run")
    assert code == 0
    assert f"would delete {orphan}" in out
    assert "4 spilled objects, 2 referenced by XCom rows, 1 orphans to delete" in out
    assert "1 unreferenced but younger than 86400 s kept" in out
    assert urls(file_store) == before

    code, out = cleanup(capsys)
    assert code == 0 and f"deleted {orphan}" in out
    assert urls(file_store) == before - {orphan}

    # Deleting the run (REST API, UI, `airflow db clean`) drops the rows without purge:
    # their objects become orphans, and the next cleanup removes exactly those.
    with create_session() as session:
        session.delete(session.merge(dr))
    code, out = cleanup(capsys, "--min-age-seconds", "3600")
    assert code == 0
    assert f"deleted {live}" in out and f"deleted {nested.url}" in out
    assert urls(file_store) == {young_orphan, foreign.as_uri()}

    code, out = cleanup(capsys, "--min-age-seconds", "0")
    assert urls(file_store) == {foreign.as_uri()}
    assert foreign.read_text() == "someone else's file"


def test_cleanup_on_s3(s3_store: str, airflow_home: Path, capsys: pytest.CaptureFixture) -> None:
    target = store.open_store()
    kept = spill(np.zeros(100_000), key="k", dag_id="never_ran", run_id="r", task_id="t")
    orphan = target.put(target.new_key("x"), [b"orphan"]).url
    from airflow.models.xcom import XComModel  # noqa: F401 - the table exists, holds no row for either

    code, out = cleanup(capsys, "--min-age-seconds", "0")
    assert code == 0
    assert f"deleted {orphan}" in out and f"deleted {kept['ref']}" in out
    assert urls(s3_store) == set()


def test_console_script_runs_standalone(file_store: str, airflow_home: Path) -> None:
    target = store.open_store()
    orphan = target.put(target.new_key("standalone"), [b"x"]).url
    exe = Path(sys.executable).parent / "airflow-knative"
    result = subprocess.run(
        [str(exe), "xcom-cleanup", "--min-age-seconds", "0", "--dry-run"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"would delete {orphan}" in result.stdout
    assert urls(file_store) == {orphan}


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["xcom-cleanup", "--min-age-seconds", "-1"])
    assert "must not be negative" in capsys.readouterr().err


def test_cleanup_removes_the_bodies_of_deferred_calls_that_never_finished(
    file_store: str, airflow_home: Path, capsys: pytest.CaptureFixture
) -> None:
    """A deferred call's large request body waits in the store for the triggerer; if the
    trigger never runs (its run was deleted, the triggerer lost it), cleanup removes it like
    any other orphan, because every object the provider writes follows one key layout."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_knative.operators import KnativeOperator

    op = KnativeOperator(task_id="big", url="http://127.0.0.1:9", payload="x" * 200_000, deferrable=True)
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="big", map_index=-1)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({"ti": ti, "run_id": "r"})
    body = deferred.value.trigger.body
    assert "ref" in body and body["ref"].startswith(file_store + "/d/r/big/_request/")
    assert urls(file_store) == {body["ref"]}

    code, out = cleanup(capsys, "--min-age-seconds", "0")
    assert code == 0 and f"deleted {body['ref']}" in out
    assert urls(file_store) == set()


def test_cleanup_removes_a_call_record_whole_once_it_is_past_retention(
    file_store: str, airflow_home: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records of calls are not XComs: they go whole, after [knative] record_retention_seconds,
    whatever --min-age-seconds says; a record with a recent part (a running call renews its
    lease) stays whole."""
    from airflow_provider_knative import records

    monkeypatch.setenv("AIRFLOW__KNATIVE__RECORD_RETENTION_SECONDS", str(2 * DAY))
    book = records.Records(store.open_store(), records.INVOCATIONS, owner="pod:1")
    for call in ("old", "running", "fresh"):
        book.claim(call, 1, digest="d", signature="")
    book.finish("old", book.finished("old", 1, 200, b"x"))
    root = Path(file_store[len("file://") :])

    def parts(call: str) -> list[Path]:
        return sorted((root / store.record_folder(records.INVOCATIONS, call)).glob("*"))

    for path in parts("old") + parts("running"):
        age(path.as_uri(), 3 * DAY)
    book.renew("running", 1)  # its lease is fresh: the call runs
    code, out = cleanup(capsys, "--min-age-seconds", "0")
    assert code == 0, out
    assert parts("old") == [] and len(parts("running")) == 2 and len(parts("fresh")) == 1
    assert "records of calls: 3, 1 unchanged for [knative] record_retention_seconds deleted" in out
