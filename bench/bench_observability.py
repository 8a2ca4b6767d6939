"""What the runtime's metrics cost a no-op call: the runtime with ``GET /metrics`` against the same
runtime without it, in the same run.

    .venv/bin/python bench/bench_observability.py [--requests 6000] [--rounds 7] [--isolation thread process]

Per isolation mode (``thread``, then ``process``, the default), two runtimes run side by side on
127.0.0.1 serving ``tests/runtime_dags/basic``: one as shipped, counting every call
(``runtime/metrics.py``), and one started with ``prometheus_client`` hidden from it, which is
the runtime's own path without the ``runtime`` extra (no ``/metrics``, no per-call counting).
Tracing is off in both (no ``OTEL_*``), as it is by default. Load, rounds and medians are
``bench_runtime.measure``'s: 16 keep-alive connections for throughput and server CPU per call,
one connection for p50 latency, interleaved and shuffled per round so a busy neighbour on the
2-core machine hits both alike. Prints the ratios (metrics on / off).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import httpx
from bench_runtime import REPO, Server, _request, measure
from runtime_process import start_runtime  # bench_runtime put tests/ on the path

from airflow_provider_knative import protocol

DAGS = REPO / "tests" / "runtime_dags" / "basic"


def _without_prometheus(folder: Path) -> str:
    """A folder that shadows ``prometheus_client`` with a module that cannot be imported."""
    package = folder / "prometheus_client"
    package.mkdir()
    (package / "__init__.py").write_text('raise ImportError("hidden by bench_observability")\n')
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests per throughput run")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument(
        "--isolation", nargs="+", default=["thread", "process"], choices=["thread", "process"]
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hidden = _without_prometheus(Path(tmp))
        for isolation in args.isolation:
            base = {"AIRFLOW__KNATIVE__SIGNING_SECRET": "", "AIRFLOW__KNATIVE__ISOLATION": isolation}
            with contextlib.ExitStack() as stack:
                on = stack.enter_context(start_runtime(DAGS, env=base))
                off = stack.enter_context(start_runtime(DAGS, env={**base, "PYTHONPATH": hidden}))
                assert httpx.get(on.url + "/metrics").status_code == 200
                assert httpx.get(off.url + "/metrics").status_code == 404  # really without metrics
                noop = protocol.Invocation(
                    function_id="runtime_basic/noop", source_hash=on.functions()["runtime_basic/noop"]
                ).encode()
                servers = [
                    Server("metrics on", on.proc.pid, on.port, _request(protocol.INVOKE_PATH, noop, on.port)),
                    Server(
                        "metrics off", off.proc.pid, off.port, _request(protocol.INVOKE_PATH, noop, off.port)
                    ),
                ]
                print(f"{isolation} isolation: {args.rounds} interleaved rounds", flush=True)
                stats = measure(servers, args.requests, args.rounds)
                rows.append((isolation, stats["metrics on"], stats["metrics off"]))
    print("\n| isolation | metric | metrics on | metrics off | on / off |")
    print("|---|---|---|---|---|")
    for isolation, on_, off_ in rows:
        print(
            f"| {isolation} | req/s, 16 conns | {on_['rps']:,.0f} | {off_['rps']:,.0f} | {on_['rps'] / off_['rps']:.3f}x |"
        )
        print(
            f"| {isolation} | server CPU per call (us) | {on_['cpu_us']:.1f} | {off_['cpu_us']:.1f} | {on_['cpu_us'] / off_['cpu_us']:.3f}x |"
        )
        print(
            f"| {isolation} | p50, 1 conn (ms) | {on_['p50_ms']:.3f} | {off_['p50_ms']:.3f} | {on_['p50_ms'] / off_['p50_ms']:.3f}x |"
        )
    print(f"\n{' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
