"""What the record of a call and process isolation cost per call, measured in one run.

    .venv/bin/python bench/bench_records.py [--calls 200] [--rounds 7] [--concurrency 8]

Runtimes (``airflow-knative serve``, real processes on 127.0.0.1) serve the same no-op
``@task.knative`` function (``tests/runtime_dags/basic``), one per configuration:

- ``thread, memory``: thread isolation, no store: the in-memory ledger of before (one replica only);
- ``process, memory``: process isolation (the default), no store;
- ``process, file://``: the default with the record of every call in a ``file://`` store
  (a claim written create-only before the call, the outcome after it: two small writes);
- ``process, s3://``: the same on an S3 server (moto, on loopback);
- ``thread, file://``: thread isolation with records.

Each runtime is also called with live output on (``Accept: application/x-knative-frames``, as
the operator and the trigger call it) and off, for a function that prints nothing: what
streaming costs when there is nothing to stream.

Every call carries its own invocation id (as Airflow's calls do), so each one claims and
records. One round sends ``--calls`` calls to each runtime, sequentially on one keep-alive
connection (latency: the median of the round's calls) and then with ``--concurrency`` at once
(throughput); rounds interleave the runtimes in shuffled order so a busy neighbour hits all
alike. Prints medians over rounds and the ratios that matter:

- the record's added latency: ``process, file://`` and ``process, s3://`` against ``process, memory``;
- what process isolation costs: ``process, memory`` against ``thread, memory``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from runtime_process import RuntimeProcess, start_runtime  # noqa: E402
from servers import running_moto_server  # noqa: E402

from airflow_provider_knative import protocol  # noqa: E402

DAGS = REPO / "tests" / "runtime_dags" / "basic"
FUNCTION = "runtime_basic/noop"


def _body(source_hash: str) -> bytes:
    return protocol.Invocation(FUNCTION, source_hash, invocation_id=f"bench/{uuid.uuid4().hex}").encode()


def _headers(stream: bool) -> dict[str, str]:
    headers = {"content-type": protocol.CONTENT_TYPE}
    if stream:
        headers["accept"] = f"{protocol.FRAMES_CONTENT_TYPE}, {protocol.CONTENT_TYPE};q=0.9"
    return headers


def _check(answer: httpx.Response) -> None:
    if answer.headers.get("content-type", "").startswith(protocol.FRAMES_CONTENT_TYPE):
        (end,) = [f for f in protocol.FrameReader().feed(answer.content) if "end" in f]
        assert end["end"]["status"] == 200, end
    else:
        assert answer.status_code == 200, answer.content[:300]


def _latency(rt: RuntimeProcess, source_hash: str, calls: int, stream: bool = False) -> float:
    """Median seconds of ``calls`` sequential calls on one connection."""
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(calls):
            body = _body(source_hash)
            start = time.perf_counter()
            answer = client.post(rt.url + protocol.INVOKE_PATH, content=body, headers=_headers(stream))
            times.append(time.perf_counter() - start)
            _check(answer)
    return statistics.median(times)


async def _throughput(
    rt: RuntimeProcess, source_hash: str, calls: int, concurrency: int, stream: bool = False
) -> float:
    """Calls per second with ``concurrency`` calls in flight."""
    queue = list(range(calls))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            queue.pop()
            answer = await client.post(
                rt.url + protocol.INVOKE_PATH, content=_body(source_hash), headers=_headers(stream)
            )
            _check(answer)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return calls / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="bench-records-"))
    with ExitStack() as stack:
        moto = stack.enter_context(running_moto_server())
        import boto3

        boto3.client("s3", endpoint_url=moto, region_name="us-east-1").create_bucket(Bucket="records")
        common = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__KNATIVE__XCOM_STORE_URL": "",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        file_store = (home / "store").as_uri()
        configs = {
            "thread, memory": {"AIRFLOW__KNATIVE__ISOLATION": "thread"},
            "process, memory": {"AIRFLOW__KNATIVE__ISOLATION": "process"},
            "process, file://": {
                "AIRFLOW__KNATIVE__ISOLATION": "process",
                "AIRFLOW__KNATIVE__XCOM_STORE_URL": file_store,
            },
            "process, s3://": {
                "AIRFLOW__KNATIVE__ISOLATION": "process",
                "AIRFLOW__KNATIVE__XCOM_STORE_URL": "s3://records/bench",
                "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": moto,
            },
            "thread, file://": {
                "AIRFLOW__KNATIVE__ISOLATION": "thread",
                "AIRFLOW__KNATIVE__XCOM_STORE_URL": file_store,
            },
        }
        runtimes = {
            name: stack.enter_context(start_runtime(DAGS, env={**common, **env}, timeout=120))
            for name, env in configs.items()
        }
        hashes = {name: rt.functions()[FUNCTION] for name, rt in runtimes.items()}
        # each runtime without and with live output (a call that prints nothing)
        contenders = [(name, False) for name in runtimes] + [
            ("process, file://", True),
            ("thread, memory", True),
        ]
        label = {c: c[0] + (", streaming" if c[1] else "") for c in contenders}
        latency: dict[str, list[float]] = {label[c]: [] for c in contenders}
        rate: dict[str, list[float]] = {label[c]: [] for c in contenders}
        for name, rt in runtimes.items():  # warm up: connections, the fork server's pages
            _latency(rt, hashes[name], 20)
        rng = random.Random(0)
        order = list(contenders)
        for round_ in range(args.rounds):
            rng.shuffle(order)
            for name, stream in order:
                rt, key = runtimes[name], label[(name, stream)]
                latency[key].append(_latency(rt, hashes[name], args.calls, stream))
                rate[key].append(
                    asyncio.run(_throughput(rt, hashes[name], args.calls, args.concurrency, stream))
                )
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    p50 = {name: statistics.median(v) for name, v in latency.items()}
    rps = {name: statistics.median(v) for name, v in rate.items()}
    print(f"\n{'runtime':<30} {'p50 (1 conn)':>14} {'calls/s (' + str(args.concurrency) + ' conns)':>20}")
    for name in latency:
        print(f"{name:<30} {p50[name] * 1e3:>11.2f} ms {rps[name]:>20.0f}")
    print()
    for contender, baseline, what in (
        ("process, file://", "process, memory", "record on file://, added latency"),
        ("process, s3://", "process, memory", "record on S3 (moto), added latency"),
        ("thread, file://", "thread, memory", "record on file:// with thread isolation"),
        ("process, memory", "thread, memory", "process isolation against threads"),
        ("process, file://, streaming", "process, file://", "live output on, a call that prints nothing"),
        ("thread, memory, streaming", "thread, memory", "live output on (thread isolation, no store)"),
    ):
        print(
            f"{what}: p50 {p50[contender] / p50[baseline]:.2f}x "
            f"(+{(p50[contender] - p50[baseline]) * 1e3:.2f} ms), throughput "
            f"{rps[contender] / rps[baseline]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
