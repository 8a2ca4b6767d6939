"""Benchmark the Knative runtime against raw uvicorn and Knative's func-python, in the same run.

    .venv/bin/python bench/bench_runtime.py [--requests 10000] [--rounds 5] [--sweep]
        [--func-python-venv bench/results/func-python-venv] [--dags tests/runtime_dags/basic]

Three servers run side by side on 127.0.0.1 (free ports), each in its own process:

- **raw uvicorn**: a bare ASGI app echoing 100 bytes (the limit of an ASGI server here);
- **func-python**: Knative's Python function runtime (``func_python.http.serve``, hypercorn
  underneath) serving a no-op ``handle`` that returns the same 100 bytes. It is installed,
  pinned, into a separate venv (``--func-python-venv``, created on first use with
  ``python -m venv`` + ``pip install func-python==0.8.1``), so the project's venv is untouched;
- **runtime**: ``airflow-knative serve`` answering a no-op ``@task.knative`` invocation (full
  protocol: decode, lookup, bind, dispatch to a worker, call, encode).

Prints one table with every figure measured in this run:
- throughput with 16 keep-alive connections; target: runtime >= 3x func-python;
- p50 latency with one connection; target: runtime <= 1.5x raw uvicorn;
- server CPU per call (psutil, user+system of the server process and its children);
- ``/healthz`` p99 of the runtime while 8 concurrent 1-second CPU-bound calls run; <= 50 ms;
- cold start: process start to ready (``/readyz`` 200), split into Python start, Airflow
  import, DAG import (as the runtime reports them); target <= 1.0 s. func-python's and raw
  uvicorn's start to their first 200 are shown for reference.

Throughput and latency are measured **interleaved** (one load run per server per round,
shuffled order, ``--rounds`` rounds; medians), so a busy neighbour on the 2-core machine
hits all three alike. ``--sweep`` also measures req/s against 1..64 connections and draws
``docs/bench/runtime_throughput.png`` (data in ``runtime_throughput.json``).

The load client is a minimal asyncio HTTP/1.1 client on raw sockets (httpx would be the
bottleneck on a 2-core machine); it reconnects when a server answers ``Connection: close``
(hypercorn ends a keep-alive connection after 1,000 requests). Request counts are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from plots import DOCS_DIR, RESULTS_DIR, Series, plot_curves  # noqa: E402
from runtime_process import RuntimeProcess, start_runtime  # noqa: E402
from servers import free_port  # noqa: E402

from airflow_provider_knative import protocol  # noqa: E402

FUNC_PYTHON = "func-python==0.8.1"
#: the runtime as these figures measure it: calls in threads, no record in a store
THREAD_NO_STORE = {"AIRFLOW__KNATIVE__ISOLATION": "thread", "AIRFLOW__KNATIVE__XCOM_STORE_URL": ""}
SWEEP_CONNECTIONS = (1, 2, 4, 8, 16, 32, 64)
# targets of issue 13
TARGET_RPS_VS_FUNC_PYTHON = 3.0
TARGET_P50_VS_RAW = 1.5
TARGET_HEALTHZ_P99_MS = 50.0
TARGET_COLD_START_S = 1.0

# the same no-op ASGI app for both baselines: reads the body, answers 100 bytes
NOOP_APP = """
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
"""
RAW_APP = (
    "import sys, uvicorn\n"
    + NOOP_APP
    + """uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning",
            lifespan="off")
"""
)

# func-python's own entry point, as its templates use it: a ``new()`` factory whose object has
# an ASGI ``handle``; ``serve`` binds LISTEN_ADDRESS and runs hypercorn with its defaults.
FUNC_PYTHON_APP = (
    """import logging, os, sys
os.environ["LISTEN_ADDRESS"] = "127.0.0.1:" + sys.argv[1]
from func_python.http import serve
logging.getLogger().setLevel(logging.WARNING)  # its startup notices; nothing is logged per request
"""
    + NOOP_APP
    + """class Function:
    async def handle(self, scope, receive, send):
        await app(scope, receive, send)
def new():
    return Function()
