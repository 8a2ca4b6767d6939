"""Create or patch Knative Services, wait until they are Ready, and report status.

A patch is a JSON merge patch built from the manifest plus ``null`` for every label,
annotation or field we manage that the manifest no longer has, so removing ``min_scale``
from a DAG really removes the annotation. Services that exist but are not labelled as ours
are never touched: a name clash must not replace somebody else's workload.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from airflow_provider_knative.deploy.manifests import (
    ANNOTATION_PREFIX,
    AUTOSCALING_PREFIX,
    DAGS_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_ANNOTATION,
    SERVICE_ANNOTATION_KEYS,
    TASKS_ANNOTATION,
    TEMPLATE_ANNOTATION_KEYS,
    VISIBILITY_LABEL,
)
from airflow_provider_knative.errors import NotManaged, ServiceNotFound
from airflow_provider_knative.knative.api import KnativeServices

#: maps we write into, each with the annotation (if any) recording which user keys we put there
_MANAGED_MAPS: list[tuple[tuple[str, ...], str | None]] = [
    (("metadata", "labels"), None),
    (("metadata", "annotations"), SERVICE_ANNOTATION_KEYS),
    (("spec", "template", "metadata", "labels"), None),
    (("spec", "template", "metadata", "annotations"), TEMPLATE_ANNOTATION_KEYS),
]
_MANAGED_POD_FIELDS = ("serviceAccountName", "imagePullSecrets", "volumes")
_UNSET = "<unset>"


def _managed_key(key: str) -> bool:
    return key.startswith((ANNOTATION_PREFIX, AUTOSCALING_PREFIX)) or key in (
        VISIBILITY_LABEL,
        MANAGED_BY_LABEL,
    )


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        obj = obj.setdefault(part, {})
    obj[path[-1]] = value


def merge_patch(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch turning ``live`` into ``desired`` for every field we manage."""
    patch = {"metadata": copy.deepcopy(desired["metadata"]), "spec": copy.deepcopy(desired["spec"])}
    live_annotations = _get(live, ("metadata", "annotations")) or {}
    for path, record in _MANAGED_MAPS:
        wanted = _get(desired, path) or {}
        ours_before = set(filter(None, (live_annotations.get(record) or "").split(","))) if record else set()
        for key in _get(live, path) or {}:
            if (_managed_key(key) or key in ours_before) and key not in wanted:
                _set(patch, (*path, key), None)
    pod_path = ("spec", "template", "spec")
    for key in _MANAGED_POD_FIELDS:
        if key in (_get(live, pod_path) or {}) and key not in (_get(desired, pod_path) or {}):
            _set(patch, (*pod_path, key), None)
    return patch


def changes(live: Any, patch: Any, path: str = "") -> list[str]:
    """Human-readable ``path: old -> new`` for every field the patch would change.

    Only what the patch names is compared: fields Knative defaulted on the live object
    (container name, probe thresholds, traffic) are not changes.
    """
    if isinstance(patch, dict):
        live_map = live if isinstance(live, dict) else {}
        found = []
        for key, value in patch.items():
            found += changes(live_map.get(key, _UNSET), value, f"{path}.{key}" if path else key)
        return found
    if patch is None:
        return [] if live == _UNSET else [f"{path}: {_short(live)} -> {_UNSET}"]
    if isinstance(patch, list) and isinstance(live, list) and len(live) == len(patch):
        return [
            c
            for i, (old, new) in enumerate(zip(live, patch, strict=True))
            for c in changes(old, new, f"{path}[{i}]")
        ]
    if live != patch:
        return [f"{path}: {_short(live)} -> {_short(patch)}"]
    return []


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass
class Outcome:
    namespace: str
    name: str
    action: str  # "create", "patch" or "unchanged"
    changes: list[str] = field(default_factory=list)
    generation: int | None = None


