"""The compatibility suite: what each supported Airflow minor must do, run in CI on each of them.

``scripts/compat.sh`` runs it in one venv per minor (Airflow installed with that minor's
constraints, ``constraints/``); the full suite runs it on 3.3. A test marked
``since_airflow("3.1")`` is about a feature that needs that minor (``airflow_compat.FEATURES``):
on an older one it is *deselected*, not skipped, because the feature is not offered there (its
refusal is tested instead), and the summary says how many were left out and why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_knative.versions import AIRFLOW_MINOR, minor_of


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        since = item.get_closest_marker("since_airflow")
        before = item.get_closest_marker("before_airflow")
        if (since and AIRFLOW_MINOR < minor_of(since.args[0])) or (
            before and AIRFLOW_MINOR >= minor_of(before.args[0])
        ):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


#: modules that are about features of a newer minor as a whole (they import what only it has)
SINCE = {"test_compat_tasks.py": (3, 1), "test_compat_deploy.py": (3, 1)}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    since = SINCE.get(collection_path.name)
    return True if since and AIRFLOW_MINOR < since else None
