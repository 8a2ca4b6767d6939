from airflow.sdk import dag, task


@dag(schedule=None)
def deploy_good():
    @task.knative(service="fine")
    def ok():
        return 1

    ok()


deploy_good()