def is_ours(obj: dict[str, Any]) -> bool:
    return (_get(obj, ("metadata", "labels")) or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def not_ours(namespace: str, name: str, verb: str) -> str:
    return (
        f"{namespace}/{name} exists but is not managed by airflow-knative (no label "
        f"{MANAGED_BY_LABEL}={MANAGED_BY}); refusing to {verb} it."
    )


def apply(services: KnativeServices, manifest: dict[str, Any], dry_run: bool = False) -> Outcome:
    """Create ``manifest`` or patch the live Service to match it (server-side dry run if asked)."""
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        live = services.get(ns, name)
    except ServiceNotFound:
        created = services.create(manifest, dry_run=dry_run)
        return Outcome(ns, name, "create", generation=_get(created, ("metadata", "generation")))
    if not is_ours(live):
        raise NotManaged(not_ours(ns, name, "replace") + " Rename the service in the DAG, or add the label.")
    patch = merge_patch(live, manifest)
    found = changes(live, patch)
    if not found:
        return Outcome(ns, name, "unchanged", generation=_get(live, ("metadata", "generation")))
    patched = services.patch(ns, name, patch, dry_run=dry_run)
    return Outcome(ns, name, "patch", found, generation=_get(patched, ("metadata", "generation")))


@dataclass(frozen=True)
class Readiness:
    state: str  # "ready", "failed" or "pending"
    status: str  # the Ready condition's status: True, False, Unknown
    reason: str
    message: str


def readiness(obj: dict[str, Any]) -> Readiness:
    """Knative's verdict on the *current* generation; an older generation's Ready does not count."""
    status = obj.get("status") or {}
    generation = _get(obj, ("metadata", "generation"))
    observed = status.get("observedGeneration")
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if observed != generation or ready is None:
        return Readiness("pending", "Unknown", "Reconciling", f"generation {generation} not yet observed")
    value, reason, message = ready.get("status", "Unknown"), ready.get("reason", ""), ready.get("message", "")
    if value == "True":
        return Readiness("ready", value, reason, message)
    if value == "False":
        return Readiness("failed", value, reason, message)
    return Readiness("pending", value, reason, message)


def wait_ready(
    services: KnativeServices,
    outcomes: list[Outcome],
    timeout: float,
    poll_interval: float,
    out: TextIO,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Poll until every service is Ready at its current generation; returns the failures."""
    start = clock()
    pending = {(o.namespace, o.name) for o in outcomes}
    last: dict[tuple[str, str], Readiness] = {}
    failures: list[str] = []
    while pending:
        for key in sorted(pending):
            ns, name = key
            obj = services.get(ns, name)
            verdict = readiness(obj)
            status = obj.get("status") or {}
            if verdict.state == "ready":
                pending.discard(key)
                print(
                    f"{ns}/{name}: ready, revision {status.get('latestReadyRevisionName', '?')}, "
                    f"{status.get('url', '(no url)')} ({clock() - start:.1f} s)",
                    file=out,
                    flush=True,
                )
            elif verdict.state == "failed":
                pending.discard(key)
                failures.append(f"{ns}/{name}: not ready: {verdict.reason}: {verdict.message}")
            elif last.get(key) != verdict:
                detail = f"{verdict.reason}: {verdict.message}" if verdict.message else verdict.reason
                print(f"{ns}/{name}: waiting (Ready={verdict.status}, {detail})", file=out, flush=True)
            last[key] = verdict
        if pending and clock() - start >= timeout:
            for ns, name in sorted(pending):
                verdict = last[(ns, name)]
                failures.append(
                    f"{ns}/{name}: not ready after {timeout:g} s: Ready={verdict.status} "
                    f"{verdict.reason}: {verdict.message}"
                )
            break
        if pending:
            time.sleep(poll_interval)
    return failures


def status_records(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One machine-readable record per Service (``status -o json|yaml``), sorted by namespace, name."""
    records = []
    for obj in sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        meta, status = obj["metadata"], obj.get("status") or {}
        annotations = meta.get("annotations") or {}
        verdict = readiness(obj)
        records.append(
            {
                "namespace": meta.get("namespace", ""),
                "name": meta["name"],
                "service": annotations.get(SERVICE_ANNOTATION, meta["name"]),
                "ready": verdict.status,
                "state": verdict.state,
                "reason": verdict.reason,
                "message": verdict.message,
                "generation": meta.get("generation"),
                "observedGeneration": status.get("observedGeneration"),
                "latestReadyRevision": status.get("latestReadyRevisionName"),
                "url": status.get("url"),
                "address": (status.get("address") or {}).get("url"),
                "dags": _split(annotations.get(DAGS_ANNOTATION)),
                "tasks": _split(annotations.get(TASKS_ANNOTATION)),
            }
        )
    return records


def _split(text: str | None) -> list[str]:
    return [part for part in (text or "").split(",") if part]


def status_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """The table form of :func:`status_records`: namespace, name, ready, revision, URL, reason."""
    return [
        [
            r["namespace"],
            r["name"],
            r["ready"],
            r["latestReadyRevision"] or "-",
            r["url"] or "-",
            "" if r["state"] == "ready" else f"{r['reason']}: {r['message']}".strip(": "),
        ]
        for r in records
    ]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def delete(services: KnativeServices, live: dict[str, Any], dry_run: bool = False) -> None:
    """Delete the managed Service ``live`` (as read just before), refusing any other.

    The delete carries ``live``'s uid as a precondition: if the Service was replaced in
    between, the API server refuses and nothing of somebody else's is removed.
    """
    meta = live["metadata"]
    if not is_ours(live):
        raise NotManaged(not_ours(meta["namespace"], meta["name"], "delete"))
    services.delete(meta["namespace"], meta["name"], uid=meta.get("uid"), dry_run=dry_run)


def stale(
    services: KnativeServices, namespaces: list[str], wanted: set[tuple[str, str]], selector: str
) -> list[dict[str, Any]]:
    """Managed Services in ``namespaces`` that no task of the DAG folder needs any more."""
    found = []
    for namespace in sorted(set(namespaces)):
        for obj in services.list(namespace, selector):
            meta = obj["metadata"]
            if is_ours(obj) and (meta.get("namespace", namespace), meta["name"]) not in wanted:
                found.append(obj)
    return sorted(found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
