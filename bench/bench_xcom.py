"""XCom backend benchmark: every number is a ratio against a baseline measured in this run.

    .venv/bin/python bench/bench_xcom.py            # full sizes (~3 minutes, ~4 GB RAM)
    .venv/bin/python bench/bench_xcom.py --quick    # 1/10 sizes, one repetition

Round trip = ``serialize_value`` then ``deserialize_value`` through the store (the value's
own bytes are written and read back; the DB row is not part of either side). Rows:

* DataFrame (4M rows x int64, float64, datetime64, str: 168 MB) on ``file://`` against the
  common-io ``XComObjectStorageBackend`` on ``file://`` (target: >= 12x faster);
* the same DataFrame on a moto S3 server on 127.0.0.1 against raw boto3 ``put_object`` +
  ``get_object`` of the same number of bytes (target: <= 1.5x);
* a 256 MB float64 ndarray on ``file://`` against writing its buffer to a file and reading it
  back into fresh memory (target: <= 1.5x);
* peak RSS increase during a round trip (measured in a child process through the kernel's
  peak-RSS counter, reset just before the round trip) over the payload size (target: <= 1.5x);
* a 1 KB dict against Airflow's default ``BaseXCom`` (target: <= 0.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import running_moto_server

# the peak-RSS child processes share the parent's scratch folder and settings
_WORK = Path(os.environ.get("KNATIVE_BENCH_WORK") or tempfile.mkdtemp(prefix="knative-bench-"))
os.environ.update(
    {
        "KNATIVE_BENCH_WORK": str(_WORK),
        "AIRFLOW_HOME": str(_WORK / "home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__KNATIVE__XCOM_STORE_URL": (_WORK / "store").as_uri(),
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": (_WORK / "commonio").as_uri(),
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "0",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)

Wrapped = namedtuple("Wrapped", "value")  # what deserialize_value receives: an object with .value
MB = 1024 * 1024


def make_frame(rows: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype="int64"),
            "value": rng.random(rows),
            "ts": pd.date_range("2024-01-01", periods=rows, freq="s"),
            "name": pd.array([f"user-{i:05d}" for i in rng.integers(0, 99999, rows)], dtype="str"),
        }
    )


def make_array(nbytes: int) -> Any:
    import numpy as np

    return np.random.default_rng(1).random(nbytes // 8)


def payload_bytes(value: Any) -> int:
    if hasattr(value, "memory_usage"):
        return int(value.memory_usage(deep=True, index=False).sum())
    return int(value.nbytes)


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Fastest of ``repeat`` runs (the least disturbed by the rest of the machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def round_trip(backend: Any, value: Any, *, check: bool = False) -> Any:
    stored = backend.serialize_value(value, key="return_value", dag_id="bench", run_id="r", task_id="t")
    out = backend.deserialize_value(Wrapped(stored))
    if check:
        _check_equal(value, out)
    if hasattr(backend, "purge"):
        try:
            backend.purge(Wrapped(stored))
        except TypeError:  # common-io's purge takes a session argument
            backend.purge(Wrapped(stored), None)
    return out


def _check_equal(a: Any, b: Any) -> None:
    import numpy as np
    import pandas as pd

    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    else:
        assert a == b, (a, b)


# --------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------


def bench_frame_file(frame: Any, repeat: int) -> tuple[float, float]:
    from airflow.providers.common.io.xcom.backend import XComObjectStorageBackend

    from airflow_provider_knative.xcom import KnativeXComBackend

    round_trip(KnativeXComBackend, frame, check=True)
    ours = best(lambda: round_trip(KnativeXComBackend, frame), repeat)
    round_trip(XComObjectStorageBackend, frame, check=True)
    theirs = best(lambda: round_trip(XComObjectStorageBackend, frame), max(1, repeat - 1))
    return ours, theirs


def bench_frame_s3(frame: Any, endpoint: str, repeat: int) -> tuple[float, float, float]:
    """Ours with the default transfer settings, ours with one stream per object, raw boto3."""
    import boto3

    from airflow_provider_knative import codec, store
    from airflow_provider_knative.xcom import KnativeXComBackend

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    os.environ["AIRFLOW__KNATIVE__S3_ENDPOINT_URL"] = endpoint
    os.environ["AIRFLOW__KNATIVE__XCOM_STORE_URL"] = "s3://bench/xcom"
    times = []
    try:
        # default: 16 MiB parts, 8 in parallel (what real S3 wants); then one stream per
        # object, because moto copies the whole object for every ranged GET it answers
        for chunk in (None, str(1024 * MB)):
            if chunk:
                os.environ["AIRFLOW__KNATIVE__TRANSFER_CHUNK_BYTES"] = chunk
            store._cache.clear()
            round_trip(KnativeXComBackend, frame, check=True)
            times.append(best(lambda: round_trip(KnativeXComBackend, frame), repeat))
    finally:
        os.environ.pop("AIRFLOW__KNATIVE__TRANSFER_CHUNK_BYTES", None)
        os.environ["AIRFLOW__KNATIVE__XCOM_STORE_URL"] = (_WORK / "store").as_uri()
        store._cache.clear()
    body = codec.dumps(frame)  # the same number of bytes, already encoded: the transfer alone

    def raw() -> None:
        client.put_object(Bucket="bench", Key="raw", Body=body)
        got = client.get_object(Bucket="bench", Key="raw")["Body"].read()
        assert len(got) == len(body)

    raw()
    theirs = best(raw, repeat)
    return times[0], times[1], theirs


def bench_array_file(array: Any, repeat: int) -> tuple[float, float]:
    import numpy as np

    from airflow_provider_knative.xcom import KnativeXComBackend

    path = _WORK / "raw.bin"

    def raw() -> None:
        with open(path, "wb") as fh:
            fh.write(memoryview(array).cast("B"))
        with open(path, "rb", buffering=0) as fh:
            out = np.empty(array.shape, array.dtype)
            fh.readinto(memoryview(out).cast("B"))
        path.unlink()

    round_trip(KnativeXComBackend, array, check=True)
    raw()
    theirs = best(raw, repeat)
    ours = best(lambda: round_trip(KnativeXComBackend, array), repeat)
    return ours, theirs


def bench_small(repeat: int) -> tuple[float, float]:
    import timeit

    from airflow.sdk.bases.xcom import BaseXCom

    from airflow_provider_knative.xcom import KnativeXComBackend

    value = {
        "run": "manual__2024-01-01T00:00:00+00:00",
        "rows": [{"id": i, "name": f"item-{i}", "score": i * 1.5, "ok": i % 2 == 0} for i in range(16)],
    }
    assert 900 <= len(json.dumps(value)) <= 1200, len(json.dumps(value))
    for backend in (KnativeXComBackend, BaseXCom):
        assert round_trip(backend, value) == value
    number = 2000 if repeat > 1 else 500

    def per_op(backend: Any) -> float:
        def once() -> None:
            backend.deserialize_value(
                Wrapped(backend.serialize_value(value, key="k", dag_id="d", run_id="r", task_id="t"))
            )

        return min(timeit.repeat(once, number=number, repeat=max(3, repeat))) / number

    return per_op(KnativeXComBackend), per_op(BaseXCom)


def _peak_child(kind: str, size: int, backend: str) -> None:
    """In a child process: build the value, reset the peak-RSS counter, round trip, report."""
    value = make_frame(size) if kind == "frame" else make_array(size)
    if backend == "knative":
        from airflow_provider_knative.xcom import KnativeXComBackend as cls
    else:
        from airflow.providers.common.io.xcom.backend import XComObjectStorageBackend as cls
    round_trip(cls, value)  # warm up imports and allocator pools
    import gc

    gc.collect()
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    out = round_trip(cls, value)
    peak = _rss_kib("VmHWM")
    del out
    print(json.dumps({"increase": (peak - before) * 1024, "payload": payload_bytes(value)}))


def _rss_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    assert match, field
    return int(match.group(1))


def bench_peak(kind: str, size: int, backend: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--peak-child", kind, str(size), backend],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["increase"], data["payload"]


# --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1/10 sizes, one repetition (a smoke run)")
    parser.add_argument("--peak-child", nargs=3, metavar=("KIND", "SIZE", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        kind, size, backend = args.peak_child
        _peak_child(kind, int(size), backend)
        return 0

    rows = 400_000 if args.quick else 4_000_000
    array_bytes = (26 if args.quick else 256) * MB
    repeat = 1 if args.quick else 3

    import airflow  # noqa: F401  (configure Airflow before the backends import it)

    results: list[tuple[str, str, float, str, str]] = []
    frame = make_frame(rows)
    label = f"DataFrame {rows} x 4 ({payload_bytes(frame) / 1e6:.0f} MB)"

    ours, theirs = bench_frame_file(frame, repeat)
    results.append(
        (
            f"{label}, file://",
            f"{ours:.3f} s vs common-io {theirs:.3f} s",
            theirs / ours,
            ">= 12x faster",
            "x faster",
        )
    )
    with running_moto_server() as endpoint:
        ours, single, theirs = bench_frame_s3(frame, endpoint, repeat)
    results.append(
        (
            f"{label}, S3 (moto)",
            f"{ours:.3f} s vs boto3 put+get {theirs:.3f} s",
            ours / theirs,
            "<= 1.5x",
            "x",
        )
    )
    results.append(
        (
            f"{label}, S3 (moto), one stream per object",
            f"{single:.3f} s vs boto3 put+get {theirs:.3f} s",
            single / theirs,
            "(info: transfer_chunk_bytes=1GiB)",
            "x",
        )
    )
    del frame

    array = make_array(array_bytes)
    ours, theirs = bench_array_file(array, repeat)
    results.append(
        (
            f"ndarray float64 {array.nbytes / 1e6:.0f} MB, file://",
            f"{ours:.3f} s vs file write+read {theirs:.3f} s",
            ours / theirs,
            "<= 1.5x",
            "x",
        )
    )
    del array

    for kind, size, what in (("array", array_bytes, "ndarray"), ("frame", rows, "DataFrame")):
        increase, payload = bench_peak(kind, size, "knative")
        results.append(
            (
                f"peak RSS increase, {what} round trip",
                f"+{increase / 1e6:.0f} MB for {payload / 1e6:.0f} MB",
                increase / payload,
                "<= 1.5x" if kind == "array" else "(info)",
                "x payload",
            )
        )
    increase, payload = bench_peak("frame", rows, "common-io")
    results.append(
        (
            "peak RSS increase, DataFrame, common-io",
            f"+{increase / 1e6:.0f} MB for {payload / 1e6:.0f} MB",
            increase / payload,
            "(baseline)",
            "x payload",
        )
    )

    ours, theirs = bench_small(repeat)
    results.append(
        ("1 KB dict", f"{ours * 1e6:.1f} us vs BaseXCom {theirs * 1e6:.1f} us", ours / theirs, "<= 0.5x", "x")
    )

    print()
    print(f"| case ({'--quick' if args.quick else 'full'}) | measured | ratio | target |")
    print("|---|---|---|---|")
    for name, detail, ratio, target, unit in results:
        print(f"| {name} | {detail} | {ratio:.2f}{unit} | {target} |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if not any(a == "--peak-child" for a in sys.argv):
            shutil.rmtree(_WORK, ignore_errors=True)
