"""``airflow-knative manifests``: DAGs → Knative Service manifests valid against the CRD schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kube_api import run_deploy_cli, validation_errors
from pod_security import restricted_violations

from airflow_provider_knative.deploy.settings import (
    SETTINGS,
    SettingsError,
    check_combination,
    check_settings,
)
from airflow_provider_knative.knative.names import InvalidServiceName, service_name

HERE = Path(__file__).resolve().parent
DEPLOY_DAGS = HERE / "deploy_dags"
EXAMPLE_DAGS = HERE.parent / "example_dags"
LONG = "feature-engineering-for-the-quarterly-revenue-forecast-model-training"
#: on every revision template: Prometheus scrapes the runtime's GET /metrics on the container port
SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}


def manifests_of(folder: Path, *extra: str) -> dict[str, dict[str, Any]]:
    code, out, err = run_deploy_cli(
        ["manifests", "--dags-folder", str(folder), "--image", "reg.example/dags:1", *extra]
    )
    assert code == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    return {d["metadata"]["name"]: d for d in docs}


@pytest.fixture(scope="module")
def basic() -> tuple[dict[str, dict[str, Any]], str]:
    """Manifests of tests/deploy_dags/basic, parsed once for the module, and what went to stderr."""
    code, out, err = run_deploy_cli(
        ["manifests", "--dags-folder", str(DEPLOY_DAGS / "basic"), "--image", "reg.example/dags:1"]
    )
    assert code == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    return {d["metadata"]["name"]: d for d in docs}, err


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def _env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(manifest)["env"]}


def test_every_manifest_validates_against_the_knative_crd_schema(basic: Any) -> None:
    manifests, _ = basic
    assert len(manifests) == 3
    for manifest in manifests.values():
        assert validation_errors(manifest) == [], manifest["metadata"]["name"]


def test_every_revision_is_scraped_by_prometheus_on_the_container_port(basic: Any) -> None:
    manifests, _ = basic
    for manifest in manifests.values():
        annotations = manifest["spec"]["template"]["metadata"]["annotations"]
        assert {k: annotations[k] for k in SCRAPE} == SCRAPE, manifest["metadata"]["name"]
        (port,) = _container(manifest)["ports"]
        assert str(port["containerPort"]) == SCRAPE["prometheus.io/port"]


def test_a_service_may_turn_scraping_off_through_its_annotations(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(
        yaml.safe_dump({"services": {"avg-worker": {"annotations": {"prometheus.io/scrape": "false"}}}})
    )
    manifests = manifests_of(DEPLOY_DAGS / "basic", "--defaults", str(defaults))
    assert (
        manifests["avg-worker"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"]
        == "false"
    )
    assert (
        manifests["etl-runtime"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"]
        == "true"
    )
    assert validation_errors(manifests["avg-worker"]) == []


def test_schema_check_rejects_unknown_fields_and_wrong_types(basic: Any) -> None:
    """The validator is strict: a typo in a generated field would not pass silently."""
    manifest = yaml.safe_load(yaml.safe_dump(basic[0]["avg-worker"]))
    manifest["spec"]["template"]["spec"]["containerConcurency"] = 4
    manifest["spec"]["template"]["spec"]["timeoutSeconds"] = "600"
    _container(manifest)["readinessProbe"]["httpGet"]["path"] = 5
    errors = validation_errors(manifest)
    assert any("containerConcurency" in e for e in errors)
    assert any(e.startswith("spec.template.spec.timeoutSeconds") for e in errors)
    assert any("readinessProbe.httpGet.path" in e for e in errors)


def test_tasks_sharing_a_service_get_one_knative_service(basic: Any) -> None:
    manifests, err = basic
    avg = manifests["avg-worker"]
    meta = avg["metadata"]
    assert meta["namespace"] == "default"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "airflow-provider-knative"
    assert meta["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    assert meta["annotations"]["airflow-provider-knative/dag-ids"] == "deploy_compute"
    assert meta["annotations"]["airflow-provider-knative/task-ids"] == (
        "deploy_compute.double,deploy_compute.extract,deploy_compute.total"
    )
    etl = manifests["etl-runtime"]["metadata"]["annotations"]["airflow-provider-knative/task-ids"]
    assert etl == "deploy_etl.load,deploy_etl.transform"  # plain and mapped KnativeOperator
    assert "deploy_etl.notify" in err and "url='http://hooks.example.com/notify'" in err


def test_concurrency_timeouts_autoscaling_and_resources(basic: Any) -> None:
    avg = basic[0]["avg-worker"]
    template = avg["spec"]["template"]
    assert template["spec"]["containerConcurrency"] == 8
    assert template["spec"]["timeoutSeconds"] == 600
    assert template["metadata"]["annotations"] == {
        **SCRAPE,
        "autoscaling.knative.dev/min-scale": "1",
        "autoscaling.knative.dev/max-scale": "5",
        "autoscaling.knative.dev/target": "6",
    }
    env = _env(avg)
    assert env["AIRFLOW__KNATIVE__CONTAINER_CONCURRENCY"] == "8"  # the runtime matches the pod limit
    # the drain fits in what Knative's grace period (= timeoutSeconds) leaves after the
    # queue-proxy's preStop drain (at least 30 s), with time to record the outcomes
    assert env["AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS"] == "565"
    assert env["LOG_FORMAT"] == "json"
    assert _container(avg)["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"memory": "512Mi"},
    }
    features = basic[0][service_name(LONG)]
    assert _container(features)["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }


def test_container_contract_probes_port_command_and_secrets(basic: Any) -> None:
    container = _container(basic[0]["avg-worker"])
    assert container["image"] == "reg.example/dags:1"
    assert container["command"] + container["args"] == [
        "airflow-knative",
        "serve",
        "--dags-folder",
        "/opt/airflow/dags",
    ]
    assert container["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert container["readinessProbe"] == {"httpGet": {"path": "/readyz"}}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz"}
    env = _env(basic[0]["avg-worker"])
    assert "PORT" not in env  # Knative sets it; the webhook rejects it
    assert env["AIRFLOW__KNATIVE__SIGNING_SECRET"] == {
        "secretKeyRef": {"name": "airflow-knative-signing", "key": "signing-secret"}
    }
    assert container["envFrom"] == [{"secretRef": {"name": "airflow-knative-store"}}]
    plain = {e["name"] for e in container["env"] if "value" in e}
    assert not plain & {"AIRFLOW__KNATIVE__SIGNING_SECRET", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"}


def test_external_visibility_long_timeout_and_scale_down_delay(basic: Any) -> None:
    manifests, err = basic
    etl = manifests["etl-runtime"]
    assert "networking.knative.dev/visibility" not in etl["metadata"]["labels"]
    assert etl["spec"]["template"]["spec"]["timeoutSeconds"] == 900
    assert etl["spec"]["template"]["metadata"]["annotations"] == {
        **SCRAPE,
        "autoscaling.knative.dev/scale-down-delay": "15m",
    }
    assert "etl-runtime: timeoutSeconds 900 is above Knative's default max-revision-timeout-seconds" in err


def test_long_names_are_shortened_deterministically(basic: Any) -> None:
    short = service_name(LONG)
    assert len(short) == 63 and short.startswith("feature-engineering-for-the-quarterly-revenue")
    assert short == service_name(LONG)
    assert service_name(LONG + "-x") != short
    manifest = basic[0][short]
    assert manifest["metadata"]["namespace"] == "ml"  # namespace= on the task
    assert manifest["metadata"]["annotations"]["airflow-provider-knative/service"] == LONG


def test_invalid_names_are_errors_with_a_suggestion() -> None:
    assert service_name("avg-worker") == "avg-worker"
    for bad, hint in [("Avg_Worker", "'avg-worker'"), ("9lives", "'lives'"), ("trailing-", "'trailing'")]:
        with pytest.raises(InvalidServiceName, match=hint):
            service_name(bad)
    with pytest.raises(InvalidServiceName):
        service_name("")


def test_output_folder_holds_one_file_per_service(tmp_path: Path) -> None:
    code, _, err = run_deploy_cli(
        [
            "manifests",
            "--dags-folder",
            str(DEPLOY_DAGS / "basic"),
            "--image",
            "r/d:1",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted(
        f"{ns}.{name}.yaml"
        for ns, name in [("default", "avg-worker"), ("default", "etl-runtime"), ("ml", service_name(LONG))]
    )
    doc = yaml.safe_load((tmp_path / "out" / "default.avg-worker.yaml").read_text())
    assert doc["kind"] == "Service" and validation_errors(doc) == []


def test_json_output_is_one_list_and_matches_the_yaml(tmp_path: Path) -> None:
    import json

    base = ["manifests", "--dags-folder", str(DEPLOY_DAGS / "basic"), "--image", "r/d:1"]
    code, out, err = run_deploy_cli([*base, "-o", "json"])
    assert code == 0, err
    listed = json.loads(out)  # stdout holds only the document
    assert listed["apiVersion"] == "v1" and listed["kind"] == "List"
    code, yaml_out, _ = run_deploy_cli(base)
    assert listed["items"] == [d for d in yaml.safe_load_all(yaml_out) if d]

    code, _, err = run_deploy_cli([*base, "-o", "json", "--output-dir", str(tmp_path)])
    assert code == 0, err
    doc = json.loads((tmp_path / "default.avg-worker.json").read_text())
    assert doc["items"][0]["metadata"]["name"] == "avg-worker"

    with pytest.raises(SystemExit):  # argparse refuses other formats
        run_deploy_cli([*base, "-o", "xml"])


def test_defaults_file_layers_under_task_settings(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(
        yaml.safe_dump(
            {
                "defaults": {"scale_down_delay": "5m", "min_scale": 0, "service_account": "knative-runner"},
                "services": {"avg-worker": {"memory": "1Gi", "min_scale": 2, "env": {"EXTRA": "1"}}},
            }
        )
    )
    manifests = manifests_of(DEPLOY_DAGS / "basic", "--defaults", str(defaults))
    avg = manifests["avg-worker"]
    annotations = avg["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "1"  # the task's own setting wins
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "5m"
    assert _container(avg)["resources"]["requests"]["memory"] == "1Gi"
    assert _env(avg)["EXTRA"] == "1" and _env(avg)["LOG_FORMAT"] == "json"
    assert avg["spec"]["template"]["spec"]["serviceAccountName"] == "knative-runner"
    etl = manifests["etl-runtime"]["spec"]["template"]["metadata"]["annotations"]
    assert etl["autoscaling.knative.dev/scale-down-delay"] == "15m"
    assert etl["autoscaling.knative.dev/min-scale"] == "0"


def test_defaults_file_with_unknown_setting(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("defaults:\n  max_scal: 3\n")
    code, out, err = run_deploy_cli(
        [
            "manifests",
            "--dags-folder",
            str(DEPLOY_DAGS / "basic"),
            "--image",
            "r/d:1",
            "--defaults",
            str(defaults),
        ]
    )
    assert code == 1 and out == ""
    assert "unknown service setting 'max_scal'" in err and "max_scale" in err


def test_import_error_names_file_and_error() -> None:
    code, out, err = run_deploy_cli(
        ["manifests", "--dags-folder", str(DEPLOY_DAGS / "import_error"), "--image", "r/d:1"]
    )
    assert code == 1 and out == ""
    assert "1 DAG file(s)" in err and "broken.py" in err
    assert "ModuleNotFoundError: No module named 'module_that_does_not_exist_anywhere'" in err


def test_conflicting_settings_name_both_tasks() -> None:
    code, _, err = run_deploy_cli(
        ["manifests", "--dags-folder", str(DEPLOY_DAGS / "conflict"), "--image", "r/d:1"]
    )
    assert code == 1
    assert "conflicting setting min_scale" in err
    assert "deploy_conflict_a.first sets 1" in err and "deploy_conflict_b.second sets 3" in err
    assert "cpu" not in err.split("conflicting setting", 1)[1].split("\n")[0]  # equal values agree


def test_invalid_service_name_in_a_dag() -> None:
    code, _, err = run_deploy_cli(
        ["manifests", "--dags-folder", str(DEPLOY_DAGS / "invalid_name"), "--image", "r/d:1"]
    )
    assert code == 1
    assert "deploy_invalid_name.bad: service name 'Avg_Worker' is not a valid Knative Service name" in err
    assert "'avg-worker'" in err


def test_unknown_setting_lists_the_valid_ones() -> None:
    code, _, err = run_deploy_cli(
        ["manifests", "--dags-folder", str(DEPLOY_DAGS / "unknown_setting"), "--image", "r/d:1"]
    )
    assert code == 1
    assert "deploy_unknown_setting.typo: unknown service setting 'min_scael'" in err
    assert "valid settings are: " + ", ".join(sorted(SETTINGS)) in err
    assert {"annotations", "env_from", "gpu", "image_pull_secrets", "service_annotations"} <= set(SETTINGS)


def test_missing_dag_folder_is_one_clear_error(tmp_path: Path) -> None:
    code, _, err = run_deploy_cli(["manifests", "--dags-folder", str(tmp_path / "nope"), "--image", "r/d:1"])
    assert code == 1 and "does not exist" in err and "Traceback" not in err


def test_folder_without_knative_tasks_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text(
        "from airflow.sdk import dag, task\n\n@dag(schedule=None)\ndef plain_dag():\n"
        "    @task\n    def t():\n        return 1\n    t()\n\nplain_dag()\n"
    )
    code, _, err = run_deploy_cli(["manifests", "--dags-folder", str(tmp_path), "--image", "r/d:1"])
    assert code == 1 and "no @task.knative or KnativeOperator task" in err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"container_concurrency": 0}, "between 1 and 1000"),
        ({"timeout_seconds": "600"}, "whole number"),
        ({"min_scale": True}, "whole number"),
        ({"scale_down_delay": "2h"}, "between 0s and 1h"),
        ({"scale_down_delay": "soon"}, "duration"),
        ({"cpu": "lots"}, "Kubernetes quantity"),
        ({"env": {"PORT": "9000"}}, "reserved by Knative"),
        ({"env": {"AIRFLOW__KNATIVE__CONTAINER_CONCURRENCY": "3"}}, "derived from the service settings"),
        ({"env": {"1BAD": "x"}}, "not a valid environment variable name"),
        ({"visibility": "public"}, "'cluster-local', 'external'"),
        ({"service_account": "Bad_Name"}, "Kubernetes object name"),
        ({"gpu": 0}, "between 1 and 64"),
        ({"gpu_resource": "gpu"}, "extended resource with a vendor domain"),
        ({"gpu_resource": "kubernetes.io/gpu"}, "extended resource with a vendor domain"),
        ({"annotations": {"bad key!": "x"}}, "not a valid Kubernetes key"),
        ({"annotations": {"autoscaling.knative.dev/min-scale": "2"}}, "comes from the 'min_scale' setting"),
        ({"service_annotations": {"airflow-provider-knative/service": "x"}}, "written by airflow-knative"),
        ({"annotations": {"a.io/b": ["x"]}}, "must be a string"),
        ({"image_pull_secrets": ["Registry"]}, "Kubernetes object name"),
        ({"image_pull_secrets": ["r", "r"]}, "twice"),
        ({"env": {"PW": {"secret": "db"}}}, "reference {secret: NAME, key: KEY}"),
        ({"env": {"PW": {"secret": "db", "config_map": "c", "key": "k"}}}, "reference"),
        ({"env": {"PW": {"secret": "DB", "key": "k"}}}, "PW: must be a Kubernetes object name"),
        ({"env_from": {"secret": "db"}}, "must be a list"),
        ({"env_from": [{"secrets": "db"}]}, "entries must be {secret: NAME} or {config_map: NAME}"),
        ({"env_from": [{"secret": "db", "prefix": "1X"}]}, "not a valid start of a variable name"),
        ({"read_only_root_filesystem": "no"}, "true or false"),
    ],
)
def test_setting_values_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        check_settings(settings, "dag.task")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_scale": 4, "max_scale": 2}, "min_scale 4 is above max_scale 2"),
        ({"initial_scale": 3, "max_scale": 2}, "initial_scale 3 is above max_scale 2"),
        ({"target": 20, "container_concurrency": 10}, "target 20 is above container_concurrency 10"),
        ({"memory": "2Gi", "memory_limit": "1Gi"}, "memory 2Gi is above memory_limit 1Gi"),
        ({"cpu": "1500m", "cpu_limit": "1"}, "cpu 1500m is above cpu_limit 1"),
        ({"gpu_resource": "amd.com/gpu"}, "gpu_resource amd.com/gpu is set but gpu"),
    ],
)
def test_settings_that_contradict_each_other(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        check_combination(check_settings(settings, "x"), "service 'x'")
    check_combination(
        check_settings({"min_scale": 2, "max_scale": 0, "cpu": "500m", "cpu_limit": "1"}, "x"), "x"
    )


@pytest.mark.skipif(not any(EXAMPLE_DAGS.glob("*.py")), reason="example_dags/ not written yet")
def test_example_dags_manifests_validate() -> None:
    manifests = manifests_of(EXAMPLE_DAGS)
    assert {"avg-worker", "etl-worker"} <= set(manifests)
    for manifest in manifests.values():
        assert validation_errors(manifest) == [], manifest["metadata"]["name"]
        assert manifest["metadata"]["annotations"]["airflow-provider-knative/task-ids"]


def test_console_script_writes_clean_yaml_to_stdout() -> None:
    """Through the real entry point, in its own process: stdout holds only the manifests."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "airflow-knative"),
            "manifests",
            "--dags-folder",
            str(DEPLOY_DAGS / "basic"),
            "--image",
            "reg.example/dags:1",
            "-o",
            "yaml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert sorted(d["metadata"]["name"] for d in docs) == sorted(
        ["avg-worker", "etl-runtime", service_name(LONG)]
    )
    assert "service default/avg-worker" in proc.stderr


