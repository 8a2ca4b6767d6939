"""The record of a call (``records.py``) and the store primitive under it.

What is verified where:
- ``file://``: the create-only write is atomic: processes racing for the same keys, released
  together by a barrier, each key is created by exactly one of them (hundreds of rounds).
- ``s3://`` on moto: ``If-None-Match: *`` is honoured (a second create of a key is refused and
  leaves the first object), through the same code the runtime uses. Moto checks the condition
  but not atomically (two PUTs in flight at once can both succeed there), so atomicity under a
  race is S3's promise (and MinIO's), not something moto can show; it is not claimed here.
- The decisions (void, follow a later attempt, abandoned after the lease, first outcome wins,
  a retried claim recognised as one's own) with a controlled clock.
"""

from __future__ import annotations

import json
import multiprocessing
import uuid
from pathlib import Path

import boto3
import pytest

from airflow_provider_knative import protocol, records, store
from airflow_provider_knative.records import Finished, NotStarted, Records, Running

ROUNDS = 200
RACERS = 4


def _race(root: str, barrier: multiprocessing.synchronize.Barrier, wins: multiprocessing.Queue) -> None:
    fs = store.FileStore(root)
    mine = 0
    for n in range(ROUNDS):
        barrier.wait()
        if fs.create(f"race/k{n}.knc", str(n).encode()):
            mine += 1
            wins.put(n)
    wins.put(("done", mine))


def test_racing_processes_create_each_key_exactly_once_on_file_stores(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(RACERS)
    wins: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path.as_uri(), barrier, wins)) for _ in range(RACERS)]
    for p in procs:
        p.start()
    won: list[int] = []
    done = 0
    while done < RACERS:
        item = wins.get(timeout=120)
        if isinstance(item, tuple):
            done += 1
        else:
            won.append(item)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(won) == list(range(ROUNDS))  # every key once: never zero, never two winners
    assert not list((tmp_path / "race").glob(".tmp-*"))  # no staging files left behind


def test_create_refuses_an_existing_key_and_keeps_the_first_object_on_s3(moto_server: str) -> None:
    bucket = f"records-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    s3 = store.S3Store(f"s3://{bucket}/x", endpoint_url=moto_server, aws_conn_id="")
    assert s3.create("a/claim.knc", b"first") is True
    assert s3.create("a/claim.knc", b"second") is False
    assert s3.read("a/claim.knc") == b"first"
    assert s3.read("a/missing.knc") is None
    s3.write("a/lease.knc", b"1")
    s3.write("a/lease.knc", b"2")
    assert s3.read("a/lease.knc") == b"2"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def book(tmp_path: Path) -> tuple[Records, Records, Clock]:
    """Two replicas' views of one file store, on one controllable clock."""
    clock = Clock()
    fs = store.FileStore(tmp_path.as_uri())
    a = Records(fs, records.INVOCATIONS, owner="pod-a:1", lease_seconds=30, clock=clock)
    b = Records(fs, records.INVOCATIONS, owner="pod-b:2", lease_seconds=30, clock=clock)
    return a, b, clock


def test_one_claim_wins_and_the_loser_sees_the_winners_request(book) -> None:
    a, b, _ = book
    won, claim = a.claim("c", 1, digest="d1", signature="s1")
    assert won and claim.owner == "pod-a:1"
    lost, held = b.claim("c", 1, digest="d1", signature="s2")
    assert not lost and held.owner == "pod-a:1" and held.digest == "d1" and held.signature == "s1"


def test_a_retried_claim_write_is_recognised_as_ones_own(book, monkeypatch) -> None:
    """A create that timed out but landed: the retry sees the object exist, with our token."""
    a, _, _ = book
    real_create = a.store.create

    def lands_then_reports_conflict(key: str, data: bytes) -> bool:
        real_create(key, data)
        return False

    monkeypatch.setattr(a.store, "create", lands_then_reports_conflict)
    won, claim = a.claim("c", 1, digest="d", signature="")
    assert won and claim.owner == "pod-a:1"


def test_a_query_voids_an_unclaimed_attempt_and_points_to_the_next(book) -> None:
    a, b, _ = book
    state = b.state("c", 1)
    assert state == NotStarted(next_attempt=2, voided=True)
    won, claim = a.claim("c", 1, digest="d", signature="")
    assert not won and claim.void  # the late copy of attempt 1 can never start
    assert a.claim("c", 2, digest="d", signature="")[0]  # the resend can
    assert isinstance(b.state("c", 1), Running)  # a query about attempt 1 follows to attempt 2


def test_a_probe_writes_nothing(book) -> None:
    a, b, _ = book
    assert b.state("c", 1, void=False) == NotStarted(next_attempt=1, voided=False)
    assert a.claim("c", 1, digest="d", signature="")[0]


def test_running_while_the_lease_is_fresh_then_abandoned_naming_the_pod(book) -> None:
    a, b, clock = book
    a.claim("c", 1, digest="d", signature="")
    clock.now += 25
    assert isinstance(b.state("c", 1), Running)
    a.renew("c", 1)
    clock.now += 25
    assert isinstance(b.state("c", 1), Running)  # renewed 25 s ago: still inside the lease
    clock.now += 10
    state = b.state("c", 1)
    assert isinstance(state, Finished) and state.how == "abandoned" and state.status == 500
    error = protocol.Result.decode(state.body).error
    assert error is not None and error.type == protocol.ABANDONED
    assert "pod-a:1" in error.message and "stopped renewing its lease" in error.message
    # the owner comes back late: its result is discarded, the record's outcome stands
    late = a.finish("c", a.finished("c", 1, 200, protocol.Result(status="ok", value=1).encode()))
    assert late.how == "abandoned"


def test_the_first_outcome_written_is_the_outcome(book) -> None:
    a, b, _ = book
    a.claim("c", 1, digest="d", signature="")
    ok = a.finished("c", 1, 200, protocol.Result(status="ok", value=42).encode())
    assert a.finish("c", ok) == ok
    assert b.state("c", 1) == ok
    cancelled = b.finish("c", b.cancelled("c", 1, "too late"))
    assert cancelled == ok


def test_a_cancel_request_is_seen_by_the_owner(book) -> None:
    a, b, _ = book
    a.claim("c", 1, digest="d", signature="")
    assert not a.cancel_requested("c")
    b.request_cancel("c", "marked failed")
    b.request_cancel("c", "twice is fine")
    assert a.cancel_requested("c")


def test_every_part_of_a_record_lives_in_one_folder_under_records(book, tmp_path: Path) -> None:
    a, b, _ = book
    a.claim("dag/run:1+00/task/-1/1", 1, digest="d", signature="")
    b.request_cancel("dag/run:1+00/task/-1/1", "x")
    a.renew("dag/run:1+00/task/-1/1", 1)
    folder = store.record_folder(records.INVOCATIONS, "dag/run:1+00/task/-1/1")
    files = sorted(p.name for p in (tmp_path / folder).iterdir())
    assert files == ["a1.claim.knc", "a1.lease.knc", "cancel.knc"]
    assert folder.startswith(f"{store.RECORDS_FOLDER}/invocations/")
    claim = json.loads((tmp_path / folder / "a1.claim.knc").read_bytes())
    assert claim["call"] == "dag/run:1+00/task/-1/1" and claim["owner"] == "pod-a:1"
