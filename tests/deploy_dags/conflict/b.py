from airflow.sdk import dag, task


@dag(schedule=None)
def deploy_conflict_b():
    @task.knative(service="shared", service_settings={"min_scale": 3, "cpu": "500m"})
    def second():
        return 2

    second()


deploy_conflict_b()
