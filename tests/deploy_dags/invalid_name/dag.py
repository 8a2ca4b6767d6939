from airflow.sdk import dag, task


@dag(schedule=None)
def deploy_invalid_name():
    @task.knative(service="Avg_Worker")
    def bad():
        return 1

    bad()


deploy_invalid_name()
