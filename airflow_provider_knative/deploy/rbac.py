"""The RBAC this package needs on the Kubernetes API, rendered for your namespaces.

Why a command and not only a file: the Roles live in the Knative Services' namespace, but
their subjects are service accounts in Airflow's namespace (and a CI namespace), which
``kubectl apply -n`` cannot rewrite. ``airflow-knative rbac`` renders the same objects for
any namespaces and accounts; ``deploy/rbac.yaml`` is its output for the defaults in
``values.yaml`` (a test keeps the two identical, and another checks that the verbs below
are exactly the ones ``knative/api.py`` calls).

Three grants, each the least that works:

- **reader** (scheduler, workers, triggerer): ``get`` one Service, for URL discovery
  (``[knative] url_template = discover``); nothing else reads the cluster at run time.
- **deployer** (a CI account): ``get`` ``list`` ``create`` ``patch`` ``delete`` in the
  namespace, for ``deploy``, ``status``, ``delete`` and ``prune``.
- **all-namespaces status**: ``list`` across the cluster, a ClusterRole, only for
  ``status -A``; bound to the deployers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from airflow_provider_knative.knative.api import GROUP, PLURAL

READER_VERBS = ("get",)
DEPLOYER_VERBS = ("get", "list", "create", "patch", "delete")
CLUSTER_VERBS = ("list",)
READER = "airflow-knative-reader"
DEPLOYER = "airflow-knative-deployer"
ALL_NAMESPACES = "airflow-knative-status-all-namespaces"
#: the service accounts values.yaml gives the Airflow components that call Knative Services
DEFAULT_READERS = ("airflow-scheduler", "airflow-worker", "airflow-worker-kubernetes", "airflow-triggerer")
DEFAULT_AIRFLOW_NAMESPACE = "airflow"
_LABELS = {"app.kubernetes.io/managed-by": "airflow-provider-knative"}


def _rule(verbs: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": list(verbs)}]


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = dict(_LABELS)
    return meta


def _subjects(accounts: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"kind": "ServiceAccount", "name": name, "namespace": ns} for ns, name in accounts]


def _binding(kind: str, name: str, namespace: str | None, role_kind: str, role: str, subjects: Any) -> Any:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": subjects,
    }


def render(
    namespace: str, readers: list[tuple[str, str]], deployers: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Roles (and bindings for the given accounts) for Knative Services in ``namespace``."""
    role = "rbac.authorization.k8s.io/v1"
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": role,
            "kind": "Role",
            "metadata": _meta(READER, namespace),
            "rules": _rule(READER_VERBS),
        },
        {
            "apiVersion": role,
            "kind": "Role",
            "metadata": _meta(DEPLOYER, namespace),
            "rules": _rule(DEPLOYER_VERBS),
        },
        {
            "apiVersion": role,
            "kind": "ClusterRole",
            "metadata": _meta(ALL_NAMESPACES),
            "rules": _rule(CLUSTER_VERBS),
        },
    ]
    if readers:
        objects.append(_binding("RoleBinding", READER, namespace, "Role", READER, _subjects(readers)))
    if deployers:
        objects.append(_binding("RoleBinding", DEPLOYER, namespace, "Role", DEPLOYER, _subjects(deployers)))
        objects.append(
            _binding(
                "ClusterRoleBinding",
                f"{ALL_NAMESPACES}-{namespace}",
                None,
                "ClusterRole",
                ALL_NAMESPACES,
                _subjects(deployers),
            )
        )
    return objects


def render_yaml(namespace: str, readers: list[tuple[str, str]], deployers: list[tuple[str, str]]) -> str:
    """:func:`render` as YAML, headed by the command that reproduces it."""
    import yaml

    command = f"airflow-knative rbac --namespace {namespace}" + "".join(
        f" --service-account {ns}:{name}" for ns, name in readers
    )
    command += "".join(f" --deployer {ns}:{name}" for ns, name in deployers)
    header = (
        "# RBAC for airflow-provider-knative on services.serving.knative.dev, rendered by:\n"
        f"#   {command}\n"
        "# reader: get one Service (URL discovery from Airflow's scheduler, workers, triggerer).\n"
        "# deployer: get/list/create/patch/delete in the namespace (deploy, status, delete, prune).\n"
        "# ClusterRole: list in every namespace, only for `status -A`.\n"
        f"#   kubectl apply -f THIS_FILE   (namespace {namespace} must exist)\n"
    )
    objects = render(namespace, readers, deployers)
    return header + "".join("---\n" + yaml.safe_dump(obj, sort_keys=False) for obj in objects)


def _account(default_namespace: str) -> Any:
    def parse(text: str) -> tuple[str, str]:
        from airflow_provider_knative.knative.names import is_valid_namespace

        namespace, _, name = text.rpartition(":")
        namespace = namespace or default_namespace
        if not is_valid_namespace(namespace) or not is_valid_namespace(name):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a service account: write NAME or NAMESPACE:NAME (lowercase, digits, '-')"
            )
        return namespace, name

    return parse


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rbac",
        help="print the Roles and bindings airflow-knative needs, for your namespaces",
        description="Print RBAC objects (YAML) for Knative Services in --namespace: a reader Role "
        "for Airflow's components (URL discovery), a deployer Role and an all-namespaces "
        "ClusterRole for `status -A`. Pipe to `kubectl apply -f -`.",
    )
    parser.add_argument(
        "--namespace", "-n", help="namespace of the Knative Services (default: [knative] namespace)"
    )
    parser.add_argument(
        "--service-account",
        action="append",
        metavar="[NS:]NAME",
        help="account that discovers Service URLs (repeatable; default: "
        + ", ".join(f"{DEFAULT_AIRFLOW_NAMESPACE}:{n}" for n in DEFAULT_READERS)
        + ")",
    )
    parser.add_argument(
        "--deployer",
        action="append",
        metavar="[NS:]NAME",
        help="account that runs deploy/status/delete/prune (repeatable; none: the Roles stay unbound)",
    )
    parser.set_defaults(handler=rbac_command)


def rbac_command(args: argparse.Namespace) -> int:
    from airflow_provider_knative import config
    from airflow_provider_knative.knative.names import is_valid_namespace

    namespace = args.namespace or str(config.get("namespace"))
    if not is_valid_namespace(namespace):
        print(f"error: namespace {namespace!r} is not a valid Kubernetes namespace name", file=sys.stderr)
        return 1
    try:
        readers = [_account(DEFAULT_AIRFLOW_NAMESPACE)(a) for a in args.service_account or []] or [
            (DEFAULT_AIRFLOW_NAMESPACE, name) for name in DEFAULT_READERS
        ]
        deployers = [_account(namespace)(a) for a in args.deployer or []]
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_yaml(namespace, readers, deployers))
    return 0
