"""The line that ends every call's task log: where the time went, adding up to the wall time.

A real runtime behind a relay that answers 503 "no healthy upstream" for its first 3 seconds
(a Knative Service scaling from zero), a ``@task.knative`` function that sleeps 2 seconds,
``dag.test()``: the figures of the timing line add up to its total, the total is the task's
measured wall time within 10%, and the 3 seconds show up as waiting for the Service.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
from conftest import TEST_DAGS
from knative_dagrun import run_dag
from runtime_process import start_runtime
from tcp_proxy import RelayProxy

LINE = re.compile(
    r"Knative call to fx: (?P<total>[\d.]+) s = waiting for the Service (?P<waiting>[\d.]+) s "
    r"\((?P<attempts>\d+) attempts?\) \+ queued in the pod (?P<queued>[\d.]+) s \+ fetching arguments "
    r"(?P<fetch>[\d.]+) s \([^)]*\) \+ the function (?P<call>[\d.]+) s \+ spilling the result "
    r"(?P<spill>[\d.]+) s \([^)]*\) \+ transfer and encoding (?P<other>[\d.]+) s; ran on (?P<replica>\S+)"
)


def _at(out: str, text: str, after: float = 0.0) -> float:
    """The time of the first log line holding ``text`` (after ``after``)."""
    for line in out.splitlines():
        if text in line and line[:4].isdigit():
            at = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            if at >= after:
                return at
    raise AssertionError(f"no log line with {text!r}")


@pytest.mark.parametrize("dag_id", ["knative_side_effect", "knative_side_effect_deferrable"])
def test_the_timing_line_adds_up_to_the_tasks_wall_time(
    dag_id: str,
    airflow_home: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with start_runtime(TEST_DAGS) as rt:
        cold = RelayProxy(rt.port, cold_seconds=3.0)
        monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", cold.url)
        try:
            run = run_dag(
                dag_id, {"path": str(tmp_path / "ran.txt"), "seconds": 2.0}, module="knative_faults"
            )
        finally:
            cold.close()
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-3000:]
    match = LINE.search(out)
    assert match, out[-3000:]
    f = {k: float(v) for k, v in match.groupdict().items() if k != "replica"}
    parts = f["waiting"] + f["queued"] + f["fetch"] + f["call"] + f["spill"] + f["other"]
    assert parts == pytest.approx(f["total"], abs=0.03)  # the figures add up to the total
    if dag_id == "knative_side_effect":  # a deferred task also waits for the triggerer and resumes
        # the task's wall time as Airflow's log shows it: from starting it (ti_run) to its end
        # (dag.test() sets the task instance's start_date when the run is created, not then)
        started = _at(out, "Task started")
        ended = _at(out, "new_state=success", after=started)
        wall = ended - started
        assert abs(f["total"] - wall) <= 0.1 * wall, (f, wall)
    assert f["waiting"] >= 2.5 and f["attempts"] >= 3 and cold.refused >= 2  # the cold start
    assert 2.0 <= f["call"] < 4.0
    assert match["replica"].endswith(f":{rt.proc.pid}")
