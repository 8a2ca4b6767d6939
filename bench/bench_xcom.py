"""XCom backend benchmark: every figure is a ratio against a baseline measured in this run.

    python bench/bench_xcom.py                 # the targets table (~5 minutes, ~4 GB RAM)
    python bench/bench_xcom.py --quick         # 1/10 sizes, 3 rounds (a smoke run)
    python bench/bench_xcom.py --sweep         # scaling curves 1 KB .. 1 GB -> docs/bench/*.png

Round trip = ``serialize_value`` then ``deserialize_value`` through the store (the value's
bytes are written and read back and checked against their digest; the DB row is not part of
either side). Every row times its contenders interleaved, in shuffled order, several rounds,
and reports the ratio of medians (``bench/measure.py``).

Baselines, and why each is the fair one:

* ``file://`` DataFrame: **the limit** is Arrow IPC straight to a file and back
  (``Table.from_pandas`` -> IPC stream -> file -> read -> ``to_pandas``), i.e. what the value
  costs to move without any backend; also common-io's ``XComObjectStorageBackend``.
* ``file://`` ndarray: **the limit** is writing its buffer to a file and reading it back into
  fresh memory.
* S3: **boto3's managed transfer** (``upload_fileobj`` + ``download_fileobj``) with the same
  part size and concurrency as ours (16 MiB, 8), of the same bytes already encoded, on the
  same moto server; and single-stream ``put_object`` + ``get_object``. Moto favours the single
  stream: it answers each ranged GET by copying the whole object first, so a parallel
  download of an n-part object copies it n times on the server (boto3's managed download pays
  that just like ours). On real S3, ranged parallel GETs are the fast way.
* A 1 KB dict against Airflow's default ``BaseXCom``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from measure import interleaved, peak_rss_reset, rss_kib  # noqa: E402
from servers import running_moto_server  # noqa: E402

# the peak-RSS child processes share the parent's scratch folder and settings
_WORK = Path(os.environ.get("KNATIVE_BENCH_WORK") or tempfile.mkdtemp(prefix="knative-bench-"))
INLINE_MAX = 64 * 1024
os.environ.update(
    {
        "KNATIVE_BENCH_WORK": str(_WORK),
        "AIRFLOW_HOME": str(_WORK / "home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__KNATIVE__XCOM_STORE_URL": (_WORK / "store").as_uri(),
        "AIRFLOW__KNATIVE__XCOM_INLINE_MAX_BYTES": str(INLINE_MAX),
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": (_WORK / "commonio").as_uri(),
        # the same threshold as ours: small values stay in the DB row for both
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": str(INLINE_MAX),
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)

Wrapped = namedtuple("Wrapped", "value")  # what deserialize_value receives: an object with .value
MB = 1024 * 1024
PART = 16 * MB  # ours and boto3's managed transfer alike
CONCURRENCY = 8
#: bytes per row of make_frame's DataFrame (int64, float64, datetime64, ~10-char str)
ROW_BYTES = 42


def make_frame(rows: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    pool = pd.array([f"user-{i:05d}" for i in range(100_000)], dtype="str")
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype="int64"),
            "value": rng.random(rows),
            "ts": pd.date_range("2024-01-01", periods=rows, freq="s"),
            "name": pool.take(rng.integers(0, 100_000, rows)),
        }
    )


def make_array(nbytes: int) -> Any:
    import numpy as np

    return np.random.default_rng(1).random(max(1, nbytes // 8))


def payload_bytes(value: Any) -> int:
    if hasattr(value, "memory_usage"):
        return int(value.memory_usage(deep=True, index=False).sum())
    return int(value.nbytes)


def backend_of(name: str) -> Any:
    if name == "knative":
        from airflow_provider_knative.xcom import KnativeXComBackend

        return KnativeXComBackend
    from airflow.providers.common.io.xcom.backend import XComObjectStorageBackend

    return XComObjectStorageBackend


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
# baselines
# --------------------------------------------------------------------------------------


def limit_frame(frame: Any, *, check: bool = False) -> Any:
    """The DataFrame's limit: Arrow IPC to a file and back, no backend, no checksum."""
    import pyarrow as pa

    path = str(_WORK / "limit.arrow")
    table = pa.Table.from_pandas(frame, preserve_index=None)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=128 * 1024)
    with pa.OSFile(path, "rb") as source:
        out = pa.ipc.open_stream(source).read_all().to_pandas()
    os.unlink(path)
    if check:
        _check_equal(frame, out)
    return out


