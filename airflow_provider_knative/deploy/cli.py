"""``airflow-knative manifests | deploy | status``: from DAGs to Ready Knative Services.

Only stdlib at module top: ``serve`` must not pay for Airflow's or kubernetes' import.
Every expected failure (bad DAGs, bad settings, no cluster, a revision that fails) ends in
a message on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dags-folder", required=True, help="folder of DAG files to read services from")
    parser.add_argument(
        "--image", required=True, help="runtime image holding these DAGs, e.g. registry/dags:1.4"
    )
    parser.add_argument(
        "--namespace",
        help="namespace for services whose task sets none (default: [knative] namespace, 'default')",
    )
    parser.add_argument(
        "--defaults",
        metavar="FILE",
        help="YAML with 'defaults:' (settings for every service) and 'services: {name: settings}'",
    )
    parser.add_argument(
        "--store-secret",
        default="airflow-knative-store",
        help="Secret whose keys become the runtime's environment (store URL, S3 endpoint and "
        "credentials); '' for none (default: %(default)s)",
    )
    parser.add_argument(
        "--signing-secret",
        default="airflow-knative-signing",
        help="Secret holding key 'signing-secret' for request signatures; '' for none (default: %(default)s)",
    )
    parser.add_argument(
        "--image-dags-folder",
        default="/opt/airflow/dags",
        help="where the DAG files are inside the image (default: %(default)s)",
    )


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current context)")


def register(subparsers: Any) -> None:
    manifests = subparsers.add_parser(
        "manifests",
        help="write Knative Service manifests for the services the DAGs use",
        description="Parse the DAGs and write one serving.knative.dev/v1 Service per service name.",
    )
    _add_source_arguments(manifests)
    manifests.add_argument(
        "-o",
        "--output",
        default="-",
        help="folder for one <service>.yaml per service, or '-' for multi-document YAML on stdout",
    )
    manifests.set_defaults(handler=manifests_command)

    deploy = subparsers.add_parser(
        "deploy",
        help="create or patch the Knative Services and wait until they are Ready",
        description="Parse the DAGs, apply their Knative Services through the Kubernetes API, "
        "and wait until each is Ready at its new generation.",
    )
    _add_source_arguments(deploy)
    _add_cluster_arguments(deploy)
    deploy.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")
    deploy.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for Ready (default: 300)"
    )
    deploy.add_argument(
        "--poll-interval", type=float, default=2.0, help="seconds between status checks (default: 2)"
    )
    deploy.set_defaults(handler=deploy_command)

    status = subparsers.add_parser(
        "status",
        help="list the Knative Services airflow-knative manages: ready, revision, URL",
    )
    status.add_argument("--namespace", help="namespace to list (default: [knative] namespace)")
    status.add_argument("--all-namespaces", "-A", action="store_true", help="list every namespace")
    _add_cluster_arguments(status)
    status.set_defaults(handler=status_command)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    from airflow_provider_knative import config

    return str(config.get("namespace"))


def _build(args: argparse.Namespace) -> list[dict[str, Any]]:
    """DAG folder → manifests; raises CollectError/SettingsError with every problem found."""
    from airflow_provider_knative.deploy.collect import collect, parse_dags
    from airflow_provider_knative.deploy.manifests import ManifestOptions, service_manifest
    from airflow_provider_knative.deploy.settings import DefaultsFile

    defaults = DefaultsFile.load(args.defaults) if args.defaults else DefaultsFile.empty()
    collection = collect(parse_dags(args.dags_folder), _namespace(args), defaults)
    for note in collection.skipped:
        print(f"skipped: {note}", file=sys.stderr)
    if not collection.services:
        from airflow_provider_knative.deploy.collect import CollectError

        raise CollectError(
            [f"no @task.knative or KnativeOperator task in {args.dags_folder} needs a Knative Service"]
        )
    options = ManifestOptions(
        image=args.image,
        store_secret=args.store_secret or None,
        signing_secret=args.signing_secret or None,
        dags_folder=args.image_dags_folder,
    )
    for spec in collection.services:
        print(f"service {spec.namespace}/{spec.name}: {', '.join(spec.tasks)}", file=sys.stderr)
    return [service_manifest(spec, options) for spec in collection.services]


def _timeout_warnings(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        seconds = manifest["spec"]["template"]["spec"]["timeoutSeconds"]
        if seconds > 600:
            print(
                f"warning: {manifest['metadata']['name']}: timeoutSeconds {seconds} is above Knative's default "
                "max-revision-timeout-seconds (600); raise it in config-defaults or the service is rejected",
                file=sys.stderr,
            )


def _build_or_report(args: argparse.Namespace) -> list[dict[str, Any]] | int:
    from airflow_provider_knative.deploy.collect import CollectError
    from airflow_provider_knative.deploy.settings import SettingsError

    try:
        manifests = _build(args)
    except CollectError as exc:
        return _error("\n".join(exc.problems))
    except SettingsError as exc:
        return _error(str(exc))
    _timeout_warnings(manifests)
    return manifests


def manifests_command(args: argparse.Namespace) -> int:
    from airflow_provider_knative.deploy.manifests import to_yaml

    manifests = _build_or_report(args)
    if isinstance(manifests, int):
        return manifests
    if args.output == "-":
        sys.stdout.write(to_yaml(manifests))
        sys.stdout.flush()
        return 0
    folder = Path(args.output)
    namespaces = {m["metadata"]["namespace"] for m in manifests}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for manifest in manifests:
            meta = manifest["metadata"]
            stem = meta["name"] if len(namespaces) == 1 else f"{meta['namespace']}.{meta['name']}"
            path = folder / f"{stem}.yaml"
            path.write_text(to_yaml([manifest]))
            print(f"wrote {path}", file=sys.stderr)
    except OSError as exc:
        return _error(f"cannot write manifests to {folder}: {exc.strerror}")
    return 0


def deploy_command(args: argparse.Namespace) -> int:
    from airflow_provider_knative.deploy.apply import apply, wait_ready
    from airflow_provider_knative.knative.api import ClusterError, KnativeServices

    manifests = _build_or_report(args)
    if isinstance(manifests, int):
        return manifests
    try:
        services = KnativeServices(args.kubeconfig, args.context)
        outcomes = []
        for manifest in manifests:
            outcome = apply(services, manifest, dry_run=args.dry_run)
            outcomes.append(outcome)
            where = f"{outcome.namespace}/{outcome.name}"
            verb = {"create": "created", "patch": "patched", "unchanged": "unchanged"}[outcome.action]
            if args.dry_run:
                verb = {"create": "would create", "patch": "would patch", "unchanged": "unchanged"}[
                    outcome.action
                ]
            print(
                f"{where}: {verb}" + (f" ({len(outcome.changes)} fields)" if outcome.changes else ""),
                flush=True,
            )
            for change in outcome.changes:
                print(f"    {change}", flush=True)
        if args.dry_run:
            return 0
        failures = wait_ready(services, outcomes, args.timeout, args.poll_interval, sys.stdout)
    except ClusterError as exc:
        return _error(str(exc))
    if failures:
        return _error("\n".join(failures))
    print(f"{len(outcomes)} service(s) ready", flush=True)
    return 0


def status_command(args: argparse.Namespace) -> int:
    from airflow_provider_knative.deploy.apply import format_table, status_rows
    from airflow_provider_knative.deploy.manifests import MANAGED_SELECTOR
    from airflow_provider_knative.knative.api import ClusterError, KnativeServices

    namespace = None if args.all_namespaces else _namespace(args)
    try:
        items = KnativeServices(args.kubeconfig, args.context).list(namespace, MANAGED_SELECTOR)
    except ClusterError as exc:
        return _error(str(exc))
    if not items:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"no Knative Services managed by airflow-knative in {where}")
        return 0
    header = ["NAMESPACE", "NAME", "READY", "LATEST READY REVISION", "URL", "REASON"]
    print(format_table(header, status_rows(items)))
    return 0
