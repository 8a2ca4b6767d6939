"""Deploy-test DAG: two tasks share a service and disagree on the newer settings."""

from airflow.sdk import dag, task


@dag(schedule=None)
def deploy_conflict_more():
    @task.knative(
        service="gpu-worker",
        service_settings={
            "gpu": 1,
            "annotations": {"autoscaling.knative.dev/metric": "concurrency", "team.example.com/owner": "ml"},
            "env": {"DB_PASSWORD": {"secret": "db", "key": "password"}},
            "image_pull_secrets": ["registry-a"],
        },
    )
    def train():
        return 1

    @task.knative(
        service="gpu-worker",
        service_settings={
            "gpu": 2,
            "annotations": {
                "autoscaling.knative.dev/metric": "concurrency",
                "team.example.com/owner": "data",
            },
            "env": {"DB_PASSWORD": {"secret": "db", "key": "password"}, "EXTRA": "1"},
            "image_pull_secrets": ["registry-b"],
        },
    )
    def score():
        return 2

    train()
    score()


deploy_conflict_more()
