"""@task.knative: registration, parse-time checks, the invocation it builds, mapped tasks,
and local mode (the same codec round trip in-process, with references resolved from the store)."""

from __future__ import annotations

import pytest
from airflow.sdk import dag, task
from knative_dagrun import examples, run_dag, stored_xcom, xcom_value

from airflow_provider_knative import codec, protocol
from airflow_provider_knative.decorators import _KnativeDecoratedOperator, _KnativeMappedOperator


def test_task_knative_is_registered_and_builds_the_operator():
    ex = examples()
    t = ex.knative_average.task_dict["compute_avg"]
    assert isinstance(t, _KnativeDecoratedOperator)
    assert t.operator_name == "@task.knative" and t.service == "avg-worker"
    assert set(t.template_fields) >= {"op_args", "op_kwargs", "service", "namespace", "url", "payload"}
    mapped = ex.knative_fanout.task_dict["square"]
    assert type(mapped) is _KnativeMappedOperator
    assert mapped.operator_name == "@task.knative" and mapped.partial_kwargs["service"] == "fan-worker"


def test_override_and_partial_keep_the_knative_operator():
    @dag(dag_id="k_override", schedule=None)
    def d():
        @task.knative(service="a")
        def f(x, y):
            return x + y

        f.override(task_id="g", service="b", invoke_timeout=5)(1, 2)
        f.partial(y=1).expand(x=[1, 2])

    built = d()
    g = built.task_dict["g"]
    assert g.service == "b" and g.invoke_timeout == 5
    assert type(built.task_dict["f"]) is _KnativeMappedOperator


def test_context_parameter_that_cannot_reach_the_pod_is_refused():
    with pytest.raises(ValueError, match=r"'ti'.*can receive only dag_id, task_id"):

        @dag(dag_id="k_bad_ctx", schedule=None)
        def d():
            @task.knative(service="a")
            def f(ti=None):
                return 1

            f()

        d()


def _mapped_dag(name: str, map_it):
    @dag(dag_id=f"k_mapped_ctx_{name}", schedule=None)
    def d():
        @task.knative(service="a")
        def f(x, ti=None, logical_date=None):
            return x

        map_it(f)

    return d


@pytest.mark.parametrize(
    "map_it",
    [
        pytest.param(lambda f: f.expand(x=[1, 2]), id="expand"),
        pytest.param(
            lambda f: f.partial(x=1).expand_kwargs([{"logical_date": 1}]), id="partial-expand_kwargs"
        ),
        pytest.param(lambda f: f.expand_kwargs([{"x": 1, "ti": 1}, {"x": 2}]), id="not-in-every-dict"),
    ],
)
def test_a_mapped_task_with_a_context_parameter_that_cannot_cross_is_refused_at_parse_time(map_it):
    """As for a plain task: the DAG does not parse (before, every mapped task failed at run time)."""
    with pytest.raises(
        ValueError, match=r"takes the Airflow context value '(ti|logical_date)'.*stays in Airflow"
    ):
        _mapped_dag("bad", map_it)()


def test_a_mapped_task_given_the_parameter_by_every_mapped_argument_set_parses():
    d = _mapped_dag("given", lambda f: f.expand_kwargs([{"x": 1, "ti": 1, "logical_date": 2}]))()
    assert type(d.task_dict["f"]) is _KnativeMappedOperator


def test_a_mapped_task_reading_the_context_through_kwargs_parses():
    @dag(dag_id="k_mapped_kwargs", schedule=None)
    def d():
        @task.knative(service="a")
        def f(x, params=None, **kwargs):
            return x

        f.expand(x=[1, 2])

    assert type(d().task_dict["f"]) is _KnativeMappedOperator


def _standalone_task(*args):
    """A fresh @task.knative operator (the example DAGs' tasks must stay untouched)."""

    @dag(dag_id="k_standalone", schedule=None)
    def d():
        @task.knative(service="a")
        def compute_sum(xs):
            return sum(xs)

        compute_sum(*args)

    return d().task_dict["compute_sum"]


