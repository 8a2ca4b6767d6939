"""The Kubernetes API for Knative Services, with every failure turned into one clear sentence.

Only this module imports the ``kubernetes`` client: ``deploy``/``status`` use
:class:`KnativeServices` for CRUD and the hook uses :func:`discover_url` to find a Service's
address. Errors people hit in practice (no kubeconfig, an unreachable API server, no
permission, Knative not installed) become a ``ClusterError`` saying what was tried and what
to do, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from airflow_provider_knative.errors import ClusterError, ServiceNotFound

__all__ = ["GROUP", "PLURAL", "VERSION", "ClusterError", "KnativeServices", "ServiceNotFound", "discover_url"]

GROUP = "serving.knative.dev"
VERSION = "v1"
PLURAL = "services"
_TIMEOUT = (5, 30)  # connect, read (seconds): a dead API server must not hang the CLI


class KnativeServices:
    """CRUD of ``services.serving.knative.dev`` on one cluster.

    Every Kubernetes API call of this package is one ``self._api.<method>`` call in this
    class; the RBAC test reads them from here to check deploy/rbac.yaml grants each verb.
    """

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        from kubernetes import client

        # urllib3 logs each retry as a warning; the one error that matters is reported by _call
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        configuration, self.source = _load_configuration(kubeconfig, context)
        self.host = configuration.host
        self._api = client.CustomObjectsApi(client.ApiClient(configuration))

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=_TIMEOUT, **kwargs)
        except ApiException as exc:
            raise self._api_error(what, exc) from None
        except HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ClusterError(
                f"Cannot reach the Kubernetes API server at {self.host} (configured from {self.source}): "
                f"{reason}. Check that the cluster is running and --kubeconfig/--context point at it."
            ) from None

    def _api_error(self, what: str, exc: Any) -> Exception:
        status = getattr(exc, "status", None)
        message = exc.reason or ""
        body = getattr(exc, "body", None)
        details: dict[str, Any] = {}
        try:
            parsed = json.loads(body) if body else {}
            if isinstance(parsed, dict) and parsed.get("kind") == "Status":
                message = parsed.get("message") or message
                details = parsed.get("details") or {}
        except (TypeError, ValueError):
            parsed = None
        if status == 404 and details.get("kind") == PLURAL:
            return ServiceNotFound(message)
        if status == 404:
            return ClusterError(
                f"{what}: the API server at {self.host} has no {PLURAL}.{GROUP}/{VERSION}; "
                "is Knative Serving installed on this cluster?"
            )
        if status in (401, 403):
            return ClusterError(
                f"{what}: the API server refused ({status}): {message}. The account from {self.source} needs "
                f"the verbs of deploy/rbac.yaml on {PLURAL}.{GROUP} (`airflow-knative rbac` prints them "
                "for your namespaces and service accounts)."
            )
        if status == 409:
            return ClusterError(f"{what}: the Service changed meanwhile ({message}); run the command again")
        return ClusterError(f"{what}: the API server answered {status}: {message}")

    def list(self, namespace: str | None, label_selector: str) -> list[dict[str, Any]]:
        if namespace is None:
            result = self._call(
                "listing Knative Services",
                self._api.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                label_selector=label_selector,
            )
        else:
            result = self._call(
                f"listing Knative Services in {namespace}",
                self._api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                label_selector=label_selector,
            )
        return list(result.get("items", []))

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"reading {namespace}/{name}",
            self._api.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
        )

    def create(self, manifest: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self._call(
            f"creating {meta['namespace']}/{meta['name']}",
            self._api.create_namespaced_custom_object,
            GROUP,
            VERSION,
            meta["namespace"],
            PLURAL,
            manifest,
            dry_run="All" if dry_run else None,
            field_manager="airflow-knative",
        )

    def patch(
        self, namespace: str, name: str, patch: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): maps merge, lists and scalars are replaced."""
        return self._call(
            f"patching {namespace}/{name}",
            self._api.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            patch,
            dry_run="All" if dry_run else None,
            field_manager="airflow-knative",
            _content_type="application/merge-patch+json",
        )

    def delete(self, namespace: str, name: str, uid: str | None = None, dry_run: bool = False) -> Any:
        """Delete one Service; with ``uid``, only if it is still the object that was checked.

        The precondition closes the gap between "this Service is ours" (read first) and the
        delete: a Service deleted and recreated by someone else meanwhile is left alone.
        """
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        return self._call(
            f"deleting {namespace}/{name}",
            self._api.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body=body,
            dry_run="All" if dry_run else None,
        )


def _load_configuration(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """In-cluster service account when inside a pod (and nothing else was asked), else kubeconfig."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    tried = []
    if kubeconfig is None and context is None:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
                return configuration, "the in-cluster service account"
            except ConfigException as exc:
                tried.append(f"in-cluster config ({exc})")
        else:
            tried.append("in-cluster config (KUBERNETES_SERVICE_HOST is not set)")
    # $KUBECONFIG read now, not when the kubernetes package was imported (its default), so the
    # file named in messages is the one used; a ':'-separated list is merged as kubectl does
    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = f"kubeconfig {path}" + (f" context {context!r}" if context else "")
        tried.append(f"{where} ({str(exc).strip() or type(exc).__name__})")
        raise ClusterError(
            "No Kubernetes cluster to talk to: tried " + "; ".join(tried) + ". Pass --kubeconfig FILE "
            "(and --context NAME), set KUBECONFIG, or run inside the cluster."
        ) from None
    configuration.retries = 1
    return configuration, f"kubeconfig {path}" + (f" (context {context})" if context else "")


@functools.lru_cache(maxsize=256)
def discover_url(service: str, namespace: str) -> str:
    """The Knative Service's cluster address (``status.address.url``, else ``status.url``).

    Cached for the life of the process (``discover_url.cache_clear()`` forgets), because a
    Service's address does not change while it exists; failures are not cached. Raises
    ClusterError (no cluster, no permission, no such Service, not Ready yet).
    """
    try:
        obj = KnativeServices().get(namespace, service)
    except ServiceNotFound:
        raise ClusterError(f"the Knative Service {namespace}/{service} does not exist") from None
    status = (obj or {}).get("status") or {}
    url = ((status.get("address") or {}).get("url")) or status.get("url")
    if not url:
        raise ClusterError(
            f"the Knative Service {namespace}/{service} has no status.address.url yet (is it Ready?)"
        )
    return str(url).rstrip("/")
