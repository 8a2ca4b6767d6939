from airflow.sdk import dag, task


@dag(schedule=None)
def deploy_unknown_setting():
    @task.knative(service="typo", service_settings={"min_scael": 1})
    def typo():
        return 1

    typo()


deploy_unknown_setting()
