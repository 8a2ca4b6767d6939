"""DAGs for the operator tests: run by dag.test() against a real runtime serving this folder.

One file on purpose: every dag.test() parses the whole folder, and the runtime imports it too.
"""

from __future__ import annotations

from airflow.sdk import dag, task

DEFAULT_DATA = [1, 2, 3, 4]


def _average_dag(dag_id: str, **knative_kwargs):
    @dag(dag_id=dag_id, schedule=None, params={"data": DEFAULT_DATA}, tags=["knative-test"])
    def average():
        @task.knative(service="avg-worker", **knative_kwargs)
        def extract(params=None):
            print(f"extracting {len(params['data'])} values")
            return params["data"]

        @task.knative(service="avg-worker", **knative_kwargs)
        def compute_sum(xs):
            return sum(map(float, xs))

        @task.knative(service="avg-worker", **knative_kwargs)
        def compute_count(xs):
            return len(xs)

        @task.knative(service="avg-worker", **knative_kwargs)
        def compute_avg(total, count):
            print(f"avg of {count} values")
            return total / count

        xs = extract()
        compute_avg(compute_sum(xs), compute_count(xs))

    return average()


knative_average = _average_dag("knative_average")
knative_average_deferrable = _average_dag("knative_average_deferrable", deferrable=True)


@dag(dag_id="knative_fanout", schedule=None, params={"n": 100}, tags=["knative-test"])
def fanout():
    @task.knative(service="fan-worker")
    def numbers(params=None):
        return list(range(params["n"]))

    @task.knative(service="fan-worker")
    def square(x, map_index=None):
        return {"x": x, "square": x * x, "map_index": map_index}

    @task.knative(service="fan-worker")
    def reduce(items):
        assert [item["map_index"] for item in items] == list(range(len(items))), items
        return sum(item["square"] for item in items)

    reduce(square.expand(x=numbers()))


knative_fanout = fanout()


@dag(dag_id="knative_outputs", schedule=None, params={"data": [2, 4, 9]}, tags=["knative-test"])
def outputs():
    @task.knative(service="avg-worker", multiple_outputs=True)
    def stats(params=None):
        data = params["data"]
        return {"low": min(data), "high": max(data), "span": (min(data), max(data))}

    @task.knative(service="avg-worker")
    def spread(low, high, span):
        assert isinstance(span, tuple), type(span)
        return high - low

    s = stats()
    spread(s["low"], s["high"], s["span"])


knative_outputs = outputs()


@dag(dag_id="knative_failing", schedule=None, tags=["knative-test"])
def failing():
    @task.knative(service="avg-worker")
    def explode():
        print("about to divide by zero")
        return _helper_that_fails(0)

    explode()


def _helper_that_fails(d):
    return 1 / d


knative_failing = failing()


@dag(dag_id="knative_big_chain", schedule=None, params={"mib": 300}, tags=["knative-test"])
def big_chain():
    @task.knative(service="big-worker")
    def produce(params=None):
        import numpy as np

        n = params["mib"] * 1024 * 1024 // 8
        arr = np.arange(n, dtype=np.float64)
        return arr

    @task.knative(service="big-worker")
    def consume(arr):
        return {"n": int(arr.shape[0]), "sum": float(arr.sum()), "last": float(arr[-1])}

    consume(produce())


knative_big_chain = big_chain()


def _traced_dag(dag_id: str, **knative_kwargs):
    """One task, for the tracing test (tests/test_tracing.py): its spans and the runtime's."""

    @dag(dag_id=dag_id, schedule=None, tags=["knative-test"])
    def traced():
        @task.knative(service="traced", **knative_kwargs)
        def double(x=21):
            return x * 2

        double()

    return traced()


knative_traced = _traced_dag("knative_traced")
knative_traced_deferrable = _traced_dag("knative_traced_deferrable", deferrable=True)
