"""Workflow gateway: a FastAPI app mounted in the Airflow api-server by an Airflow plugin."""
