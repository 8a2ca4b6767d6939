"""``airflow-knative``: one console script; each subsystem registers its own subcommands.

A subsystem's ``register(subparsers)`` only declares arguments; the work (and the heavy
imports: Airflow, boto3, kubernetes) happens in the handler it sets, so ``serve`` starts
without importing what ``deploy`` needs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from airflow_provider_knative import __version__

SUBSYSTEMS = [
    "airflow_provider_knative.runtime.cli",
    "airflow_provider_knative.deploy.cli",
    "airflow_provider_knative.cleanup",
    "airflow_provider_knative.localstack.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-knative",
        description="Run Airflow task functions in Knative Services: serve, deploy, clean up.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBSYSTEMS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
