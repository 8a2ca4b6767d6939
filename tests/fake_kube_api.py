"""A fake Kubernetes API server for ``services.serving.knative.dev/v1``, for the deploy tests.

No Kubernetes runs on these machines, so ``airflow-knative deploy/status`` are tested
against this: a real HTTP server on 127.0.0.1 (http.server in a thread) that the real
``kubernetes`` client reaches through a generated kubeconfig. It speaks the real REST paths
and answers like the API server and Knative's controller would:

- ``GET /apis/serving.knative.dev/v1/services`` and ``.../namespaces/{ns}/services`` (list,
  with ``labelSelector`` equality terms), ``GET .../services/{name}``, ``POST`` create,
  ``PATCH`` with ``application/merge-patch+json`` (RFC 7386), ``DELETE`` (with a
  ``preconditions.uid`` in the DeleteOptions body honoured); ``dryRun=All`` persists nothing;
- errors as ``Status`` objects: 404 NotFound, 409 AlreadyExists or Conflict (a failed
  precondition), 422 Invalid (the body is
  validated against the Knative CRD's openAPIV3Schema, unknown fields rejected), 415 for
  other patch types, 401 without the bearer token; unknown API paths get a plain 404;
- ``metadata.generation`` bumps only when ``spec`` changes; ``status`` is what Knative would
  report: Ready=Unknown until ``ready_delay`` seconds after the last spec change, then
  Ready=True with a revision name and URL, or Ready=False with the configured reason and
  message for services listed in ``failures``.

What this does not reproduce: admission webhooks beyond the schema, defaulting, RBAC,
watches, real revisions and pods.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

CRD_PATH = Path(__file__).resolve().parent / "data" / "knative-serving-service-crd.yaml"
_PATH = re.compile(
    r"^/apis/serving\.knative\.dev/v1(?:/namespaces/(?P<ns>[^/]+))?/services(?:/(?P<name>[^/]+))?$"
)


def _strict(schema: Any) -> Any:
    """The CRD schema for jsonschema: objects with declared properties admit no others.

    Kubernetes prunes unknown fields of structural schemas (they silently vanish), which
    for a generated manifest is a bug; rejecting them makes such a bug visible.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def service_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


@functools.cache
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(service_schema())


