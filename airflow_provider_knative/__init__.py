"""Run Airflow 3 task functions inside pre-deployed Knative Services.

The package root imports nothing heavy: the runtime image and the CLI load only the
modules they use.
"""

__version__ = "0.1.0"
