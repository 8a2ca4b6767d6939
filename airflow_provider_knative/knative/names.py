"""Knative Service names: DNS-1035 labels, shortened deterministically when too long.

A Knative Service name becomes a Kubernetes Service name and the first label of its URL
(``http://{name}.{namespace}.svc.cluster.local``), so it must be a DNS-1035 label: lowercase
letters, digits and ``-``, starting with a letter, ending with a letter or digit, at most 63
characters. A name that is only too long is shortened to a stable prefix plus a hash of the
whole name, so the same DAG always deploys to the same Service. Anything else is an error:
silently rewriting ``Avg_Worker`` would make the name in the DAG and the name in the
cluster disagree without anyone noticing.

Whoever builds a URL from a service name must pass it through :func:`service_name` first.
"""

from __future__ import annotations

import hashlib
import re

from airflow_provider_knative.errors import InvalidServiceName

__all__ = ["MAX_LENGTH", "InvalidServiceName", "is_valid_namespace", "service_name"]

MAX_LENGTH = 63
_HASH_LENGTH = 8
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _suggestion(name: str) -> str:
    fixed = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    fixed = re.sub(r"^[0-9-]+", "", fixed)
    return fixed or "my-service"


def service_name(requested: str) -> str:
    """The Kubernetes name for ``requested``: itself when valid, shortened with a hash when too long.

    Raises InvalidServiceName, with a valid suggestion, for names no shortening can fix.
    """
    if not isinstance(requested, str) or not requested:
        raise InvalidServiceName(f"service name must be a non-empty string, got {requested!r}")
    if not _DNS1035.match(requested):
        raise InvalidServiceName(
            f"service name {requested!r} is not a valid Knative Service name: use lowercase letters, "
            f"digits and '-', start with a letter and end with a letter or digit "
            f"(for example {_suggestion(requested)!r})"
        )
    if len(requested) <= MAX_LENGTH:
        return requested
    digest = hashlib.sha256(requested.encode()).hexdigest()[:_HASH_LENGTH]
    prefix = requested[: MAX_LENGTH - _HASH_LENGTH - 1].rstrip("-")
    return f"{prefix}-{digest}"


def is_valid_namespace(namespace: str) -> bool:
    """Namespaces are DNS-1123 labels (may start with a digit), at most 63 characters."""
    return bool(re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", namespace or "")) and len(namespace) <= 63
