"""The runtime lives with what the generated Services give it: a read-only root filesystem.

The manifests set ``readOnlyRootFilesystem: true`` and mount an emptyDir on /tmp. Here the
real runtime process runs in its own mount namespace where every filesystem is remounted
read-only (the host is untouched), with one tmpfs as its temp dir (``TMPDIR``), and serves
calls: imports the DAGs, runs functions, captures their logs, spills a result to S3 (moto).

Needs root and ``unshare`` (CI and the dev machines run as root); skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_process import RuntimeProcess, start_runtime

from airflow_provider_knative import codec, protocol

BASIC = Path(__file__).resolve().parent / "runtime_dags" / "basic"

#: remount every filesystem read-only in this mount namespace, then a tmpfs as scratch space
_READ_ONLY = """
set -e
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;; *) mount -o remount,bind,ro "$m" ;; esac
done
mount -t tmpfs -o size=256m,mode=1777 tmpfs "$TMPDIR"
exec "$@"
"""


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for a mount namespace")


@pytest.fixture
def read_only_runtime(tmp_path: Path, moto_server: str) -> Iterator[RuntimeProcess]:
    home = tmp_path / "airflow-home"  # exists, as /opt/airflow does in the image, and read-only
    (home / "logs").mkdir(parents=True)
    scratch = tmp_path / "tmp"  # the emptyDir
    scratch.mkdir()
    env = {
        "AIRFLOW_HOME": str(home),
        "TMPDIR": str(scratch),
        "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": moto_server,
    }
    wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c", _READ_ONLY, "sh"]
    with start_runtime(BASIC, env=env, timeout=60, wrapper=wrapper) as runtime:
        yield runtime


def test_the_runtime_serves_calls_on_a_read_only_root_filesystem(
    read_only_runtime: RuntimeProcess, s3_store: str, tmp_path: Path
) -> None:
    rt = read_only_runtime
    probe = tmp_path / "written-by-host"
    probe.write_text("the host still writes here; the runtime's namespace cannot")

    resp, result = rt.invoke("runtime_basic/add", 2, b=3)
    assert resp.status_code == 200, (result.error, rt.output())
    assert result.value == 5

    resp, result = rt.invoke("runtime_basic/chatty", "ro", lines=3, pause=0)
    assert resp.status_code == 200, (result.error, rt.output())
    assert result.value == "ro" and "ro print 2" in result.logs and "ro log 2" in result.logs

    settings = protocol.StoreSettings(url=s3_store, inline_max_bytes=64 * 1024, key_prefix="results")
    ctx = {"dag_id": "runtime_basic", "run_id": "manual__ro", "task_id": "make_array"}
    resp, result = rt.invoke("runtime_basic/make_array", 250_000, 0.5, store=settings, context=ctx)
    assert resp.status_code == 200, (result.error, rt.output())
    assert isinstance(result.value, codec.ObjectRef) and result.value.size > 2_000_000  # spilled to S3

    output = rt.output()
    assert "Read-only file system" not in output and "Traceback" not in output, output
    assert not list((tmp_path / "airflow-home").rglob("*.cfg"))  # nothing could be written there
