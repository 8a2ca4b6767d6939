"""``python -m airflow_provider_knative.runtime serve ...``: the same as ``airflow-knative serve``.

It builds only the runtime's own subcommand, so a container entrypoint does not import the
deploy and cleanup command modules.
"""

from __future__ import annotations

import argparse
import sys

from airflow_provider_knative.runtime import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_knative.runtime")
    cli.register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
