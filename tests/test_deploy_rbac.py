"""deploy/rbac.yaml grants exactly what the code calls on the Kubernetes API, no more.

Two independent ways to find "what the code calls": reading ``knative/api.py`` (every API
call is a ``self._api.<method>`` of ``CustomObjectsApi`` there) and recording what the CLI
and URL discovery really send to the fake API server. Both are mapped to RBAC verbs and
checked against the Roles in deploy/rbac.yaml, which must be what ``airflow-knative rbac``
renders for the defaults.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from fake_kube_api import FakeKnativeApi, run_deploy_cli

from airflow_provider_knative.deploy import rbac
from airflow_provider_knative.knative import api as knative_api

REPO = Path(__file__).resolve().parent.parent
BASIC = Path(__file__).resolve().parent / "deploy_dags" / "basic"
RBAC_FILE = REPO / "deploy" / "rbac.yaml"

#: CustomObjectsApi method -> (RBAC verb, "namespaced" | "cluster")
API_VERBS = {
    "get_namespaced_custom_object": ("get", "namespaced"),
    "list_namespaced_custom_object": ("list", "namespaced"),
    "list_cluster_custom_object": ("list", "cluster"),
    "create_namespaced_custom_object": ("create", "namespaced"),
    "patch_namespaced_custom_object": ("patch", "namespaced"),
    "replace_namespaced_custom_object": ("update", "namespaced"),
    "delete_namespaced_custom_object": ("delete", "namespaced"),
    "get_cluster_custom_object": ("get", "cluster"),
}


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d]


def _rules(kind: str, name: str) -> set[str]:
    (obj,) = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    (rule,) = obj["rules"]
    assert rule["apiGroups"] == [knative_api.GROUP] and rule["resources"] == [knative_api.PLURAL]
    assert "resourceNames" not in rule
    return set(rule["verbs"])


def _api_calls_by_method() -> dict[str, set[str]]:
    """KnativeServices method -> the CustomObjectsApi methods it calls (``self._api.X``)."""
    tree = ast.parse(Path(knative_api.__file__).read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KnativeServices"]
    calls: dict[str, set[str]] = {}
    for fn in cls.body:
        if isinstance(fn, ast.FunctionDef):
            calls[fn.name] = {
                node.attr
                for node in ast.walk(fn)
                if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "_api"
            }
    return calls


def _methods_used_by_discovery() -> set[str]:
    """The KnativeServices methods ``discover_url`` calls (``KnativeServices().X(...)``)."""
    tree = ast.parse(Path(knative_api.__file__).read_text())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "discover_url"]
    return {
        node.func.attr
        for node in ast.walk(fn)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Call)
        and getattr(node.func.value.func, "id", None) == "KnativeServices"
    }


def _verbs(api_methods: set[str]) -> set[tuple[str, str]]:
    unknown = api_methods - set(API_VERBS)
    assert not unknown, f"map {sorted(unknown)} to an RBAC verb in API_VERBS (and grant it in rbac.py)"
    return {API_VERBS[m] for m in api_methods}


def test_rbac_yaml_is_what_the_rbac_command_renders_for_the_defaults() -> None:
    values = yaml.safe_load((REPO / "values.yaml").read_text())
    namespace = values["config"]["knative"]["namespace"]
    readers = [(rbac.DEFAULT_AIRFLOW_NAMESPACE, name) for name in rbac.DEFAULT_READERS]
    expected = rbac.render_yaml(namespace, readers, [(namespace, "airflow-knative-deployer")])
    assert RBAC_FILE.read_text() == expected, "regenerate: see the command at the top of deploy/rbac.yaml"


def test_granted_verbs_are_exactly_the_verbs_the_code_calls() -> None:
    calls = _api_calls_by_method()
    everything = _verbs(set().union(*calls.values()))
    assert everything, "found no API call in knative/api.py: the AST walk is broken"
    namespaced = {verb for verb, scope in everything if scope == "namespaced"}
    cluster = {verb for verb, scope in everything if scope == "cluster"}
    assert _rules("Role", rbac.DEPLOYER) == namespaced == set(rbac.DEPLOYER_VERBS)
    assert _rules("ClusterRole", rbac.ALL_NAMESPACES) == cluster == set(rbac.CLUSTER_VERBS) == {"list"}

    discovery = _methods_used_by_discovery()
    assert discovery == {"get"}, discovery
    reader = {verb for verb, _ in _verbs(set().union(*(calls[m] for m in discovery)))}
    assert _rules("Role", rbac.READER) == reader == set(rbac.READER_VERBS) == {"get"}
    assert "watch" not in _rules("Role", rbac.DEPLOYER) | _rules("Role", rbac.READER)  # nobody watches


def test_bindings_point_at_the_roles_and_the_values_service_accounts() -> None:
    docs = _docs()
    values = yaml.safe_load((REPO / "values.yaml").read_text())
    namespace = values["config"]["knative"]["namespace"]
    roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("Role", "ClusterRole")}
    for binding in [d for d in docs if d["kind"].endswith("Binding")]:
        ref = binding["roleRef"]
        assert (ref["kind"], ref["name"]) in roles
        if binding["kind"] == "RoleBinding":
            assert binding["metadata"]["namespace"] == namespace
    for d in docs:
        if d["kind"] == "Role":
            assert d["metadata"]["namespace"] == namespace
    (reader,) = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == rbac.READER]
    bound = {s["name"] for s in reader["subjects"]}
    components = [
        values["scheduler"]["serviceAccount"]["name"],
        values["triggerer"]["serviceAccount"]["name"],
        values["workers"]["celery"]["serviceAccount"]["name"],
        values["workers"]["kubernetes"]["serviceAccount"]["name"],
    ]
    assert set(components) == bound == set(rbac.DEFAULT_READERS)


@pytest.fixture
def api() -> Iterator[FakeKnativeApi]:
    with FakeKnativeApi(ready_delay=0.05) as server:
        yield server


def _requested_verbs(requests: list[tuple[str, str, str]]) -> set[tuple[str, str]]:
    verbs = set()
    for method, path, _ in requests:
        parsed = urlparse(path)
        parts = parsed.path.strip("/").split("/")  # apis/GROUP/VERSION[/namespaces/NS]/services[/NAME]
        scope = "namespaced" if "namespaces" in parts else "cluster"
        named = parts[-1] != knative_api.PLURAL
        if method == "GET":
            verb = "get" if named else "list"
            assert "watch" not in parse_qs(parsed.query)
        else:
            verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}[method]
        verbs.add((verb, scope))
    return verbs


def test_every_request_the_cli_and_discovery_send_is_granted(
    api: FakeKnativeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
    cluster = ["--kubeconfig", kubeconfig]
    source = ["--dags-folder", str(BASIC), "--image", "reg/dags:1"]
    runs = [
        ["deploy", *source, *cluster, "--dry-run"],
        ["deploy", *source, *cluster, "--poll-interval", "0.02"],
        ["deploy", *source, *cluster, "--image", "reg/dags:2", "--no-wait"],
        ["status", *cluster],
        ["status", *cluster, "-A", "-o", "json"],
        ["delete", "etl-runtime", *cluster, "--dry-run"],
        ["delete", "etl-runtime", *cluster],
        ["prune", "--dags-folder", str(BASIC), *cluster, "--namespace", "ml", "--dry-run"],
        ["prune", "--dags-folder", str(BASIC), *cluster],
    ]
    for argv in runs:
        code, _, err = run_deploy_cli(argv)
        assert code == 0, (argv, err)
    deployer_requests = _requested_verbs(api.requests)
    granted = {(v, "namespaced") for v in _rules("Role", rbac.DEPLOYER)}
    granted |= {(v, "cluster") for v in _rules("ClusterRole", rbac.ALL_NAMESPACES)}
    assert deployer_requests <= granted, deployer_requests - granted
    assert deployer_requests == granted  # and every grant is used by some command

    api.requests.clear()
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    knative_api.discover_url.cache_clear()
    assert knative_api.discover_url("avg-worker", "default") == "http://avg-worker.default.svc.cluster.local"
    knative_api.discover_url.cache_clear()
    assert _requested_verbs(api.requests) == {(v, "namespaced") for v in _rules("Role", rbac.READER)}


def test_rbac_command_renders_for_other_namespaces_and_accounts() -> None:
    code, out, err = run_deploy_cli(
        [
            "rbac",
            "--namespace",
            "team-a",
            "--service-account",
            "airflow-prod:worker",
            "--service-account",
            "triggerer",
            "--deployer",
            "ci:pipeline",
        ]
    )
    assert code == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] in ("Role", "RoleBinding")} == {
        "team-a"
    }
    (reader,) = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == rbac.READER]
    assert [(s["namespace"], s["name"]) for s in reader["subjects"]] == [
        ("airflow-prod", "worker"),
        ("airflow", "triggerer"),
    ]
    (cluster_binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["metadata"]["name"] == "airflow-knative-status-all-namespaces-team-a"
    assert cluster_binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline", "namespace": "ci"}]

    code, out, _ = run_deploy_cli(["rbac", "--namespace", "team-a"])
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "ClusterRoleBinding" not in kinds and kinds.count("RoleBinding") == 1  # no deployer given

    code, _, err = run_deploy_cli(["rbac", "--deployer", "Bad_Name"])
    assert code == 1 and "NAMESPACE:NAME" in err
