"""functions.py: how a @task.knative function is called with what crossed (context included)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_knative import functions, protocol
from airflow_provider_knative.errors import ContextValueUnavailable

CONTEXT = {"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": 2, "try_number": 1, "params": {"p": 1}}


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    f = functions.Function.of(fn, "d", "t", fileloc="")
    inv = protocol.Invocation(
        function_id=f.function_id, source_hash=f.source_hash, args=list(args), kwargs=kwargs, context=CONTEXT
    )
    bound_args, bound_kwargs = functions.bind(f, inv)
    return functions.call(f, bound_args, bound_kwargs)


def test_the_context_keys_written_out_cover_airflows() -> None:
    from airflow.sdk.definitions.context import KNOWN_CONTEXT_KEYS

    assert set(KNOWN_CONTEXT_KEYS) <= functions.AIRFLOW_CONTEXT_KEYS
    assert (
        set(functions.CONTEXT_PARAMETERS) - {"dag_id", "task_id", "map_index"}
        <= functions.AIRFLOW_CONTEXT_KEYS
    )


def test_kwargs_get_what_crosses_and_the_callers_own_arguments_win() -> None:
    assert _call(lambda **kw: kw) == CONTEXT
    assert _call(lambda **kw: kw, params={"mine": 1})["params"] == {"mine": 1}

    def named_and_rest(run_id, params=None, **rest):
        return run_id, params, rest

    run_id, params, rest = _call(named_and_rest, "given")  # a parameter of its own takes its value
    assert (run_id, params) == ("given", {"p": 1})
    assert rest == {k: v for k, v in CONTEXT.items() if k not in ("run_id", "params")}


def test_a_kwargs_lookup_of_a_value_that_stays_in_airflow_says_which_cross() -> None:
    def reads(**kwargs):
        return kwargs["logical_date"]

    with pytest.raises(ContextValueUnavailable) as caught:
        _call(reads)
    assert str(caught.value) == (
        "kwargs['logical_date']: reads() looks up the Airflow context value 'logical_date', but the context "
        "object stays in Airflow: a @task.knative function runs inside a Knative Service, and only dag_id, "
        "task_id, run_id, map_index, try_number, params cross into it (those are in **kwargs). Compute what "
        "you need from 'logical_date' in an upstream task and pass it as an argument"
    )
    assert isinstance(caught.value, KeyError) and isinstance(caught.value.__cause__, KeyError)


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda **kw: {}["ti"], id="another-dict"),
        pytest.param(lambda **kw: kw["no_such_key"], id="not-a-context-key"),
        pytest.param(lambda **kw: kw["params"]["ti"], id="a-key-of-params"),
        pytest.param(lambda ti_table: ti_table["ti"], id="no-kwargs"),
    ],
)
def test_a_users_own_key_error_is_left_alone(fn: Any) -> None:
    args = ({},) if fn.__code__.co_argcount else ()
    with pytest.raises(KeyError) as caught:
        _call(fn, *args)
    assert type(caught.value) is KeyError
