"""The plain-JSON rule, checked on the databases themselves: SQLite and PostgreSQL.

Every value the backend stores as plain JSON must read back from Airflow's ``xcom.value``
column (``JSON``, ``JSONB`` on PostgreSQL) as the very same value and type; what a database
would change is stored packed. Each value is written and read through SQLAlchemy with the
column type of Airflow's own ``XComModel``, on a real database.

MySQL is not checked here: Debian ships no MySQL server (only MariaDB, whose JSON type is
LONGTEXT and keeps the text as it is, and which Airflow does not support).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from exact_values import assert_same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_knative.xcom import MARKER, KnativeXComBackend

pytest_plugins = ["e2e_stack"]

CTX = {"key": "return_value", "dag_id": "d", "run_id": "r", "task_id": "t"}

#: at the edges of what a database keeps: bare numbers, the same numbers inside containers
EDGES: list[Any] = [
    500.0,
    0.0,
    -3.0,
    1.5,
    0.1,
    5e-324,
    9999999999999998.0,
    1e15,
    2**53 + 0.0,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    "500",
    "",
    True,
    None,
    [500.0, 0.0, 2**64 - 1, 1e15],
    {"a": 500.0, "b": -(2**63), "c": 2**63},
    [[{"x": [1.0]}]],
]


class Database:
    def __init__(self, engine: sa.engine.Engine) -> None:
        from airflow.models.xcom import XComModel

        self.engine = engine
        self.name = engine.dialect.name
        meta = sa.MetaData()
        column_type = XComModel.__table__.c.value.type  # JSON, with JSONB on PostgreSQL
        self.table = sa.Table(
            "xcom_values",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("value", column_type),
        )
        meta.drop_all(engine)
        meta.create_all(engine)
        self.next_id = 0

    def round_trip(self, stored: Any) -> Any:
        """What Airflow reads back from its ``xcom.value`` column after writing ``stored``."""
        self.next_id += 1
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(id=self.next_id, value=stored))
            return conn.execute(
                sa.select(self.table.c.value).where(self.table.c.id == self.next_id)
            ).scalar_one()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('xcom-db')) / 'xcom.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    try:
        yield Database(engine)
    finally:
        engine.dispose()


def _stored(value: Any) -> Any:
    return KnativeXComBackend.serialize_value(value, **CTX)


def _read(stored: Any) -> Any:
    class Row:
        pass

    row = Row()
    row.value = stored  # type: ignore[attr-defined]
    return KnativeXComBackend.deserialize_value(row)


def test_sqlite_changes_a_bare_integral_float_which_is_why_it_is_packed(db: Database) -> None:
    back = db.round_trip(500.0)
    if db.name == "sqlite":
        assert back == 500 and type(back) is int  # NUMERIC affinity: Airflow's own backend hands out 500
    else:
        assert type(back) is float
    stored = _stored(500.0)
    assert type(stored) is dict and MARKER in stored
    assert_same(500.0, _read(db.round_trip(stored)))


@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_every_value_comes_back_the_same_through_the_database(db: Database, value: Any) -> None:
    assert_same(value, _read(db.round_trip(_stored(value))))


def test_what_every_database_keeps_stays_plain_json(db: Database) -> None:
    for value in (1.5, 0.1, 2**63 - 1, "500", [500.0, 2**64 - 1], {"a": 500.0}, None, True):
        stored = _stored(value)
        assert stored is value, value  # readable in the UI, and (the test above) unchanged
        assert_same(value, db.round_trip(stored))


_scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([500.0, 0.0, -0.0, 1e16, 2**63, 2**64 - 1, 2**64]),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12,
)


def _sorted_keys(value: Any) -> Any:
    """``value`` with every dict's keys in one order: PostgreSQL's JSONB reorders the keys of a
    plain-JSON dict (as for Airflow's own backend; the README says so), and nothing else."""
    if type(value) is dict:
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if type(value) is list:
        return [_sorted_keys(item) for item in value]
    return value


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_json)
def test_plain_json_reads_back_the_same_and_the_rest_is_packed(db: Database, value: Any) -> None:
    stored = _stored(value)
    back = db.round_trip(stored)
    if stored is value:  # stored as itself: the database alone must give it back unchanged
        if db.name == "postgresql":
            value, back = _sorted_keys(value), _sorted_keys(back)
        assert_same(value, back)
    assert_same(value, _read(back))
