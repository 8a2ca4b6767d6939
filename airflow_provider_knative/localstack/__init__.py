"""The embedded local stack: a real Airflow deployment plus a Knative runtime on loopback."""