serve(new)
"""
)


# --- a minimal keep-alive HTTP/1.1 client -------------------------------------------------------


_CLOSE = re.compile(rb"(?im)^connection:\s*close")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection after this response)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if match:
        await reader.readexactly(int(match.group(1)))
    return status, _CLOSE.search(head) is not None


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
            status, close = await _read_response(reader)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                raise RuntimeError(f"HTTP {status} from port {port}")
            if close:  # e.g. hypercorn ends a keep-alive connection after 1,000 requests
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


def load(port: int, request: bytes, total: int, connections: int) -> tuple[float, list[float]]:
    """Send ``total`` requests over ``connections`` keep-alive connections; (req/s, latencies)."""
    latencies: list[float] = []

    async def run() -> float:
        per = max(1, total // connections)
        t = time.perf_counter()
        await asyncio.gather(*(_worker(port, request, per, latencies) for _ in range(connections)))
        return per * connections / (time.perf_counter() - t)

    return asyncio.run(run()), latencies


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its live children (worker processes, if any)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


# --- the three servers --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    pid: int
    port: int
    #: the no-op request this server answers
    request: bytes


def _wait_http(port: int, request: bytes, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
    """Poll ``request`` until it answers 200; the seconds it took."""
    t = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            load(port, request, 1, 1)
            return time.perf_counter() - t
        except (OSError, EOFError):  # not listening yet / closed while starting
            time.sleep(0.01)
    raise TimeoutError(f"server on port {port} not ready within {timeout} s")


@contextlib.contextmanager
def _script_server(
    python: str, source: str, ready_path: str, ready_body: bytes | None
) -> Iterator[tuple[int, int]]:
    """Run ``source`` with ``python`` on a free port until it answers; yield (pid, port)."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(source)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([python, fh.name, str(port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        _wait_http(port, _request(ready_path, ready_body, port), proc)
        yield proc.pid, port
    except BaseException:
        log.seek(0)
        sys.stderr.write(log.read()[-4000:].decode(errors="replace"))
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(fh.name)


def func_python_venv(path: Path) -> str:
    """The python of a venv holding func-python (created with ``FUNC_PYTHON`` if missing)."""
    python = path / "bin" / "python"
    check = [str(python), "-c", "import func_python.http"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    print(f"creating {path} with {FUNC_PYTHON} (separate from the project's venv)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", FUNC_PYTHON], check=True)
    subprocess.run(check, check=True)
    return str(python)


