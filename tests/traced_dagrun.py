"""``python traced_dagrun.py DAG_ID``: ``dag.test()`` of one DAG of ``tests/dags/knative_examples.py``
in a process of its own, so that Airflow's traces (``AIRFLOW__TRACES__OTEL_ON`` and the ``OTEL_*``
variables, set by the caller) are configured when Airflow is imported, as in a worker.

``dag.test()`` runs a task without the task runner's ``worker.<task_id>`` span, so the run is
wrapped in a span made the same way (current while ``execute`` runs). Prints one JSON line: the
run's state and that span's trace and span ids. Spans are flushed when the process exits.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from opentelemetry import trace

DAGS = Path(__file__).resolve().parent / "dags"


def main(dag_id: str) -> None:
    spec = importlib.util.spec_from_file_location("knative_examples", DAGS / "knative_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["knative_examples"] = module
    spec.loader.exec_module(module)
    with trace.get_tracer("tests").start_as_current_span(f"test.worker.{dag_id}") as span:
        run = getattr(module, dag_id).test()
    context = span.get_span_context()
    print(
        json.dumps(
            {
                "state": str(run.state),
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "provider": type(trace.get_tracer_provider()).__name__,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1])
