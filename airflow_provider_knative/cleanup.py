"""``airflow-knative xcom-cleanup``: delete spilled objects whose XCom rows are gone.

Airflow calls the backend's ``purge`` only when a task is cleared and runs again; deleting
XComs through the REST API, deleting a DAG run and ``airflow db clean`` remove the rows and
leave the objects. This command lists every object the provider wrote (``*.knc``, one key
layout for XCom values, results spilled by the runtime and the bodies of deferred calls) in
the configured store, collects every reference still held by a row of the ``xcom`` table
(read through Airflow's ORM, so it works on any metadata database), and deletes the objects
nobody references that are older than ``--min-age-seconds``, so an object that was just
uploaded and whose row is not written yet is left alone (a deferred call's bodies live no
longer than the call).

The record of every call (``_records/``: claims, leases, outcomes) is not an XCom: it is
removed whole, one call at a time, once nothing in it has changed for ``[knative]
record_retention_seconds`` (a running call renews its lease, so its record is never old).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator
from typing import Any

from airflow_provider_knative import config
from airflow_provider_knative.store import (
    SUFFIX,
    ListedObject,
    ObjectStore,
    StoreError,
    open_store,
    record_of,
)

#: objects younger than this are never deleted (an upload whose row is not written yet, a
#: result on its way back from a Knative function)
DEFAULT_MIN_AGE_SECONDS = 24 * 3600


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "xcom-cleanup",
        help="delete spilled XCom objects that no XCom row references any more",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    parser.add_argument(
        "--min-age-seconds",
        type=_non_negative,
        default=DEFAULT_MIN_AGE_SECONDS,
        metavar="N",
        help=f"keep objects younger than N seconds (default {DEFAULT_MIN_AGE_SECONDS}: one day)",
    )
    parser.add_argument(
        "--store-url",
        default=None,
        help="the store to clean (default: [knative] xcom_store_url)",
    )
    parser.set_defaults(handler=run)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def referenced_urls(values: Iterable[Any]) -> set[str]:
    """Every object URL the stored XCom values point to.

    Reference markers name one directly. Packed inline values are decoded and searched
    too, in case one holds an ``ObjectRef`` (a function's result forwarded inside a tuple,
    say): a row whose value cannot be decoded is reported and keeps nothing alive.
    """
    from airflow_provider_knative.xcom import SpilledValueError, is_marker, load, pass_references, ref_of

    urls: set[str] = set()
    for value in values:
        if not is_marker(value):
            continue
        try:
            ref = ref_of(value)
        except SpilledValueError:
            continue
        if ref is not None:
            urls.add(ref.url)
        elif "packed" in value:
            try:
                with pass_references():  # read the references, never what they point to
                    _collect_refs(load(value), urls)
            except SpilledValueError:
                continue
    return urls


def _collect_refs(value: Any, urls: set[str]) -> None:
    from airflow_provider_knative.codec import ObjectRef
    from airflow_provider_knative.walk import leaves

    urls.update(item.url for item in leaves(value) if isinstance(item, ObjectRef))


def xcom_values() -> Iterator[Any]:
    """The value of every XCom row that may hold one of our markers, via Airflow's ORM."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import String, cast, select

    from airflow_provider_knative.xcom import MARKER

    # Filtering on the JSON text keeps plain-JSON rows out of Python; LIKE treats '_' as
    # a wildcard, which can only let more rows through, never fewer.
    query = select(XComModel.value).where(cast(XComModel.value, String).like(f"%{MARKER}%"))
    with create_session() as session:
        yield from session.scalars(query.execution_options(yield_per=1000))


def run(args: argparse.Namespace) -> int:

    target = open_store(args.store_url)
    now = time.time()
    # list the store first: an object written after this point cannot be deleted by this
    # run, and its row, written before or after, is not needed to keep it
    listed = [o for o in target.list() if o.url.endswith(SUFFIX)]
    calls: dict[str, list[ListedObject]] = {}
    candidates = []
    for obj in listed:
        folder = record_of(target.key_of(obj.url))
        if folder is None:
            candidates.append(obj)
        else:
            calls.setdefault(folder, []).append(obj)
    expired = _expired_records(calls, now, float(config.get("record_retention_seconds")))
    records_failed = _delete(target, expired, args.dry_run)
    live = referenced_urls(xcom_values())
    deleted = kept_young = failed = 0
    freed = 0
    for obj in sorted(candidates, key=lambda o: o.url):
        if obj.url in live:
            continue
        age = now - obj.modified
        if age < args.min_age_seconds:
            kept_young += 1
            continue
        verb = "would delete" if args.dry_run else "deleted"
        if not args.dry_run:
            try:
                target.delete(obj.url)
            except StoreError as exc:
                print(f"failed to delete {obj.url}: {exc}")
                failed += 1
                continue
        deleted += 1
        freed += obj.size
        print(f"{verb} {obj.url} ({obj.size} bytes, {age:.0f} s old)")
    referenced = sum(1 for o in candidates if o.url in live)
    print(
        f"{target.root_url}: {len(candidates)} spilled objects, {referenced} referenced by XCom rows, "
        f"{deleted} orphans {'to delete' if args.dry_run else 'deleted'} ({freed} bytes), "
        f"{kept_young} unreferenced but younger than {args.min_age_seconds:g} s kept"
        + (f", {failed} could not be deleted" if failed else "")
    )
    print(
        f"records of calls: {len(calls)}, {len({record_of(target.key_of(o.url)) for o in expired})} "
        f"unchanged for [knative] record_retention_seconds {'to delete' if args.dry_run else 'deleted'}"
        + (f", {records_failed} objects could not be deleted" if records_failed else "")
    )
    return 1 if failed or records_failed else 0


def _expired_records(
    calls: dict[str, list[ListedObject]], now: float, retention: float
) -> list[ListedObject]:
    """The objects of every call record in which nothing changed for ``retention`` seconds."""
    return [
        obj for parts in calls.values() if now - max(o.modified for o in parts) >= retention for obj in parts
    ]


def _delete(target: ObjectStore, objects: list[ListedObject], dry_run: bool) -> int:
    """Delete ``objects`` (or say what would go); the number that could not be deleted."""
    failed = 0
    for obj in objects:
        if dry_run:
            print(f"would delete {obj.url} (record of a call)")
            continue
        try:
            target.delete(obj.url)
        except StoreError as exc:
            print(f"failed to delete {obj.url}: {exc}")
            failed += 1
    return failed
