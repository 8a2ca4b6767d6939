"""The runtime finds DAG files exactly as Airflow's dag-processor does (``.airflowignore`` included).

Each case builds a DAG folder, then compares the runtime's listing (``loader.dag_files``) with
what Airflow's own ``DagFileProcessorManager`` lists for a local bundle of that folder, and
checks the case's expected files, so a disagreement in either direction fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_knative.runtime import loader

DAG_SOURCE = """
from airflow.sdk import dag, task


@dag(dag_id={dag_id!r}, schedule=None)
def the_dag():
    @task.knative(service="svc", local=True)
    def work():
        return 1

    work()


the_dag()
"""


def _write_dags(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DAG_SOURCE.format(dag_id=path.stem))


def _processor_listing(folder: Path) -> set[str]:
    """What Airflow's dag-processor lists for a local bundle of ``folder`` (relative paths)."""
    from airflow.dag_processing.bundles.local import LocalDagBundle
    from airflow.dag_processing.manager import DagFileProcessorManager

    bundle = LocalDagBundle(name="test", path=str(folder))
    manager = DagFileProcessorManager(max_runs=1)
    return {str(p) for p in manager._find_files_in_bundle(bundle)}


def _runtime_listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in loader.dag_files(folder)}


CASES = {
    # a negation after a wildcard keeps the file (gitignore semantics): the old reading dropped it
    "glob-negation": (
        "glob",
        "*.py\n!keep_dag.py\n",
        ["keep_dag.py", "drop_dag.py", "sub/other_dag.py"],
        {"keep_dag.py"},
    ),
    "glob-directories": (
        "glob",
        "# comment\nlegacy/\n/top_only_dag.py\n",
        ["a_dag.py", "top_only_dag.py", "legacy/old_dag.py", "sub/top_only_dag.py"],
        {"a_dag.py", "sub/top_only_dag.py"},
    ),
    "regexp": (
        "regexp",
        "^skip_.*\nnested/deep\n",
        ["skip_me_dag.py", "kept_dag.py", "nested/deep/x_dag.py", "nested/y_dag.py"],
        {"kept_dag.py", "nested/y_dag.py"},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_runtime_lists_what_the_dag_processor_lists(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syntax, ignore, files, expected = CASES[case]
    monkeypatch.setenv("AIRFLOW__CORE__DAG_IGNORE_FILE_SYNTAX", syntax)
    _write_dags(tmp_path, files)
    (tmp_path / ".airflowignore").write_text(ignore)
    (tmp_path / "helper.py").write_text("VALUE = 1\n")  # no DAG in it: safe mode skips it

    runtime = _runtime_listing(tmp_path)
    assert runtime == _processor_listing(tmp_path)
    assert runtime == expected


def test_negated_file_is_imported_and_its_functions_are_served(tmp_path: Path) -> None:
    """The issue's case end to end in the loader: `!keep_dag.py` after `*.py` is served, not a 404."""
    _write_dags(tmp_path, ["keep_dag.py", "drop_dag.py"])
    (tmp_path / ".airflowignore").write_text("*.py\n!keep_dag.py\n")
    registry = loader.load(tmp_path)
    assert not registry.failures, registry.failures
    assert sorted(registry.functions) == ["keep_dag/work"]


def test_safe_mode_off_lists_every_python_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__DAG_DISCOVERY_SAFE_MODE", "False")
    _write_dags(tmp_path, ["a_dag.py"])
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    assert _runtime_listing(tmp_path) == {"a_dag.py", "helper.py"} == _processor_listing(tmp_path)