def limit_array(array: Any) -> Any:
    """The ndarray's limit: its buffer written to a file and read back into fresh memory."""
    import numpy as np

    path = _WORK / "raw.bin"
    with open(path, "wb") as fh:
        fh.write(memoryview(array).cast("B"))
    out = np.empty(array.shape, array.dtype)
    with open(path, "rb", buffering=0) as fh:
        fh.readinto(memoryview(out).cast("B"))
    path.unlink()
    return out


def limit_of(value: Any) -> Callable[[], Any]:
    return (lambda: limit_frame(value)) if hasattr(value, "memory_usage") else (lambda: limit_array(value))


class S3Baselines:
    """boto3 itself, on the same server, moving the same (already encoded) bytes."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.client = boto3.client(
            "s3", endpoint_url=endpoint, config=Config(max_pool_connections=2 * CONCURRENCY)
        )
        self.bucket = bucket
        self.config = TransferConfig(
            multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=CONCURRENCY
        )

    def managed(self, body: bytes) -> None:
        """``upload_fileobj`` + ``download_fileobj`` (boto3's managed transfer)."""
        self.client.upload_fileobj(io.BytesIO(body), self.bucket, "raw/managed", Config=self.config)
        out = io.BytesIO()
        self.client.download_fileobj(self.bucket, "raw/managed", out, Config=self.config)
        assert out.getbuffer().nbytes == len(body)
        self.client.delete_object(Bucket=self.bucket, Key="raw/managed")

    def single(self, body: bytes) -> None:
        """One ``put_object`` and one ``get_object``: one stream each way."""
        self.client.put_object(Bucket=self.bucket, Key="raw/single", Body=body)
        got = self.client.get_object(Bucket=self.bucket, Key="raw/single")["Body"].read()
        assert len(got) == len(body)
        self.client.delete_object(Bucket=self.bucket, Key="raw/single")


# --------------------------------------------------------------------------------------
# the targets table
# --------------------------------------------------------------------------------------

Row = namedtuple("Row", "case measured ratio unit target")


def _verdict(ratio: float, target: str) -> str:
    if target.startswith("<="):
        return "met" if ratio <= float(target[2:].strip().rstrip("x")) else "missed"
    if target.startswith(">="):
        return "met" if ratio >= float(target[2:].strip().rstrip("x")) else "missed"
    return ""


def file_rows(frame: Any, array: Any, repeats: int) -> list[Row]:
    knative, commonio = backend_of("knative"), backend_of("common-io")
    round_trip(knative, frame, check=True)
    round_trip(commonio, frame, check=True)
    limit_frame(frame, check=True)
    label = f"DataFrame {len(frame):,} x 4 ({payload_bytes(frame) / 1e6:.0f} MB)"
    t = interleaved(
        {
            "knative": lambda: round_trip(knative, frame),
            "limit": lambda: limit_frame(frame),
            "common-io": lambda: round_trip(commonio, frame),
        },
        repeats,
    )
    rows = [
        Row(
            f"{label}, file:// vs the limit (Arrow IPC + file write/read)",
            f"{t.median('knative'):.3f} s vs {t.median('limit'):.3f} s",
            t.ratio("knative", "limit"),
            "x",
            "<= 1.1x",
        ),
        Row(
            f"{label}, file:// vs common-io",
            f"{t.median('knative'):.3f} s vs {t.median('common-io'):.3f} s",
            t.ratio("common-io", "knative"),
            "x faster",
            "(info)",
        ),
    ]
    round_trip(knative, array, check=True)
    t = interleaved(
        {"knative": lambda: round_trip(knative, array), "limit": lambda: limit_array(array)}, repeats
    )
    rows.append(
        Row(
            f"ndarray float64 {array.nbytes / 1e6:.0f} MB, file:// vs the limit (file write/read)",
            f"{t.median('knative'):.3f} s vs {t.median('limit'):.3f} s",
            t.ratio("knative", "limit"),
            "x",
            "<= 1.1x",
        )
    )
    return rows


def digest_rows(array: Any, repeats: int) -> list[Row]:
    """The same ndarray round trip (encode, store, verify, decode) with each checksum."""
    from airflow_provider_knative import spill, store

    owner = spill.Owner("bench", "r", "t")

    def ours(target: Any) -> None:
        ref = spill.encode_or_spill(array, INLINE_MAX, owner, "digest", target)
        spill.load_ref(ref, target)
        target.delete(ref.url)

    contenders: dict[str, Callable[[], Any]] = {"limit": lambda: limit_array(array)}
    for algorithm in store.DIGESTS:
        target = store.FileStore((_WORK / "store").as_uri(), digest=algorithm)
        contenders[algorithm] = lambda target=target: ours(target)
    t = interleaved(contenders, repeats)
    return [
        Row(
            f"ndarray {array.nbytes / 1e6:.0f} MB, file://, checksum {algorithm}",
            f"{t.median(algorithm):.3f} s vs {t.median('limit'):.3f} s",
            t.ratio(algorithm, "limit"),
            "x",
            "(info)",
        )
        for algorithm in store.DIGESTS
    ]


def s3_rows(frame: Any, array: Any, endpoint: str, repeats: int) -> list[Row]:
    from airflow_provider_knative import codec, store

    bucket = "bench"
    base = S3Baselines(endpoint, bucket)
    base.client.create_bucket(Bucket=bucket)
    os.environ.update(
        {
            "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": endpoint,
            "AIRFLOW__KNATIVE__XCOM_STORE_URL": f"s3://{bucket}/xcom",
            "AIRFLOW__KNATIVE__TRANSFER_CHUNK_BYTES": str(PART),
            "AIRFLOW__KNATIVE__TRANSFER_CONCURRENCY": str(CONCURRENCY),
        }
    )
    store.forget_stores()
    knative = backend_of("knative")
    rows = []
    try:
        for value, label in (
            (frame, f"DataFrame {payload_bytes(frame) / 1e6:.0f} MB"),
            (array, f"ndarray {array.nbytes / 1e6:.0f} MB"),
        ):
            round_trip(knative, value, check=True)
            body = codec.dumps(value)  # the same bytes, encoded already: the transfer alone
            t = interleaved(
                {
                    "knative": lambda value=value: round_trip(knative, value),
                    "managed": lambda body=body: base.managed(body),
                    "single": lambda body=body: base.single(body),
                },
                repeats,
            )
            del body
            rows.append(
                Row(
                    f"{label}, S3 (moto) vs boto3 managed transfer (16 MiB parts, 8 threads)",
                    f"{t.median('knative'):.3f} s vs {t.median('managed'):.3f} s",
                    t.ratio("knative", "managed"),
                    "x",
                    "<= 1.2x",
                )
            )
            rows.append(
                Row(
                    f"{label}, S3 (moto) vs single-stream put_object + get_object",
                    f"{t.median('knative'):.3f} s vs {t.median('single'):.3f} s",
                    t.ratio("knative", "single"),
                    "x",
                    "(info: moto favours it)",
                )
            )
    finally:
        for name in ("S3_ENDPOINT_URL", "TRANSFER_CHUNK_BYTES", "TRANSFER_CONCURRENCY"):
            os.environ.pop(f"AIRFLOW__KNATIVE__{name}", None)
        os.environ["AIRFLOW__KNATIVE__XCOM_STORE_URL"] = (_WORK / "store").as_uri()
        store.forget_stores()
    return rows


def small_row(repeats: int) -> Row:
    import timeit

    from airflow.sdk.bases.xcom import BaseXCom

    knative = backend_of("knative")
    value = {
        "run": "manual__2024-01-01T00:00:00+00:00",
        "rows": [{"id": i, "name": f"item-{i}", "score": i * 1.5, "ok": i % 2 == 0} for i in range(16)],
    }
    assert 900 <= len(json.dumps(value)) <= 1200, len(json.dumps(value))
    for backend in (knative, BaseXCom):
        assert round_trip(backend, value) == value
    number = 2000 if repeats > 3 else 500

    def per_op(backend: Any) -> float:
        def once() -> None:
            backend.deserialize_value(
                Wrapped(backend.serialize_value(value, key="k", dag_id="d", run_id="r", task_id="t"))
            )

        return min(timeit.repeat(once, number=number, repeat=max(3, repeats))) / number

    ours, theirs = per_op(knative), per_op(BaseXCom)
    return Row(
        "1 KB dict vs BaseXCom",
        f"{ours * 1e6:.1f} us vs {theirs * 1e6:.1f} us",
        ours / theirs,
        "x",
        "<= 0.5x",
    )


# --------------------------------------------------------------------------------------
# peak RSS, in child processes (the kernel's high-water mark, reset just before)
# --------------------------------------------------------------------------------------


def _peak_child(kind: str, size: int, contender: str) -> None:
    """In a child process: build the value, reset the peak-RSS counter, round trip, report.

    The warm-up trip (imports, allocator set-up) moves a *small* value of the same kind: a
    full-size one would leave its memory in Arrow's or malloc's pools, and the measured trip
    would then reuse it and look free.
    """
    value = make_frame(size) if kind == "frame" else make_array(size)
    small = make_frame(1000) if kind == "frame" else make_array(8000)

    def trip_of(v: Any) -> Callable[[], Any]:
        if contender == "limit":
            return limit_of(v)
        backend = backend_of(contender)
        return lambda: round_trip(backend, v)

    trip_of(small)()
    import gc

    gc.collect()
    before = peak_rss_reset()
    out = trip_of(value)()
    peak = rss_kib("VmHWM")
    del out
    print(json.dumps({"increase": (peak - before) * 1024, "payload": payload_bytes(value)}))


def bench_peak(kind: str, size: int, contender: str) -> tuple[int, int]:
    """Peak RSS increase and payload size of one round trip, measured in a fresh process.

    Tried twice: a child of the common-io contender has been seen to abort once (SIGABRT
    inside a native library) on this shared machine; a second failure raises.
    """
    for attempt in (1, 2):
        out = subprocess.run(
            [sys.executable, __file__, "--peak-child", kind, str(size), contender],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        if out.returncode == 0:
            data = json.loads(out.stdout.strip().splitlines()[-1])
            return data["increase"], data["payload"]
        print(
            f"  peak-RSS child {contender} {kind} {size} failed ({out.returncode}), try {attempt}", flush=True
        )
    raise RuntimeError(f"peak-RSS child failed twice:\n{out.stderr[-2000:]}")


def peak_rows(rows: int, array_bytes: int) -> list[Row]:
    out = []
    for kind, size, what, target in (
        ("array", array_bytes, "ndarray", "<= 1.5x"),
        ("frame", rows, "DataFrame", "(info)"),
    ):
        increase, payload = bench_peak(kind, size, "knative")
        out.append(
            Row(
                f"peak RSS increase, {what} round trip",
                f"+{increase / 1e6:.0f} MB for {payload / 1e6:.0f} MB",
                increase / payload,
                "x payload",
                target,
            )
        )
    increase, payload = bench_peak("frame", rows, "common-io")
    out.append(
        Row(
            "peak RSS increase, DataFrame, common-io",
            f"+{increase / 1e6:.0f} MB for {payload / 1e6:.0f} MB",
            increase / payload,
            "x payload",
            "(baseline)",
        )
    )
    return out


# --------------------------------------------------------------------------------------
# scaling curves
# --------------------------------------------------------------------------------------

SWEEP_SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000]


def _repeats_for(nbytes: int) -> int:
    if nbytes <= 1_000_000:
        return 100
    if nbytes <= 100_000_000:
        return 5
    return 3


def sweep(sizes: list[int], out_dir: Path, *, rss_from: int = 1_000_000) -> dict[str, Any]:
    """Round-trip time and peak RSS of a DataFrame from 1 KB to 1 GB; draws two PNGs."""
    contenders = ("knative", "common-io", "limit")
    times: dict[str, list[float | None]] = {c: [] for c in contenders}
    peaks: dict[str, list[float | None]] = {c: [] for c in contenders}
    payloads: list[int] = []
    for size in sizes:
        rows = max(1, size // ROW_BYTES)
        frame = make_frame(rows)
        payloads.append(payload_bytes(frame))
        fns = {
            "knative": lambda frame=frame: round_trip(backend_of("knative"), frame),
            "common-io": lambda frame=frame: round_trip(backend_of("common-io"), frame),
            "limit": lambda frame=frame: limit_frame(frame),
        }
        round_trip(backend_of("knative"), frame, check=True)
        t = interleaved(fns, _repeats_for(size), warmup=3 if size <= 1_000_000 else 1)
        del frame
        for c in contenders:
            times[c].append(t.median(c))
            peaks[c].append(bench_peak("frame", rows, c)[0] if size >= rss_from else None)
        line = ", ".join(f"{c} {times[c][-1] * 1e3:.2f} ms" for c in contenders)
        print(f"  {payloads[-1] / 1e6:10.3f} MB: {line}", flush=True)
    result = {"payload_bytes": payloads, "seconds": times, "peak_rss_increase_bytes": peaks}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "xcom_sweep.json").write_text(json.dumps(result, indent=1))
    draw_sweep(result, out_dir)
    return result


def draw_sweep(result: dict[str, Any], out_dir: Path) -> None:
    """The two PNGs of a sweep (``--replot`` redraws them from ``xcom_sweep.json``)."""
    from plots import Series, plot_curves

    payloads, times, peaks = result["payload_bytes"], result["seconds"], result["peak_rss_increase_bytes"]
    time_png = plot_curves(
        out_dir / "xcom_time.png",
        [Series(c, payloads, v) for c, v in times.items()],
        title="XCom round trip time against payload size (file://)",
        xlabel="payload (in-memory DataFrame size)",
        ylabel="seconds",
        xunit="bytes",
        note="DataFrame (int64, float64, datetime64, str); median of interleaved runs; 2-core VM",
        vline=(INLINE_MAX, "inline limit (64 KiB): below it, the value stays in the DB row"),
    )
    measured = [p for p, v in zip(payloads, peaks["knative"], strict=True) if v is not None]
    rss_png = plot_curves(
        out_dir / "xcom_rss.png",
        [
            *(Series(c, payloads, v) for c, v in peaks.items()),
            Series("= payload size", measured, [float(p) for p in measured], reference=True),
        ],
        title="Peak RSS increase of one XCom round trip against payload size (file://)",
        xlabel="payload (in-memory DataFrame size)",
        ylabel="peak RSS increase (incl. the decoded value)",
        xunit="bytes",
        yunit="bytes",
        note="kernel high-water mark (VmHWM) reset before the round trip, in a fresh process",
    )
    print(f"plots: {time_png} {rss_png}")


# --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1/10 sizes, 3 rounds (a smoke run)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per row (default 7)")
    parser.add_argument(
        "--sweep", action="store_true", help="scaling curves 1 KB .. 1 GB instead of the table"
    )
    parser.add_argument("--max-bytes", type=float, default=1e9, help="largest sweep payload (default 1e9)")
    parser.add_argument("--plots-dir", type=Path, default=HERE.parent / "docs" / "bench")
    parser.add_argument("--replot", action="store_true", help="redraw the sweep's PNGs from its JSON")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--skip-digests", action="store_true", help="no per-checksum rows")
    parser.add_argument("--skip-peak", action="store_true")
    parser.add_argument(
        "--peak-child", nargs=3, metavar=("KIND", "SIZE", "CONTENDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.peak_child:
        kind, size, contender = args.peak_child
        _peak_child(kind, int(size), contender)
        return 0

    if args.replot:
        draw_sweep(json.loads((args.plots_dir / "xcom_sweep.json").read_text()), args.plots_dir)
        return 0

    import airflow  # noqa: F401  (configure Airflow before the backends import it)

    if args.sweep:
        sweep([s for s in SWEEP_SIZES if s <= args.max_bytes], args.plots_dir)
        return 0

    rows = 400_000 if args.quick else 4_000_000
    array_bytes = (26 if args.quick else 256) * MB
    repeats = 3 if args.quick else args.repeats
    frame, array = make_frame(rows), make_array(array_bytes)

    results = file_rows(frame, array, repeats)
    if not args.skip_digests:
        results += digest_rows(array, repeats)
    if not args.skip_s3:
        with running_moto_server() as endpoint:
            results += s3_rows(frame, array, endpoint, repeats)
    del frame, array
    if not args.skip_peak:
        results += peak_rows(rows, array_bytes)
    results.append(small_row(repeats))

    print()
    print(
        f"| case ({'--quick' if args.quick else 'full'}, median of {repeats} interleaved rounds) "
        "| measured | ratio | target | |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.case} | {r.measured} | {r.ratio:.2f}{r.unit} | {r.target} | {_verdict(r.ratio, r.target)} |"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if not any(a == "--peak-child" for a in sys.argv):
            shutil.rmtree(_WORK, ignore_errors=True)
