"""``airflow-knative manifests | deploy | status | delete | prune | rbac``: DAGs to Ready Services.

Only stdlib at module top: ``serve`` must not pay for Airflow's or kubernetes' import.
Every expected failure (bad DAGs, bad settings, no cluster, a revision that fails) ends in
a message on stderr and exit code 1, never a traceback. Machine-readable output
(``-o json|yaml``) goes to stdout alone; progress and notes go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from airflow_provider_knative.errors import KnativeError


def _add_dags_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dags-folder", required=True, help="folder of DAG files to read services from")


def _add_namespace_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--namespace", "-n", help=help_text + " (default: [knative] namespace)")


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    _add_dags_argument(parser)
    parser.add_argument(
        "--image", required=True, help="runtime image holding these DAGs, e.g. registry/dags:1.4"
    )
    _add_namespace_argument(parser, "namespace for services whose task sets none")
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
    parser.add_argument(
        "--executor",
        default=None,
        help="the deployment's [core] executor, to find the tasks the KnativeExecutor runs "
        "(default: this environment's [core] executor)",
    )
    parser.add_argument(
        "--execution-api-url",
        default=None,
        help="the api-server's Execution API URL as the executor's Services reach it "
        "(default: this environment's [core] execution_api_server_url)",
    )
    parser.add_argument(
        "--remote-log-folder",
        default=None,
        help="knative+s3://... folder for the task logs of executor Services "
        "(default: this environment's [logging] remote_base_log_folder, when it is one)",
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
        choices=("yaml", "json"),
        default="yaml",
        help="yaml: one YAML document per Service; json: one v1 List (default: %(default)s)",
    )
    manifests.add_argument(
        "--output-dir", metavar="DIR", help="write one file per Service into DIR instead of stdout"
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
        "--no-wait", action="store_true", help="apply and return; do not wait for Ready (see `status`)"
    )
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
    _add_namespace_argument(status, "namespace to list")
    status.add_argument("--all-namespaces", "-A", action="store_true", help="list every namespace")
    status.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table for people, json or yaml for scripts (default: %(default)s)",
    )
    _add_cluster_arguments(status)
    status.set_defaults(handler=status_command)

    delete = subparsers.add_parser(
        "delete",
        help="delete Knative Services that airflow-knative manages, by service name",
        description="Delete the named Services. A Service without the managed-by label is refused.",
    )
    delete.add_argument("services", nargs="+", metavar="SERVICE", help="service name as written in the DAG")
    _add_namespace_argument(delete, "namespace of the services")
    delete.add_argument("--dry-run", action="store_true", help="check and report; delete nothing")
    _add_cluster_arguments(delete)
    delete.set_defaults(handler=delete_command)

    prune = subparsers.add_parser(
        "prune",
        help="delete managed Knative Services that no task of the DAG folder uses any more",
        description="Parse the DAGs, list the managed Services in the namespace (and in every "
        "namespace a task names), and delete those no task needs. Services without the "
        "managed-by label are never touched; a DAG folder that fails to import prunes nothing.",
    )
    _add_dags_argument(prune)
    _add_namespace_argument(prune, "namespace to prune, besides those the tasks name")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    _add_cluster_arguments(prune)
    prune.set_defaults(handler=prune_command)

    from airflow_provider_knative.deploy import rbac

    rbac.register(subparsers)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    from airflow_provider_knative import config

    return str(config.get("namespace"))


def _airflow_option(args: argparse.Namespace, attr: str, section: str, key: str) -> str | None:
    """A command-line value, else this environment's Airflow setting (None when unset)."""
    value = getattr(args, attr, None)
    if value is None:
        from airflow.configuration import conf

        value = conf.get(section, key, fallback="") or ""
    return str(value) or None


def _core_executor(args: argparse.Namespace) -> str:
    return _airflow_option(args, "executor", "core", "executor") or ""


def _remote_log_folder(args: argparse.Namespace) -> str | None:
    folder = _airflow_option(args, "remote_log_folder", "logging", "remote_base_log_folder")
    return folder if folder and folder.startswith("knative+") else None


