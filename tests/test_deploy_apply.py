"""``airflow-knative deploy`` and ``status`` against a fake Kubernetes API server.

No Kubernetes runs here: tests/fake_kube_api.py serves the real ``serving.knative.dev/v1``
REST paths on 127.0.0.1 and plays Knative's controller (Ready after a delay, or a failed
revision). The real ``kubernetes`` client reaches it through a generated kubeconfig.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fake_kube_api import FakeKnativeApi, run_deploy_cli, validation_errors
from servers import free_port

from airflow_provider_knative.knative.names import service_name

BASIC = Path(__file__).resolve().parent / "deploy_dags" / "basic"
LONG = service_name("feature-engineering-for-the-quarterly-revenue-forecast-model-training")


@pytest.fixture
def api() -> Iterator[FakeKnativeApi]:
    with FakeKnativeApi(ready_delay=0.4) as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeKnativeApi, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


def deploy(kubeconfig: Path, *extra: str, image: str = "reg/dags:1") -> tuple[int, str, str]:
    return run_deploy_cli(
        [
            "deploy",
            "--dags-folder",
            str(BASIC),
            "--image",
            image,
            "--kubeconfig",
            str(kubeconfig),
            "--poll-interval",
            "0.05",
            "--timeout",
            "10",
            *extra,
        ]
    )


def test_deploy_creates_services_and_waits_until_ready(api: FakeKnativeApi, kubeconfig: Path) -> None:
    start = time.monotonic()
    code, out, err = deploy(kubeconfig)
    assert code == 0, err
    assert time.monotonic() - start >= api.ready_delay  # it really waited for Ready
    assert "default/avg-worker: created" in out
    assert 'default/avg-worker: waiting (Ready=Unknown, RevisionMissing: Configuration "avg-worker"' in out
    assert (
        "default/avg-worker: ready, revision avg-worker-00001, http://avg-worker.default.svc.cluster.local"
        in out
    )
    assert f"ml/{LONG}: ready, revision {LONG}-00001" in out
    assert "3 service(s) ready" in out
    posts = [(m, p) for m, p, _ in api.requests if m == "POST"]
    assert sorted(p.split("?")[0] for _, p in posts) == sorted(
        [
            "/apis/serving.knative.dev/v1/namespaces/default/services",
            "/apis/serving.knative.dev/v1/namespaces/default/services",
            "/apis/serving.knative.dev/v1/namespaces/ml/services",
        ]
    )
    stored = api.objects[("default", "avg-worker")]
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/dags:1"


def test_redeploy_patches_with_a_merge_patch_and_waits_for_the_new_generation(
    api: FakeKnativeApi, kubeconfig: Path
) -> None:
    assert deploy(kubeconfig)[0] == 0
    api.requests.clear()
    code, out, err = deploy(kubeconfig, image="reg/dags:2")
    assert code == 0, err
    assert "default/avg-worker: patched (1 fields)" in out
    assert "spec.template.spec.containers[0].image: reg/dags:1 -> reg/dags:2" in out
    assert "default/avg-worker: ready, revision avg-worker-00002" in out  # not the old revision
    patches = [(p, ct) for m, p, ct in api.requests if m == "PATCH"]
    assert len(patches) == 3 and all(ct == "application/merge-patch+json" for _, ct in patches)
    assert api.objects[("default", "avg-worker")]["metadata"]["generation"] == 2

    api.requests.clear()
    code, out, _ = deploy(kubeconfig, image="reg/dags:2")
    assert code == 0 and out.count(": unchanged") == 3
    assert not [m for m, _, _ in api.requests if m in ("PATCH", "POST")]


def test_a_removed_setting_removes_its_annotation(
    api: FakeKnativeApi, kubeconfig: Path, tmp_path: Path
) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(
        yaml.safe_dump({"services": {"avg-worker": {"scale_down_delay": "10m", "service_account": "runner"}}})
    )
    assert deploy(kubeconfig, "--defaults", str(defaults))[0] == 0
    template = api.objects[("default", "avg-worker")]["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/scale-down-delay"] == "10m"

    code, out, err = deploy(kubeconfig)
    assert code == 0, err
    assert (
        "spec.template.metadata.annotations.autoscaling.knative.dev/scale-down-delay: 10m -> <unset>" in out
    )
    template = api.objects[("default", "avg-worker")]["spec"]["template"]
    assert "autoscaling.knative.dev/scale-down-delay" not in template["metadata"]["annotations"]
    assert "serviceAccountName" not in template["spec"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "1"


def test_dry_run_reports_and_changes_nothing(api: FakeKnativeApi, kubeconfig: Path) -> None:
    code, out, _ = deploy(kubeconfig, "--dry-run")
    assert code == 0
    assert "default/avg-worker: would create" in out and api.objects == {}
    assert any("dryRun=All" in p for m, p, _ in api.requests if m == "POST")  # validated server-side

    assert deploy(kubeconfig)[0] == 0
    before = api.objects[("default", "avg-worker")]["metadata"]["resourceVersion"]
    code, out, _ = deploy(kubeconfig, "--dry-run", image="reg/dags:3")
    assert code == 0
    assert "default/avg-worker: would patch (1 fields)" in out
    assert "spec.template.spec.containers[0].image: reg/dags:1 -> reg/dags:3" in out
    stored = api.objects[("default", "avg-worker")]
    assert stored["metadata"]["resourceVersion"] == before
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/dags:1"


def test_failed_revision_is_reported_with_reason_and_message(api: FakeKnativeApi, kubeconfig: Path) -> None:
    api.failures["etl-runtime"] = (
        "RevisionFailed",
        'Revision "etl-runtime-00001" failed with message: Back-off pulling image "reg/dags:1".',
    )
    code, out, err = deploy(kubeconfig)
    assert code == 1
    assert (
        'error: default/etl-runtime: not ready: RevisionFailed: Revision "etl-runtime-00001" failed with '
        'message: Back-off pulling image "reg/dags:1".'
    ) in err
    assert "default/avg-worker: ready" in out  # the others still finish
    assert "Traceback" not in err


def test_timeout_reports_the_last_condition(api: FakeKnativeApi, kubeconfig: Path) -> None:
    api.ready_delay = 60
    code, _, err = deploy(kubeconfig, "--timeout", "0.3")
    assert code == 1
    assert "default/avg-worker: not ready after 0.3 s: Ready=Unknown RevisionMissing" in err


def test_a_service_not_managed_by_us_is_never_replaced(api: FakeKnativeApi, kubeconfig: Path) -> None:
    foreign = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": "avg-worker",
            "namespace": "default",
            "generation": 1,
            "labels": {"team": "other"},
        },
        "spec": {"template": {"spec": {"containers": [{"image": "someone/else:1"}]}}},
    }
    api.objects[("default", "avg-worker")] = foreign
    api.changed_at[("default", "avg-worker")] = 0.0
    code, _, err = deploy(kubeconfig)
    assert code == 1
    assert "default/avg-worker exists but is not managed by airflow-knative" in err
    assert (
        api.objects[("default", "avg-worker")]["spec"]["template"]["spec"]["containers"][0]["image"]
        == "someone/else:1"
    )


def test_status_lists_managed_services(api: FakeKnativeApi, kubeconfig: Path) -> None:
    code, out, _ = run_deploy_cli(["status", "--kubeconfig", str(kubeconfig)])
    assert code == 0 and "no Knative Services managed by airflow-knative in namespace default" in out

    api.failures["etl-runtime"] = ("RevisionFailed", "container exited with code 1")
    deploy(kubeconfig)
    code, out, _ = run_deploy_cli(["status", "--kubeconfig", str(kubeconfig)])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "READY", "LATEST", "READY", "REVISION", "URL", "REASON"]
    assert lines[1].split() == [
        "default",
        "avg-worker",
        "True",
        "avg-worker-00001",
        "http://avg-worker.default.svc.cluster.local",
    ]
    assert lines[2].split()[:5] == ["default", "etl-runtime", "False", "-", "-"]
    assert lines[2].endswith("RevisionFailed: container exited with code 1")
    assert len(lines) == 3  # namespace default only

    code, out, _ = run_deploy_cli(["status", "--kubeconfig", str(kubeconfig), "--all-namespaces"])
    assert f"ml         {LONG}" in out


def test_no_cluster_reachable_is_one_clear_sentence(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    code, _, err = deploy(config)
    assert code == 1
    assert (
        f"error: Cannot reach the Kubernetes API server at http://127.0.0.1:{port} (configured from kubeconfig {config})"
        in err
    )
    assert "Traceback" not in err

    code, _, err = run_deploy_cli(["status", "--kubeconfig", str(tmp_path / "missing")])
    assert code == 1
    assert "error: No Kubernetes cluster to talk to: tried" in err and str(tmp_path / "missing") in err
    assert "Traceback" not in err


def test_unknown_context_and_bad_credentials(api: FakeKnativeApi, kubeconfig: Path) -> None:
    code, _, err = run_deploy_cli(["status", "--kubeconfig", str(kubeconfig), "--context", "nope"])
    assert code == 1 and "context 'nope'" in err

    api.token = "rotated"
    code, _, err = run_deploy_cli(["status", "--kubeconfig", str(kubeconfig)])
    assert code == 1 and "refused (401)" in err and "deploy/rbac.yaml" in err


def test_fake_api_validates_bodies_like_a_structural_schema(api: FakeKnativeApi, kubeconfig: Path) -> None:
    """The fixture would refuse a manifest the real API server refuses (here: a wrong type)."""
    from airflow_provider_knative.knative.api import ClusterError, KnativeServices

    services = KnativeServices(str(kubeconfig))
    bad = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"template": {"spec": {"containerConcurrency": "many", "containers": [{"image": "x"}]}}},
    }
    assert validation_errors(bad)
    with pytest.raises(ClusterError, match=r"answered 422: .*containerConcurrency"):
        services.create(bad)


def test_user_annotations_and_pull_secrets_are_removed_when_dropped_but_others_stay(
    api: FakeKnativeApi, kubeconfig: Path, tmp_path: Path
) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "avg-worker": {
                        "annotations": {"team.example.com/owner": "ml"},
                        "service_annotations": {"example.com/cost-center": "42"},
                        "image_pull_secrets": ["registry-creds"],
                    }
                }
            }
        )
    )
    assert deploy(kubeconfig, "--defaults", str(defaults))[0] == 0
    key = ("default", "avg-worker")
    # another tool annotates the live Service and its template; those are not ours to remove
    api.objects[key]["metadata"]["annotations"]["other-tool.example.com/seen"] = "yes"
    api.objects[key]["spec"]["template"]["metadata"]["annotations"]["other-tool.example.com/x"] = "1"

    code, out, err = deploy(kubeconfig)
    assert code == 0, err
    assert "spec.template.metadata.annotations.team.example.com/owner: ml -> <unset>" in out
    assert "metadata.annotations.example.com/cost-center: 42 -> <unset>" in out
    live = api.objects[key]
    assert "team.example.com/owner" not in live["spec"]["template"]["metadata"]["annotations"]
    assert "example.com/cost-center" not in live["metadata"]["annotations"]
    assert "airflow-provider-knative/template-annotation-keys" not in live["metadata"]["annotations"]
    assert "imagePullSecrets" not in live["spec"]["template"]["spec"]
    assert live["metadata"]["annotations"]["other-tool.example.com/seen"] == "yes"
    assert live["spec"]["template"]["metadata"]["annotations"]["other-tool.example.com/x"] == "1"


def test_no_wait_applies_and_returns_without_waiting(api: FakeKnativeApi, kubeconfig: Path) -> None:
    api.ready_delay = 60
    start = time.monotonic()
    code, out, err = deploy(kubeconfig, "--no-wait")
    assert code == 0, err
    assert time.monotonic() - start < 30
    assert "default/avg-worker: created" in out and "3 service(s) applied; not waiting for Ready" in out
    assert "waiting (Ready" not in out
    assert len(api.objects) == 3


def test_status_json_and_yaml_are_machine_readable(api: FakeKnativeApi, kubeconfig: Path) -> None:
    import json

    api.failures["etl-runtime"] = ("RevisionFailed", "container exited with code 1")
    deploy(kubeconfig)
    code, out, _ = run_deploy_cli(["status", "--kubeconfig", str(kubeconfig), "-o", "json"])
    assert code == 0
    data = json.loads(out)
    assert data["namespace"] == "default"
    by_name = {r["name"]: r for r in data["items"]}
    assert set(by_name) == {"avg-worker", "etl-runtime"}
    avg = by_name["avg-worker"]
    assert avg["ready"] == "True" and avg["state"] == "ready"
    assert avg["url"] == avg["address"] == "http://avg-worker.default.svc.cluster.local"
    assert avg["latestReadyRevision"] == "avg-worker-00001" and avg["generation"] == 1
    assert avg["tasks"] == ["deploy_compute.double", "deploy_compute.extract", "deploy_compute.total"]
    assert avg["dags"] == ["deploy_compute"]
    etl = by_name["etl-runtime"]
    assert (etl["state"], etl["reason"], etl["message"]) == (
        "failed",
        "RevisionFailed",
        "container exited with code 1",
    )

    code, out, _ = run_deploy_cli(["status", "--kubeconfig", str(kubeconfig), "-A", "-o", "yaml"])
    data = yaml.safe_load(out)
    assert data["namespace"] is None and {r["namespace"] for r in data["items"]} == {"default", "ml"}
    assert {r["service"] for r in data["items"] if r["namespace"] == "ml"} == {
        "feature-engineering-for-the-quarterly-revenue-forecast-model-training"
    }
    code, out, _ = run_deploy_cli(["status", "--kubeconfig", str(kubeconfig), "-n", "empty", "-o", "json"])
    assert json.loads(out) == {"namespace": "empty", "items": []}


def _foreign(name: str, namespace: str = "default") -> dict[str, object]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": "u-1", "labels": {}},
        "spec": {"template": {"spec": {"containers": [{"image": "someone/else:1"}]}}},
    }


def test_delete_removes_managed_services_only(api: FakeKnativeApi, kubeconfig: Path) -> None:
    assert deploy(kubeconfig)[0] == 0
    api.objects[("default", "theirs")] = _foreign("theirs")
    api.changed_at[("default", "theirs")] = 0.0
    cluster = ["--kubeconfig", str(kubeconfig)]

    code, out, err = run_deploy_cli(["delete", "avg-worker", "etl-runtime", *cluster, "--dry-run"])
    assert code == 0, err
    assert "default/avg-worker: would be deleted" in out and ("default", "avg-worker") in api.objects
    assert any(m == "DELETE" and "dryRun=All" in p for m, p, _ in api.requests)  # checked server-side

    code, out, err = run_deploy_cli(["delete", "avg-worker", "theirs", "missing", *cluster])
    assert code == 1
    assert "default/avg-worker: deleted" in out and ("default", "avg-worker") not in api.objects
    assert (
        "default/theirs exists but is not managed by airflow-knative" in err and "refusing to delete" in err
    )
    assert ("default", "theirs") in api.objects
    assert "default/missing: not found" in err

    long_name = "feature-engineering-for-the-quarterly-revenue-forecast-model-training"
    code, out, err = run_deploy_cli(["delete", long_name, "-n", "ml", *cluster])  # the name in the DAG
    assert code == 0, err
    assert not [k for k in api.objects if k[0] == "ml"]

    code, _, err = run_deploy_cli(["delete", "Bad_Name", *cluster])
    assert code == 1 and "not a valid Knative Service name" in err


def test_delete_does_not_remove_a_service_replaced_after_the_check(
    api: FakeKnativeApi, kubeconfig: Path
) -> None:
    from airflow_provider_knative.deploy.apply import delete
    from airflow_provider_knative.knative.api import ClusterError, KnativeServices

    assert deploy(kubeconfig)[0] == 0
    services = KnativeServices(str(kubeconfig))
    checked = services.get("default", "avg-worker")
    api.objects[("default", "avg-worker")]["metadata"]["uid"] = "recreated-by-someone-else"
    with pytest.raises(ClusterError, match=r"changed meanwhile.*Precondition failed"):
        delete(services, checked)
    assert ("default", "avg-worker") in api.objects


def test_prune_deletes_managed_services_whose_tasks_are_gone(
    api: FakeKnativeApi, kubeconfig: Path, tmp_path: Path
) -> None:
    assert deploy(kubeconfig)[0] == 0
    api.objects[("default", "theirs")] = _foreign("theirs")
    api.changed_at[("default", "theirs")] = 0.0
    # the DAG folder now only has the etl DAG: avg-worker (default) and the ml service are unused
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "etl.py").write_text((BASIC / "etl.py").read_text())
    cluster = ["--kubeconfig", str(kubeconfig)]

    code, out, err = run_deploy_cli(["prune", "--dags-folder", str(dags), *cluster, "--dry-run"])
    assert code == 0, err
    assert "default/avg-worker: would be deleted (its tasks are gone: deploy_compute.double," in out
    assert "1 service(s) would be pruned; 1 still used by the DAGs" in out
    assert ("default", "avg-worker") in api.objects

    code, out, err = run_deploy_cli(["prune", "--dags-folder", str(dags), *cluster])
    assert code == 0, err
    assert "default/avg-worker: deleted" in out and "1 service(s) pruned" in out
    assert ("ml", LONG) in api.objects  # no task names namespace ml any more: out of scope

    # --namespace is the tasks' default namespace (as for deploy), and the namespace pruned
    code, out, err = run_deploy_cli(["prune", "--dags-folder", str(dags), *cluster, "-n", "ml"])
    assert code == 0, err
    assert f"ml/{LONG}: deleted (its tasks are gone: deploy_compute.features)" in out
    assert sorted(api.objects) == [("default", "etl-runtime"), ("default", "theirs")]  # never theirs


def test_prune_prunes_nothing_when_the_dags_do_not_import(
    api: FakeKnativeApi, kubeconfig: Path, tmp_path: Path
) -> None:
    assert deploy(kubeconfig)[0] == 0
    broken = tmp_path / "dags"
    broken.mkdir()
    (broken / "etl.py").write_text((BASIC / "etl.py").read_text())
    (broken / "compute.py").write_text("import module_that_does_not_exist_anywhere  # dag airflow\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, message in [(broken, "failed to import"), (empty, "no @task.knative or KnativeOperator")]:
        api.requests.clear()
        code, _, err = run_deploy_cli(
            ["prune", "--dags-folder", str(folder), "--kubeconfig", str(kubeconfig)]
        )
        assert code == 1 and message in err and "nothing was pruned" in err
        assert not api.requests  # the cluster was not even asked
    assert len(api.objects) == 3