def test_invocation_carries_function_id_source_hash_context_and_store(monkeypatch):
    class TI:
        map_index = 3
        try_number = 2
        run_id = "r1"

    t = _standalone_task([1, 2])
    inv = t.invocation({"ti": TI(), "run_id": "r1", "params": {"data": [1]}})
    assert inv.function_id == "k_standalone/compute_sum"
    assert inv.source_hash == protocol.source_hash(t.python_callable)
    assert inv.args == [[1, 2]]
    assert inv.context == {
        "dag_id": "k_standalone",
        "task_id": "compute_sum",
        "run_id": "r1",
        "map_index": 3,
        "try_number": 2,
        "params": {"data": [1]},
    }
    assert (
        inv.store is not None and inv.store.url.startswith("file://") and inv.store.inline_max_bytes == 65536
    )
    assert protocol.Invocation.decode(inv.encode()) == inv


def test_unencodable_argument_is_reported_before_any_call():
    from airflow.sdk.exceptions import AirflowException

    t = _standalone_task([object()])
    with pytest.raises(AirflowException, match=r"invocation\['args'\]\[0\]\[0\].*cannot encode"):
        t._encode(t.invocation({"ti": None, "run_id": "r", "params": {}}))


def test_local_mode_runs_the_dag_in_process(airflow_home, monkeypatch, capfd):
    monkeypatch.setenv("AIRFLOW__KNATIVE__LOCAL_MODE", "true")
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", "http://127.0.0.1:9")  # never called
    run = run_dag("knative_average", conf={"data": [1, 2, 3, 4, 5]})
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-4000:]
    assert xcom_value(run, "compute_avg") == 3.0
    assert "Running knative_average/compute_avg locally" in out


def test_local_mode_passes_spilled_arguments_by_reference(airflow_home, monkeypatch, capfd):
    """1 MiB array: spilled by the XCom backend, handed over as a ref, fetched only to call."""
    monkeypatch.setenv("AIRFLOW__KNATIVE__LOCAL_MODE", "true")
    run = run_dag("knative_big_chain", conf={"mib": 1})
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-4000:]
    n = 1024 * 1024 // 8
    assert xcom_value(run, "consume") == {"n": n, "sum": float(n * (n - 1) // 2), "last": float(n - 1)}
    assert "ref" in stored_xcom(run, "produce")


@pytest.fixture(scope="module")
def context_runtime(airflow_home):
    from conftest import TEST_DAGS
    from runtime_process import serving_tasks

    with serving_tasks(TEST_DAGS, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": ""}) as rt:
        yield rt


@pytest.fixture(params=["local", "runtime"])
def where(request, monkeypatch):
    """``@task.knative`` in local mode, or through a real runtime process."""
    if request.param == "local":
        monkeypatch.setenv("AIRFLOW__KNATIVE__LOCAL_MODE", "true")
    else:
        request.getfixturevalue("context_runtime")
    return request.param


def test_kwargs_receive_the_context_values_that_cross(airflow_home, where, capfd):
    run = run_dag("knative_context_kwargs", conf={"who": "pod"}, module="knative_context")
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-4000:]
    assert xcom_value(run, "greet") == {
        "greeting": "hello pod",
        "keys": ["dag_id", "map_index", "params", "run_id", "task_id", "try_number"],
        "ids": ["knative_context_kwargs", "greet", -1, 1],
        "run_id": run.run_id,
    }
    assert [xcom_value(run, "shout", map_index=i) for i in (0, 1)] == [
        "A from map index 0",
        "B from map index 1",
    ]


def test_a_kwargs_lookup_of_a_value_that_stays_in_airflow_says_so(airflow_home, where, capfd):
    run = run_dag("knative_context_ti", module="knative_context")
    out = capfd.readouterr().out
    assert str(run.state) == "failed"
    assert "ContextValueUnavailable" in out or "AirflowException: wants_ti: kwargs['ti']" in out, out[-4000:]
    assert "kwargs['ti']: wants_ti() looks up the Airflow context value 'ti'" in out, out[-4000:]
    assert "the context object stays in Airflow" in out
    assert "only dag_id, task_id, run_id, map_index, try_number, params cross into it" in out


def test_result_round_trip_keeps_types():
    """What local mode returns is what the codec carries: tuples stay tuples."""
    value = {"t": (1, 2), "s": {1, 2}}
    assert codec.loads(codec.dumps(value)) == value