def _collect(args: argparse.Namespace, defaults: Any = None) -> Any:
    """DAG folder → services; raises CollectError/SettingsError with every problem found."""
    from airflow_provider_knative.deploy.collect import CollectError, collect, parse_dags

    collection = collect(parse_dags(args.dags_folder), _namespace(args), defaults, _core_executor(args))
    for note in collection.skipped:
        print(f"skipped: {note}", file=sys.stderr)
    if not collection.services:
        raise CollectError(
            [
                f"no @task.knative or KnativeOperator task in {args.dags_folder} needs a Knative Service, and "
                f"[core] executor ({_core_executor(args) or 'unset'}) sends no task to the KnativeExecutor"
            ]
        )
    return collection


def _build(args: argparse.Namespace) -> list[dict[str, Any]]:
    """DAG folder → manifests; raises CollectError/SettingsError with every problem found."""
    from airflow_provider_knative.deploy.manifests import ManifestOptions, service_manifest
    from airflow_provider_knative.deploy.settings import DefaultsFile

    defaults = DefaultsFile.load(args.defaults) if args.defaults else DefaultsFile.empty()
    collection = _collect(args, defaults)
    options = ManifestOptions(
        image=args.image,
        store_secret=args.store_secret or None,
        signing_secret=args.signing_secret or None,
        dags_folder=args.image_dags_folder,
        execution_api_url=_airflow_option(args, "execution_api_url", "core", "execution_api_server_url"),
        remote_log_folder=_remote_log_folder(args),
    )
    for spec in collection.services:
        print(f"service {spec.namespace}/{spec.name}: {', '.join(spec.tasks)}", file=sys.stderr)
    if not options.signing_secret:
        _unsigned_warnings(collection.services)
    return [service_manifest(spec, options) for spec in collection.services]


def _unsigned_warnings(specs: list[Any]) -> None:
    """Without a signing secret the runtime refuses to listen beyond loopback (as in a pod)."""
    from airflow_provider_knative import config

    allow = config.OPTIONS["allow_unsigned"].env_var
    for spec in specs:
        if allow not in spec.settings.get("env", {}):
            print(
                f"warning: {spec.namespace}/{spec.name}: no --signing-secret, so its runtime refuses to "
                f"start on the pod's address; pass a Secret, or set env {allow}=true for it (anyone "
                "who reaches the Service can then run its functions)",
                file=sys.stderr,
            )


def _timeout_warnings(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        seconds = manifest["spec"]["template"]["spec"]["timeoutSeconds"]
        if seconds > 600:
            print(
                f"warning: {manifest['metadata']['name']}: timeoutSeconds {seconds} is above Knative's default "
                "max-revision-timeout-seconds (600); raise it in config-defaults or the service is rejected",
                file=sys.stderr,
            )


def _problems(exc: KnativeError) -> str:
    return "\n".join(getattr(exc, "problems", None) or [str(exc)])


def _build_or_report(args: argparse.Namespace) -> list[dict[str, Any]] | int:
    from airflow_provider_knative.errors import CollectError, SettingsError

    try:
        manifests = _build(args)
    except (CollectError, SettingsError) as exc:
        return _error(_problems(exc))
    _timeout_warnings(manifests)
    return manifests


def manifests_command(args: argparse.Namespace) -> int:
    from airflow_provider_knative.deploy.manifests import to_json, to_yaml

    manifests = _build_or_report(args)
    if isinstance(manifests, int):
        return manifests
    render = to_json if args.output == "json" else to_yaml
    if not args.output_dir:
        sys.stdout.write(render(manifests))
        sys.stdout.flush()
        return 0
    folder = Path(args.output_dir)
    namespaces = {m["metadata"]["namespace"] for m in manifests}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for manifest in manifests:
            meta = manifest["metadata"]
            stem = meta["name"] if len(namespaces) == 1 else f"{meta['namespace']}.{meta['name']}"
            path = folder / f"{stem}.{args.output}"
            path.write_text(to_json([manifest]) if args.output == "json" else to_yaml([manifest]))
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
        if args.no_wait:
            print(
                f"{len(outcomes)} service(s) applied; not waiting for Ready (`airflow-knative status` shows it)",
                flush=True,
            )
            return 0
        failures = wait_ready(services, outcomes, args.timeout, args.poll_interval, sys.stdout)
    except ClusterError as exc:
        return _error(str(exc))
    if failures:
        return _error("\n".join(failures))
    print(f"{len(outcomes)} service(s) ready", flush=True)
    return 0


def _dump(data: Any, fmt: str) -> None:
    if fmt == "json":
        import json

        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    sys.stdout.flush()


def status_command(args: argparse.Namespace) -> int:
    from airflow_provider_knative.deploy.apply import format_table, status_records, status_rows
    from airflow_provider_knative.deploy.manifests import MANAGED_SELECTOR
    from airflow_provider_knative.knative.api import ClusterError, KnativeServices

    namespace = None if args.all_namespaces else _namespace(args)
    try:
        items = KnativeServices(args.kubeconfig, args.context).list(namespace, MANAGED_SELECTOR)
    except ClusterError as exc:
        return _error(str(exc))
    records = status_records(items)
    if args.output != "table":
        _dump({"namespace": namespace, "items": records}, args.output)
        return 0
    if not records:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"no Knative Services managed by airflow-knative in {where}")
        return 0
    header = ["NAMESPACE", "NAME", "READY", "LATEST READY REVISION", "URL", "REASON"]
    print(format_table(header, status_rows(records)))
    return 0


