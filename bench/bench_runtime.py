"""Benchmark the Knative runtime against a bare ASGI app on uvicorn, measured in the same run.

    .venv/bin/python bench/bench_runtime.py [--requests 20000] [--dags tests/runtime_dags/basic]

Prints one table of ratios (ours / raw uvicorn) for:
- no-op invocation throughput with 16 keep-alive connections (full protocol: decode,
  lookup, bind, dispatch to a worker thread, call, encode) vs a raw app echoing 100 bytes;
- p50 latency with one connection;
- server CPU per call (psutil, user+system of the server process);
- ``/healthz`` p99 while 8 concurrent 1-second CPU-bound calls run (vs idle);
- cold start: process start to ``/readyz`` 200, split into Python start, Airflow import,
  DAG import (as the runtime reports them).

The load client is a minimal asyncio HTTP/1.1 client on raw sockets (httpx would be the
bottleneck on a 2-core machine). Request counts are bounded. External reference from the
issue (cannot run here): Knative's func-python served 3,600 req/s at 280 us CPU/request,
p50 0.34 ms, on the same kind of machine where raw uvicorn served 24,000 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from runtime_process import RuntimeProcess, start_runtime  # noqa: E402
from servers import free_port  # noqa: E402

from airflow_provider_knative import protocol  # noqa: E402

FUNC_PYTHON_RPS = 3600.0
RAW_APP = """
import sys, uvicorn
BODY = b"x" * 100
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", b"100")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning",
            lifespan="off")