def cold_start_script(python: str, source: str, ready_path: str, runs: int = 3) -> float:
    """Median seconds from Popen to the first 200 on ``ready_path`` of a script server."""
    times = []
    for _ in range(runs):
        port = free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(source)
        t = time.perf_counter()
        proc = subprocess.Popen(
            [python, fh.name, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            body = None if ready_path.startswith("/health") else b"x"
            _wait_http(port, _request(ready_path, body, port), proc)
            times.append(time.perf_counter() - t)
        finally:
            proc.terminate()
            proc.wait()
            os.unlink(fh.name)
    return statistics.median(times)


# --- interleaved measurements -------------------------------------------------------------------


def measure(servers: list[Server], total: int, rounds: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per server: median req/s and CPU per call at 16 connections, p50 with 1 connection."""
    for s in servers:  # warm up
        load(s.port, s.request, min(2000, total), 16)
    rng = random.Random(seed)
    rps: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu: dict[str, list[float]] = {s.name: [] for s in servers}
    lat: dict[str, list[float]] = {s.name: [] for s in servers}
    order = list(servers)
    for _ in range(rounds):
        rng.shuffle(order)
        for s in order:
            cpu0 = cpu_seconds(s.pid)
            r, _ = load(s.port, s.request, total, 16)
            cpu[s.name].append((cpu_seconds(s.pid) - cpu0) / (total // 16 * 16))
            rps[s.name].append(r)
        rng.shuffle(order)
        for s in order:
            lat[s.name].extend(load(s.port, s.request, max(300, min(3000, total) // rounds), 1)[1])
    return {
        s.name: {
            "rps": statistics.median(rps[s.name]),
            "rps_min": min(rps[s.name]),
            "rps_max": max(rps[s.name]),
            "cpu_us": statistics.median(cpu[s.name]) * 1e6,
            "p50_ms": statistics.median(lat[s.name]) * 1e3,
        }
        for s in servers
    }


def sweep(servers: list[Server], total: int, rounds: int, seed: int = 1) -> dict[str, list[float]]:
    """Median req/s per server at each of ``SWEEP_CONNECTIONS``, interleaved per point."""
    rng = random.Random(seed)
    out: dict[str, list[float]] = {s.name: [] for s in servers}
    order = list(servers)
    for conns in SWEEP_CONNECTIONS:
        samples: dict[str, list[float]] = {s.name: [] for s in servers}
        for _ in range(rounds):
            rng.shuffle(order)
            for s in order:
                samples[s.name].append(load(s.port, s.request, max(total, conns * 20), conns)[0])
        for s in servers:
            out[s.name].append(statistics.median(samples[s.name]))
        print(
            f"  {conns:3d} connections: " + ", ".join(f"{n} {v[-1]:,.0f} req/s" for n, v in out.items()),
            flush=True,
        )
    return out


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
    totals: list[float] = []
    splits: list[dict[str, float]] = []
    for _ in range(runs):
        t = time.perf_counter()
        rt = start_runtime(dags, timeout=60, env=THREAD_NO_STORE)
        totals.append(time.perf_counter() - t)
        rt.stop()
        splits.append(_reported_split(rt.output()))
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
    for key in splits[0]:
        if all(key in split for split in splits):
            out[key] = statistics.median(split[key] for split in splits)
    return out


def _reported_split(log: str) -> dict[str, float]:
    """The runtime's own account of its start: ``cold start 2.004 s (server_up_s 0.242, ...)``."""
    match = re.search(r"cold start ([\d.]+) s \(([^)]*)\)", log)
    if match is None:
        return {}
    split = {"reported_total_s": float(match.group(1))}
    split.update((k, float(v)) for k, v in re.findall(r"(\w+) ([\d.]+)", match.group(2)))
    return split


# --- report ------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def draw_sweep(data: dict[str, object], out_dir: Path) -> Path:
    conns = data["connections"]
    rps = data["rps"]
    assert isinstance(conns, list) and isinstance(rps, dict)
    return plot_curves(
        out_dir / "runtime_throughput.png",
        [
            *(Series(name, conns, values) for name, values in rps.items()),
            Series(
                f"{TARGET_RPS_VS_FUNC_PYTHON:g}x func-python (target)",
                conns,
                [TARGET_RPS_VS_FUNC_PYTHON * v for v in rps["func-python"]],
                reference=True,
            ),
        ],
        title="No-op call throughput against keep-alive connections",
        xlabel="concurrent keep-alive connections (one asyncio client process)",
        ylabel="requests per second",
        log=True,
        logy=False,
        xticks=conns,
        note=f"median of {data['rounds']} interleaved runs per point; {data['machine']}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10000, help="requests per throughput run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the table")
    parser.add_argument("--sweep", action="store_true", help="also req/s against 1..64 connections")
    parser.add_argument("--sweep-requests", type=int, default=8000, help="requests per sweep point")
    parser.add_argument("--sweep-rounds", type=int, default=3, help="interleaved runs per sweep point")
    parser.add_argument("--out", type=Path, default=DOCS_DIR, help="folder of the sweep's PNG and JSON")
    parser.add_argument(
        "--func-python-venv",
        type=Path,
        default=RESULTS_DIR / "func-python-venv",
        help=f"a venv with func-python (created with {FUNC_PYTHON} if missing)",
    )
    parser.add_argument("--dags", type=Path, default=REPO / "tests" / "runtime_dags" / "basic")
    args = parser.parse_args()

    fp_python = func_python_venv(args.func_python_venv)
    fp_version = subprocess.run(
        [
            fp_python,
            "-c",
            "import importlib.metadata as m; print(m.version('func-python'), m.version('hypercorn'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    raw_body = b"x" * 100
    with contextlib.ExitStack() as stack:
        raw_pid, raw_port = stack.enter_context(_script_server(sys.executable, RAW_APP, "/", raw_body))
        fp_pid, fp_port = stack.enter_context(
            _script_server(fp_python, FUNC_PYTHON_APP, "/health/readiness", None)
        )
        # thread isolation, no store: the server's own path (process isolation's fork per call and
        # the record's writes are measured by bench_records.py)
        rt = stack.enter_context(
            start_runtime(args.dags, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": "", **THREAD_NO_STORE})
        )
        noop = protocol.Invocation(
            function_id="runtime_basic/noop", source_hash=rt.functions()["runtime_basic/noop"]
        ).encode()
        servers = [
            Server("raw uvicorn", raw_pid, raw_port, _request("/", raw_body, raw_port)),
            Server("func-python", fp_pid, fp_port, _request("/", raw_body, fp_port)),
            Server("runtime", rt.proc.pid, rt.port, _request(protocol.INVOKE_PATH, noop, rt.port)),
        ]
        print(f"measuring {', '.join(s.name for s in servers)}: {args.rounds} interleaved rounds", flush=True)
        stats = measure(servers, args.requests, args.rounds)
        curves = None
        if args.sweep:
            print(
                f"sweep: {args.sweep_requests} requests per point, {args.sweep_rounds} runs each", flush=True
            )
            curves = sweep(servers, args.sweep_requests, args.sweep_rounds)
        idle_p99, busy_p99 = health_under_load(rt)

    cold = cold_start(args.dags)
    fp_cold = cold_start_script(fp_python, FUNC_PYTHON_APP, "/health/readiness")
    raw_cold = cold_start_script(sys.executable, RAW_APP, "/")

    raw, fp, ours = stats["raw uvicorn"], stats["func-python"], stats["runtime"]
    rps_ratio = ours["rps"] / fp["rps"]
    p50_ratio = ours["p50_ms"] / raw["p50_ms"]
    print(
        f"\nno-op invocation body: {len(noop)} bytes; raw/func-python body: 100 bytes; "
        f"{args.requests} requests x {args.rounds} interleaved rounds (medians); "
        f"func-python {fp_version[0]} (hypercorn {fp_version[1]}); {psutil.cpu_count()} cores"
    )
    print("| metric | raw uvicorn | func-python | knative runtime | ratios | target | verdict |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| throughput, 16 conns (req/s) | {raw['rps']:,.0f} | {fp['rps']:,.0f} | {ours['rps']:,.0f} | "
        f"{rps_ratio:.2f}x func-python, {ours['rps'] / raw['rps']:.2f}x raw | "
        f">= {TARGET_RPS_VS_FUNC_PYTHON:g}x func-python | {_verdict(rps_ratio >= TARGET_RPS_VS_FUNC_PYTHON)} |"
    )
    print(
        f"| throughput range over rounds (req/s) | {raw['rps_min']:,.0f}..{raw['rps_max']:,.0f} | "
        f"{fp['rps_min']:,.0f}..{fp['rps_max']:,.0f} | {ours['rps_min']:,.0f}..{ours['rps_max']:,.0f} | - | - | - |"
    )
    print(
        f"| p50 latency, 1 conn (ms) | {raw['p50_ms']:.3f} | {fp['p50_ms']:.3f} | {ours['p50_ms']:.3f} | "
        f"{p50_ratio:.2f}x raw, {ours['p50_ms'] / fp['p50_ms']:.2f}x func-python | "
        f"<= {TARGET_P50_VS_RAW:g}x raw | {_verdict(p50_ratio <= TARGET_P50_VS_RAW)} |"
    )
    print(
        f"| server CPU per call (us) | {raw['cpu_us']:.0f} | {fp['cpu_us']:.0f} | {ours['cpu_us']:.0f} | "
        f"{ours['cpu_us'] / raw['cpu_us']:.2f}x raw, {ours['cpu_us'] / fp['cpu_us']:.2f}x func-python | "
        "report | - |"
    )
    print(
        f"| /healthz p99 (ms), 8 CPU-bound 1 s calls running | - | - | {busy_p99:.2f} (idle {idle_p99:.2f}) | "
        f"{busy_p99 / idle_p99:.1f}x idle | <= {TARGET_HEALTHZ_P99_MS:g} ms | "
        f"{_verdict(busy_p99 <= TARGET_HEALTHZ_P99_MS)} |"
    )
    split = ", ".join(f"{k} {v:.2f}" for k, v in cold.items() if k != "total_s")
    print(
        f"| cold start to ready (s) | {raw_cold:.2f} | {fp_cold:.2f} | {cold['total_s']:.2f} ({split}) | "
        f"{cold['total_s'] / fp_cold:.1f}x func-python | <= {TARGET_COLD_START_S:g} s | "
        f"{_verdict(cold['total_s'] <= TARGET_COLD_START_S)} |"
    )

    if curves is not None:
        data: dict[str, object] = {
            "machine": f"{platform.node()} ({psutil.cpu_count()} cores)",
            "requests_per_point": args.sweep_requests,
            "rounds": args.sweep_rounds,
            "func_python": fp_version[0],
            "connections": list(SWEEP_CONNECTIONS),
            "rps": curves,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / "runtime_throughput.json"
        json_path.write_text(json.dumps(data, indent=1))
        png = draw_sweep(data, args.out)
        print(
            "\n| connections | " + " | ".join(f"{n} (req/s)" for n in curves) + " | runtime / func-python |"
        )
        print("|---" * (len(curves) + 2) + "|")
        for i, conns in enumerate(SWEEP_CONNECTIONS):
            cells = " | ".join(f"{v[i]:,.0f}" for v in curves.values())
            print(f"| {conns} | {cells} | {curves['runtime'][i] / curves['func-python'][i]:.2f}x |")
        print(f"plot: {png}\ndata: {json_path}")


if __name__ == "__main__":
    main()