def validation_errors(manifest: dict[str, Any]) -> list[str]:
    """Every place ``manifest`` breaks the Knative Service CRD schema, as 'path: message'."""
    validator = _validator()
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    ]


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class FakeKnativeApi:
    """The server. ``start()``/``stop()`` or ``with``; ``write_kubeconfig(path)`` points a client at it."""

    def __init__(self, ready_delay: float = 0.3) -> None:
        self.ready_delay = ready_delay
        self.failures: dict[str, tuple[str, str]] = {}  # service name -> (reason, message)
        self.token = secrets.token_hex(16)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.changed_at: dict[tuple[str, str], float] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path with query, content type
        self._lock = threading.Lock()
        self._resource_version = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeKnativeApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                api._handle(self, "GET")

            def do_POST(self) -> None:
                api._handle(self, "POST")

            def do_PATCH(self) -> None:
                api._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                api._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKnativeApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def write_kubeconfig(self, path: Path, context: str = "fake") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": self.token}}],
                    "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": context,
                }
            )
        )
        return path

    # --- Knative's controller, simulated -----------------------------------------------------
    def _with_status(self, key: tuple[str, str]) -> dict[str, Any]:
        obj = copy.deepcopy(self.objects[key])
        ns, name = key
        generation = obj["metadata"]["generation"]
        revision = f"{name}-{generation:05d}"
        previous = obj.get("status", {}).get("latestReadyRevisionName")
        done = time.monotonic() - self.changed_at[key] >= self.ready_delay
        status: dict[str, Any] = {"observedGeneration": generation, "latestCreatedRevisionName": revision}
        if previous:
            status["latestReadyRevisionName"] = previous
        if not done:
            ready = {
                "type": "Ready",
                "status": "Unknown",
                "reason": "RevisionMissing",
                "message": f'Configuration "{name}" is waiting for a Revision to become ready.',
            }
        elif name in self.failures:
            reason, message = self.failures[name]
            ready = {"type": "Ready", "status": "False", "reason": reason, "message": message}
        else:
            ready = {"type": "Ready", "status": "True"}
            labels = obj["metadata"].get("labels", {})
            local = labels.get("networking.knative.dev/visibility") == "cluster-local"
            url = f"http://{name}.{ns}.svc.cluster.local" if local else f"http://{name}.{ns}.example.com"
            status.update(
                latestReadyRevisionName=revision,
                url=url,
                address={"url": f"http://{name}.{ns}.svc.cluster.local"},
                traffic=[{"latestRevision": True, "percent": 100, "revisionName": revision}],
            )
            with self._lock:  # remembered, as Knative keeps the last ready revision
                self.objects[key].setdefault("status", {})["latestReadyRevisionName"] = revision
        status["conditions"] = [{**ready, "type": t} for t in ("ConfigurationsReady", "Ready", "RoutesReady")]
        obj["status"] = status
        return obj

    # --- HTTP ------------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parsed = urlparse(request.path)
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        content_type = request.headers.get("Content-Type", "")
        self.requests.append((method, request.path, content_type))
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(request, 401, _status(401, "Unauthorized", "Unauthorized"))
        match = _PATH.match(parsed.path)
        if match is None:
            return self._send(request, 404, b"404 page not found\n", "text/plain")
        ns, name = match.group("ns"), match.group("name")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._send(request, 400, _status(400, "BadRequest", "body is not JSON"))
        code, answer = self._route(method, ns, name, query, content_type, body)
        self._send(request, code, answer)

    def _route(
        self,
        method: str,
        ns: str | None,
        name: str | None,
        query: dict[str, str],
        content_type: str,
        body: Any,
    ) -> tuple[int, dict[str, Any]]:
        dry_run = query.get("dryRun") == "All"
        if method == "GET" and name is None:
            return 200, self._list(ns, query.get("labelSelector", ""))
        if ns is None:
            return 405, _status(405, "MethodNotAllowed", "the server does not allow this method")
        key = (ns, name or "")
        if method == "GET":
            if key not in self.objects:
                return 404, self._not_found(name or "")
            return 200, self._with_status(key)
        if method == "POST" and name is None:
            return self._create(ns, body, dry_run)
        if method == "PATCH" and name is not None:
            if content_type.split(";")[0].strip() != "application/merge-patch+json":
                return 415, _status(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {content_type}",
                )
            return self._patch(key, body, dry_run)
        if method == "DELETE" and name is not None:
            return self._delete(key, body, dry_run)
        return 405, _status(405, "MethodNotAllowed", "the server does not allow this method")

    def _not_found(self, name: str) -> dict[str, Any]:
        details = {"name": name, "group": "serving.knative.dev", "kind": "services"}
        return _status(404, "NotFound", f'services.serving.knative.dev "{name}" not found', details)

    def _invalid(self, name: str, errors: list[str]) -> tuple[int, dict[str, Any]]:
        message = f'Service.serving.knative.dev "{name}" is invalid: ' + "; ".join(errors)
        return 422, _status(422, "Invalid", message, {"name": name, "kind": "Service"})

    def _list(self, ns: str | None, selector: str) -> dict[str, Any]:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
        items = []
        for key in sorted(self.objects):
            labels = self.objects[key]["metadata"].get("labels", {})
            if (ns is None or key[0] == ns) and all(labels.get(k) == v for k, v in wanted.items()):
                items.append(self._with_status(key))
        return {"apiVersion": "serving.knative.dev/v1", "kind": "ServiceList", "metadata": {}, "items": items}

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _create(self, ns: str, body: Any, dry_run: bool) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return 400, _status(400, "BadRequest", "body must be an object")
        body = {k: v for k, v in body.items() if k != "status"}
        name = body.get("metadata", {}).get("name", "")
        errors = validation_errors(body)
        if body.get("metadata", {}).get("namespace", ns) != ns:
            errors.append("metadata.namespace: does not match the namespace of the request")
        if errors:
            return self._invalid(name, errors)
        with self._lock:
            if (ns, name) in self.objects:
                details = {"name": name, "group": "serving.knative.dev", "kind": "services"}
                return 409, _status(
                    409, "AlreadyExists", f'services.serving.knative.dev "{name}" already exists', details
                )
            obj = copy.deepcopy(body)
            obj["metadata"].update(
                namespace=ns,
                uid=str(uuid.uuid4()),
                generation=1,
                resourceVersion=self._next_version(),
                creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            if dry_run:
                return 201, obj
            self.objects[(ns, name)] = obj
            self.changed_at[(ns, name)] = time.monotonic()
        return 201, self._with_status((ns, name))

    def _patch(self, key: tuple[str, str], patch: Any, dry_run: bool) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if key not in self.objects:
                return 404, self._not_found(key[1])
            current = self.objects[key]
            updated = merge(current, {k: v for k, v in (patch or {}).items() if k != "status"})
            candidate = {k: v for k, v in updated.items() if k != "status"}
            candidate["metadata"] = {
                k: v
                for k, v in candidate["metadata"].items()
                if k not in ("uid", "generation", "resourceVersion", "creationTimestamp")
            }
            errors = validation_errors(candidate)
            if errors:
                return self._invalid(key[1], errors)
            if updated.get("spec") != current.get("spec"):
                updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
            updated["metadata"]["resourceVersion"] = self._next_version()
            if dry_run:
                return 200, updated
            self.objects[key] = updated
            if updated["metadata"]["generation"] != current["metadata"]["generation"]:
                self.changed_at[key] = time.monotonic()
        return 200, self._with_status(key)

    def _delete(self, key: tuple[str, str], options: Any, dry_run: bool) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if key not in self.objects:
                return 404, self._not_found(key[1])
            obj = self.objects[key]
            wanted_uid = ((options or {}).get("preconditions") or {}).get("uid")
            if wanted_uid and wanted_uid != obj["metadata"].get("uid"):
                return 409, _status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on services.serving.knative.dev "{key[1]}": Precondition '
                    f"failed: UID in precondition: {wanted_uid}, UID in object meta: {obj['metadata'].get('uid')}",
                )
            if not dry_run:
                del self.objects[key]
                self.changed_at.pop(key, None)
        return 200, obj

    def _send(
        self, request: BaseHTTPRequestHandler, code: int, body: Any, content_type: str = "application/json"
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request.send_response(code)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def run_deploy_cli(argv: list[str]) -> tuple[int, str, str]:
    """``airflow-knative <argv>`` for the deploy subcommands, in-process: (exit code, stdout, stderr).

    In-process because parsing the DAGs then costs no second Airflow import; the console
    script itself is exercised once, as a subprocess, in test_deploy.py.
    """
    import argparse
    import contextlib
    import io

    from airflow_provider_knative.deploy import cli as deploy_cli

    parser = argparse.ArgumentParser(prog="airflow-knative")
    deploy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.handler(args)
    return code, out.getvalue(), err.getvalue()
