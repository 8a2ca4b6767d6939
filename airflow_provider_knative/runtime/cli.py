"""``airflow-knative serve``: the entrypoint of the runtime container image.

Only argparse here; uvicorn, the codec and Airflow are imported by the handler, so the
other subcommands do not pay for them.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_PORT = 8080


def _default_port() -> int:
    """Knative tells the container which port to listen on through ``$PORT``."""
    value = os.environ.get("PORT", "").strip()
    if not value:
        return DEFAULT_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SystemExit(f"airflow-knative serve: $PORT must be a TCP port number, got {value!r}")
    return int(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the Knative runtime: serve the @task.knative functions of a DAG folder over HTTP",
        description=(
            "Import DAG_FOLDER once and serve its @task.knative functions on POST /invoke, with "
            "/healthz (live at once), /readyz (200 after the import) and /functions. This is the "
            "entrypoint of the runtime container image."
        ),
    )
    parser.add_argument("--dags-folder", required=True, help="folder with the DAG files to serve")
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to bind (default 0.0.0.0, as a container needs)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help=f"port to listen on (default $PORT, else {DEFAULT_PORT})"
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from airflow_provider_knative.errors import ConfigError
    from airflow_provider_knative.runtime.server import serve

    port = args.port if args.port is not None else _default_port()
    try:
        return serve(args.dags_folder, args.host, port)
    except ConfigError as exc:
        print(f"airflow-knative serve: {exc}", file=sys.stderr)
        return 2
