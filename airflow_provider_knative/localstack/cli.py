"""``airflow-knative local-stack``: start the embedded stack, run the average workflow, wait.

Prints ``{"output": 2.5}`` (the gateway's answer for ``compute_avg_distributed`` with
``[1, 2, 3, 4]``), the run id and how to open the UI; then keeps the stack up until Ctrl-C
(or stops at once with ``--once``). Everything lives in ``--state-dir`` (``.local-stack/``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_DAG = "compute_avg_distributed"
EXECUTOR_DAG = "compute_avg_unmodified"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local-stack",
        help="run Airflow + a Knative runtime locally and trigger the example workflow",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--once", action="store_true", help="stop everything after the first result")
    parser.add_argument("--port", type=int, default=8080, help="api-server port (a free one if taken)")
    parser.add_argument("--state-dir", type=Path, default=Path(".local-stack"), help="where state lives")
    parser.add_argument(
        "--dags-folder", type=Path, default=Path("example_dags"), help="DAG files for Airflow and the runtime"
    )
    parser.add_argument(
        "--dag",
        default=None,
        help=f"the DAG to trigger through the gateway (default: {DEFAULT_DAG}; with --executor knative: "
        f"{EXECUTOR_DAG}, an unmodified DAG)",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "knative"),
        default="local",
        help="local: LocalExecutor runs the tasks (@task.knative steps call the runtime); knative: the "
        "KnativeExecutor runs every task in the runtime, unmodified DAGs included (default: %(default)s)",
    )
    parser.add_argument("--input", default="[1, 2, 3, 4]", help="JSON input of the workflow")
    parser.set_defaults(handler=run)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from airflow_provider_knative.localstack.client import StackClient, StackError
    from airflow_provider_knative.localstack.stack import LocalStack

    try:
        data = json.loads(args.input)
    except json.JSONDecodeError as exc:
        print(f"--input must be JSON (e.g. '[1, 2, 3, 4]'): {exc}", file=sys.stderr)
        return 2
    if not (args.dags_folder / "").is_dir():
        print(
            f"--dags-folder {args.dags_folder} is not a folder: run from the repository root "
            "or pass --dags-folder",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    args.dag = args.dag or (EXECUTOR_DAG if args.executor == "knative" else DEFAULT_DAG)
    stack = LocalStack(
        args.state_dir,
        args.dags_folder,
        api_port=args.port,
        wait_for_dags=(args.dag,),
        executor=args.executor,
    )
    print(
        f"starting Airflow on {stack.url} and a Knative runtime on {stack.runtime_url} "
        f"(logs in {stack.state_dir / 'logs'}) ...",
        flush=True,
    )
    try:
        started = time.monotonic()
        stack.start()
        print(f"stack ready in {time.monotonic() - started:.0f} s", flush=True)
        client = StackClient(stack.url)
        token = client.login("admin", stack.passwords["admin"])
        response = client.run_workflow(args.dag, data, token, unpause=True)
        body = response.json()
        if response.status_code != 200:
            print(
                f"{args.dag} answered {response.status_code}: {json.dumps(body, indent=2)}", file=sys.stderr
            )
            return 1
        print(json.dumps({"output": body["output"]}))
        print(f"run id: {body['dag_run_id']} (DAG {args.dag}, state {body['state']})")
        print(f"UI: {stack.url}/dags/{args.dag}  user admin, password {stack.passwords['admin']}")
        print(
            f"gateway: curl -X POST {stack.url}/knative/runWorkflow/{args.dag} "
            "-H 'Authorization: Bearer <token from POST /auth/token>' "
            "-H 'Content-Type: application/json' -d '{\"input\": [1, 2, 3, 4]}'"
        )
        if args.once:
            return 0
        print("running; press Ctrl-C to stop", flush=True)
        while True:
            for p in stack.processes:
                if p.popen.poll() is not None:
                    print(
                        f"{p.name} exited ({p.popen.returncode}); its log ends:\n{p.log_tail()}",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except StackError as exc:
        print(f"local stack failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="airflow-knative")
    register(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args()
    sys.exit(arguments.handler(arguments))
