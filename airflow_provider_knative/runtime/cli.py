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
    tls = parser.add_argument_group(
        "TLS", "serve HTTPS instead of HTTP (Knative usually terminates TLS itself: only for direct access)"
    )
    tls.add_argument("--ssl-certfile", default=None, help="PEM certificate (chain) of the server")
    tls.add_argument("--ssl-keyfile", default=None, help="PEM private key of --ssl-certfile")
    tls.add_argument(
        "--ssl-ca-certs",
        default=None,
        help="PEM bundle of CAs: when given, every client must present a certificate they signed (mutual TLS)",
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from airflow_provider_knative.errors import ConfigError
    from airflow_provider_knative.runtime.server import TLS, serve

    port = args.port if args.port is not None else _default_port()
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        print(
            "airflow-knative serve: --ssl-certfile and --ssl-keyfile go together; give both", file=sys.stderr
        )
        return 2
    if args.ssl_ca_certs and not args.ssl_certfile:
        print("airflow-knative serve: --ssl-ca-certs needs --ssl-certfile and --ssl-keyfile", file=sys.stderr)
        return 2
    for path in (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs):
        if path and not os.path.isfile(path):
            print(f"airflow-knative serve: {path} is not a readable file", file=sys.stderr)
            return 2
    tls = TLS(args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs) if args.ssl_certfile else None
    try:
        return serve(args.dags_folder, args.host, port, tls=tls)
    except ConfigError as exc:
        print(f"airflow-knative serve: {exc}", file=sys.stderr)
        return 2