def delete_command(args: argparse.Namespace) -> int:
    from airflow_provider_knative.deploy.apply import delete
    from airflow_provider_knative.errors import ClusterError, InvalidServiceName, NotManaged, ServiceNotFound
    from airflow_provider_knative.knative.api import KnativeServices
    from airflow_provider_knative.knative.names import service_name

    namespace = _namespace(args)
    try:
        names = [service_name(s) for s in args.services]
    except InvalidServiceName as exc:
        return _error(str(exc))
    failures = []
    try:
        services = KnativeServices(args.kubeconfig, args.context)
        for name in names:
            try:
                delete(services, services.get(namespace, name), dry_run=args.dry_run)
            except ServiceNotFound:
                failures.append(f"{namespace}/{name}: not found")
                continue
            except NotManaged as exc:
                failures.append(str(exc))
                continue
            print(f"{namespace}/{name}: {'would be deleted' if args.dry_run else 'deleted'}", flush=True)
    except ClusterError as exc:
        return _error(str(exc))
    return _error("\n".join(failures)) if failures else 0


def prune_command(args: argparse.Namespace) -> int:
    from airflow_provider_knative.deploy.apply import delete, stale
    from airflow_provider_knative.deploy.manifests import MANAGED_SELECTOR, TASKS_ANNOTATION
    from airflow_provider_knative.errors import ClusterError, CollectError, SettingsError
    from airflow_provider_knative.knative.api import KnativeServices

    try:
        collection = _collect(args)
    except CollectError as exc:
        return _error(_problems(exc) + "\nnothing was pruned")
    except SettingsError as exc:
        return _error(f"{exc}\nnothing was pruned")
    wanted = {(s.namespace, s.name) for s in collection.services}
    namespaces = [_namespace(args), *(ns for ns, _ in wanted)]
    try:
        services = KnativeServices(args.kubeconfig, args.context)
        found = stale(services, namespaces, wanted, MANAGED_SELECTOR)
        for obj in found:
            meta = obj["metadata"]
            tasks = (meta.get("annotations") or {}).get(TASKS_ANNOTATION) or "none recorded"
            delete(services, obj, dry_run=args.dry_run)
            verb = "would be deleted" if args.dry_run else "deleted"
            print(f"{meta['namespace']}/{meta['name']}: {verb} (its tasks are gone: {tasks})", flush=True)
    except ClusterError as exc:
        return _error(str(exc))
    verb = "would be pruned" if args.dry_run else "pruned"
    print(f"{len(found)} service(s) {verb}; {len(wanted)} still used by the DAGs", flush=True)
    return 0