"""


# --- a minimal keep-alive HTTP/1.1 client -------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if match:
        await reader.readexactly(int(match.group(1)))
    return status


def _request(path: str, body: bytes | None, port: int) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {protocol.CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _worker(port: int, request: bytes, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            t = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                raise RuntimeError(f"HTTP {status} from port {port}")
    finally:
        writer.close()


def load(port: int, request: bytes, total: int, connections: int) -> tuple[float, list[float]]:
    """Send ``total`` requests over ``connections`` keep-alive connections; (req/s, latencies)."""
    latencies: list[float] = []

    async def run() -> float:
        per = total // connections
        t = time.perf_counter()
        await asyncio.gather(*(_worker(port, request, per, latencies) for _ in range(connections)))
        return per * connections / (time.perf_counter() - t)

    return asyncio.run(run()), latencies


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure(name: str, pid: int, port: int, request: bytes, total: int) -> dict[str, float]:
    load(port, request, min(2000, total), 16)  # warm up
    cpu0 = cpu_seconds(pid)
    rps, _ = load(port, request, total, 16)
    cpu = (cpu_seconds(pid) - cpu0) / total
    _, lat = load(port, request, min(3000, total), 1)
    return {"rps": rps, "cpu_us": cpu * 1e6, "p50_ms": statistics.median(lat) * 1e3}


# --- health under CPU-bound load ---------------------------------------------------------------


def health_under_load(rt: RuntimeProcess, burn_seconds: float = 1.0, calls: int = 8) -> tuple[float, float]:
    """(/healthz p99 idle, p99 while ``calls`` CPU-bound calls run), in ms."""
    health = _request("/healthz", None, rt.port)
    _, idle = load(rt.port, health, 300, 1)
    burn = protocol.Invocation(
        function_id="runtime_basic/burn",
        source_hash=rt.functions()["runtime_basic/burn"],
        args=[burn_seconds],
    ).encode()

    async def run() -> list[float]:
        burns = [
            asyncio.create_task(_worker(rt.port, _request(protocol.INVOKE_PATH, burn, rt.port), 1, []))
            for _ in range(calls)
        ]
        await asyncio.sleep(0.1)
        lat: list[float] = []
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.port)
        while not all(b.done() for b in burns):
            t = time.perf_counter()
            writer.write(health)
            await _read_response(reader)
            lat.append(time.perf_counter() - t)
            await asyncio.sleep(0.005)
        writer.close()
        await asyncio.gather(*burns)
        return lat

    busy = asyncio.run(run())
    return _p99(idle) * 1e3, _p99(busy) * 1e3


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) >= 2 else values[0]


# --- cold start --------------------------------------------------------------------------------


def cold_start(dags: Path, runs: int = 3) -> dict[str, float]:
    """Median of ``runs`` starts: Popen to /readyz 200, plus the runtime's own split."""
    totals, splits = [], []
    for _ in range(runs):
        t = time.perf_counter()
        rt = start_runtime(dags, timeout=60)
        totals.append(time.perf_counter() - t)
        rt.stop()
        match = re.search(
            r"python\+server ([\d.]+) s, airflow import ([\d.]+) s, DAG import ([\d.]+) s", rt.output()
        )
        if match:
            splits.append([float(g) for g in match.groups()])
    python_only = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python_only.append(time.perf_counter() - t)
    env = {**os.environ, "_AIRFLOW__AS_LIBRARY": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import airflow.sdk"], check=True, env=env)
    airflow_alone = time.perf_counter() - t
    out = {
        "total_s": statistics.median(totals),
        "python_start_s": statistics.median(python_only),
        "import_airflow_sdk_alone_s": airflow_alone,
    }
    if splits:
        out["server_up_s"] = statistics.median(s[0] for s in splits)
        out["airflow_import_s"] = statistics.median(s[1] for s in splits)
        out["dag_import_s"] = statistics.median(s[2] for s in splits)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per throughput run")
    parser.add_argument("--dags", type=Path, default=REPO / "tests" / "runtime_dags" / "basic")
    args = parser.parse_args()

    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(RAW_APP)
    raw = subprocess.Popen([sys.executable, fh.name, str(port)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.post(f"http://127.0.0.1:{port}/", content=b"x")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        raw_body = b"x" * 100
        raw_stats = measure("raw", raw.pid, port, _request("/", raw_body, port), args.requests)
    finally:
        raw.terminate()
        raw.wait()
        os.unlink(fh.name)

    with start_runtime(args.dags, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": ""}) as rt:
        noop = protocol.Invocation(
            function_id="runtime_basic/noop", source_hash=rt.functions()["runtime_basic/noop"]
        ).encode()
        ours = measure(
            "runtime", rt.proc.pid, rt.port, _request(protocol.INVOKE_PATH, noop, rt.port), args.requests
        )
        idle_p99, busy_p99 = health_under_load(rt)

    cold = cold_start(args.dags)

    print(f"\nno-op invocation body: {len(noop)} bytes; raw app body: 100 bytes; {args.requests} requests")
    print("| metric | raw uvicorn app | knative runtime | ratio (runtime/raw) | target |")
    print("|---|---|---|---|---|")
    print(
        f"| throughput, 16 conns (req/s) | {raw_stats['rps']:,.0f} | {ours['rps']:,.0f} | "
        f"{ours['rps'] / raw_stats['rps']:.2f}x | >= 3x func-python ({3 * FUNC_PYTHON_RPS:,.0f}): "
        f"{ours['rps'] / FUNC_PYTHON_RPS:.1f}x |"
    )
    print(
        f"| p50 latency, 1 conn (ms) | {raw_stats['p50_ms']:.3f} | {ours['p50_ms']:.3f} | "
        f"{ours['p50_ms'] / raw_stats['p50_ms']:.2f}x | <= 2x raw |"
    )
    print(
        f"| server CPU per call (us) | {raw_stats['cpu_us']:.0f} | {ours['cpu_us']:.0f} | "
        f"{ours['cpu_us'] / raw_stats['cpu_us']:.2f}x | report (func-python: 280) |"
    )
    print(
        f"| /healthz p99 (ms), idle vs 8 CPU-bound 1 s calls | {idle_p99:.2f} (idle) | {busy_p99:.2f} | "
        f"{busy_p99 / idle_p99:.1f}x | <= 50 ms |"
    )
    split = ", ".join(f"{k} {v:.2f}" for k, v in cold.items() if k != "total_s")
    print(f"| cold start to /readyz (s) | - | {cold['total_s']:.2f} | - | <= 1.5 s ({split}) |")


if __name__ == "__main__":
    main()