# ---------------------------------------------------------------------------- security context


def _template(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    template = manifest["spec"]["template"]
    return template["spec"], template["metadata"].get("annotations", {})


def test_every_generated_service_passes_pod_security_restricted(basic: Any) -> None:
    for name, manifest in basic[0].items():
        pod, annotations = _template(manifest)
        assert restricted_violations(pod, annotations) == [], name
        assert validation_errors(manifest) == [], name
        (container,) = pod["containers"]
        # container level: Knative only admits a pod-level securityContext behind a feature flag
        assert "securityContext" not in pod
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_pod_security_checks_refuse_what_the_restricted_profile_refuses(basic: Any) -> None:
    """The checker fails on a container without the securityContext (as a cluster would)."""
    pod = yaml.safe_load(yaml.safe_dump(_template(basic[0]["avg-worker"])[0]))
    del pod["containers"][0]["securityContext"]
    found = "\n".join(restricted_violations(pod))
    for control in ("Privilege Escalation", "Running as Non-root:", "Seccomp", "Capabilities"):
        assert control in found, control
    pod["containers"][0]["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 0,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
        "seccompProfile": {"type": "Unconfined"},
        "privileged": True,
    }
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    pod["hostNetwork"] = True
    found = "\n".join(restricted_violations(pod))
    for control in (
        "Running as Non-root user",
        "Privileged Containers",
        "Seccomp: spec.containers[0].securityContext.seccompProfile.type must not be Unconfined",
        "may add only NET_BIND_SERVICE",
        "HostPath Volumes",
        "Volume Types",
        "Host Namespaces",
    ):
        assert control in found, control


def test_read_only_root_filesystem_can_be_turned_off(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(yaml.safe_dump({"services": {"avg-worker": {"read_only_root_filesystem": False}}}))
    manifests = manifests_of(DEPLOY_DAGS / "basic", "--defaults", str(defaults))
    assert _container(manifests["avg-worker"])["securityContext"]["readOnlyRootFilesystem"] is False
    assert restricted_violations(_template(manifests["avg-worker"])[0]) == []  # not a PSS control
    assert _container(manifests["etl-runtime"])["securityContext"]["readOnlyRootFilesystem"] is True


# ---------------------------------------------------------------------------- newer settings


def test_annotations_pull_secrets_env_references_and_gpu(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(
        yaml.safe_dump(
            {
                "defaults": {"image_pull_secrets": ["registry-creds"]},
                "services": {
                    "avg-worker": {
                        "annotations": {
                            "autoscaling.knative.dev/metric": "rps",
                            "team.example.com/owner": "ml",
                        },
                        "service_annotations": {"example.com/cost-center": 42},
                        "env": {
                            "DB_PASSWORD": {"secret": "db", "key": "password"},
                            "REGION": {"config_map": "settings", "key": "region", "optional": True},
                        },
                        "env_from": [{"secret": "api-keys"}, {"config_map": "app", "prefix": "APP_"}],
                        "gpu": 2,
                    },
                    "etl-runtime": {"gpu": 1, "gpu_resource": "amd.com/gpu"},
                },
            }
        )
    )
    manifests = manifests_of(DEPLOY_DAGS / "basic", "--defaults", str(defaults))
    avg, etl = manifests["avg-worker"], manifests["etl-runtime"]
    for manifest in manifests.values():
        assert validation_errors(manifest) == [], manifest["metadata"]["name"]
        assert restricted_violations(_template(manifest)[0]) == []
    template = avg["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        **SCRAPE,
        "autoscaling.knative.dev/min-scale": "1",  # from the DAG's settings, beside the user's own
        "autoscaling.knative.dev/max-scale": "5",
        "autoscaling.knative.dev/target": "6",
        "autoscaling.knative.dev/metric": "rps",
        "team.example.com/owner": "ml",
    }
    meta = avg["metadata"]["annotations"]
    assert meta["example.com/cost-center"] == "42"
    assert meta["airflow-provider-knative/template-annotation-keys"] == (
        "autoscaling.knative.dev/metric,team.example.com/owner"
    )
    assert meta["airflow-provider-knative/service-annotation-keys"] == "example.com/cost-center"
    assert template["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert etl["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
    env = _env(avg)
    assert env["DB_PASSWORD"] == {"secretKeyRef": {"name": "db", "key": "password"}}
    assert env["REGION"] == {"configMapKeyRef": {"name": "settings", "key": "region", "optional": True}}
    assert env["LOG_FORMAT"] == "json"  # the task's plain variable is still there
    assert _container(avg)["envFrom"] == [
        {"secretRef": {"name": "airflow-knative-store"}},
        {"secretRef": {"name": "api-keys"}},
        {"configMapRef": {"name": "app"}, "prefix": "APP_"},
    ]
    assert _container(avg)["resources"]["limits"] == {"memory": "512Mi", "nvidia.com/gpu": "2"}
    assert _container(etl)["resources"]["limits"] == {"memory": "512Mi", "amd.com/gpu": "1"}
    secret_vars = [e for e in _container(avg)["env"] if e["name"] in ("DB_PASSWORD", "REGION")]
    assert all("value" not in e for e in secret_vars)  # references only, never a value


def test_tasks_disagreeing_on_newer_settings_are_named() -> None:
    code, out, err = run_deploy_cli(
        ["manifests", "--dags-folder", str(DEPLOY_DAGS / "conflict_more"), "--image", "r/d:1"]
    )
    assert code == 1 and out == ""
    first, second = "deploy_conflict_more.score", "deploy_conflict_more.train"
    assert f"conflicting setting gpu: {first} sets 2 but {second} sets 1" in err
    assert (
        f"conflicting setting annotations.team.example.com/owner: {first} sets 'data' but {second} sets 'ml'"
        in err
    )
    assert f"conflicting setting image_pull_secrets: {first} sets ['registry-a']" not in err
    assert f"{first} sets ['registry-b'] but {second} sets ['registry-a']" in err
    # equal values agree, and a variable only one task sets is no conflict
    assert "annotations.autoscaling.knative.dev/metric" not in err
    assert "env.DB_PASSWORD" not in err and "env.EXTRA" not in err


def test_no_signing_secret_warns_that_the_runtime_will_not_start(tmp_path: Path) -> None:
    base = ["manifests", "--dags-folder", str(DEPLOY_DAGS / "basic"), "--image", "r/d:1"]
    code, out, err = run_deploy_cli([*base, "--signing-secret", ""])
    assert code == 0
    assert "warning: default/avg-worker: no --signing-secret, so its runtime refuses to start" in err
    assert "AIRFLOW__KNATIVE__SIGNING_SECRET" not in out
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("defaults:\n  env: {AIRFLOW__KNATIVE__ALLOW_UNSIGNED: 'true'}\n")
    code, _, err = run_deploy_cli([*base, "--signing-secret", "", "--defaults", str(defaults)])
    assert code == 0 and "no --signing-secret" not in err
    code, _, err = run_deploy_cli(base)
    assert "no --signing-secret" not in err


def test_the_executors_services_are_emitted_with_what_the_runtime_needs(tmp_path: Path) -> None:
    """Tasks the KnativeExecutor runs (by [core] executor and the executor's routing) get
    Services too: workloads on, the request timeout, the Execution API URL, the image's DAG
    folder, task logs in the store; a task on another executor gets none."""
    executor = "knative:airflow_provider_knative.executors.KnativeExecutor,LocalExecutor"
    manifests = manifests_of(
        HERE / "executor_dags",
        *("--executor", executor, "--execution-api-url", "http://airflow-api.airflow.svc:8080/execution/"),
        *("--remote-log-folder", "knative+s3://logs-bucket/task-logs"),
    )
    assert set(manifests) == {
        "airflow-tasks",
        "exec-cold",
        "exec-never",
        "exec-replay",
        "exec-deadline",
        "exec-narrow",
    }
    default = manifests["airflow-tasks"]
    tasks = default["metadata"]["annotations"]["airflow-provider-knative/task-ids"].split(",")
    assert "exec_values.bash_op" in tasks and "exec_values.square" in tasks
    assert "exec_values.via_local" not in tasks  # executor="LocalExecutor"
    env = _env(default)
    assert env["AIRFLOW__KNATIVE__WORKLOADS"] == "true"
    assert env["AIRFLOW__KNATIVE__REQUEST_TIMEOUT_SECONDS"] == "600"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api.airflow.svc:8080/execution/"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/airflow/dags"
    assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "knative+s3://logs-bucket/task-logs"
    assert not any("SQL_ALCHEMY_CONN" in name for name in env)  # the pod never gets the database
    assert default["spec"]["template"]["spec"]["timeoutSeconds"] == 600
    for manifest in manifests.values():
        assert validation_errors(manifest) == []
    # without the KnativeExecutor in [core] executor, the same folder needs no Service
    code, _, err = run_deploy_cli(
        [
            "manifests",
            "--dags-folder",
            str(HERE / "executor_dags"),
            "--image",
            "i:1",
            "--executor",
            "LocalExecutor",
        ]
    )
    assert code != 0 and "sends no task to the KnativeExecutor" in err
