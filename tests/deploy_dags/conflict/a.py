from airflow.sdk import dag, task


@dag(schedule=None)
def deploy_conflict_a():
    @task.knative(service="shared", service_settings={"min_scale": 1, "cpu": "500m"})
    def first():
        return 1

    first()


deploy_conflict_a()
