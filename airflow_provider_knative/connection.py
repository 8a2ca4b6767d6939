"""The ``knative`` connection type: its UI form and how it merges over ``[knative]`` config.

Kept free of Airflow imports: provider info (read by Airflow's providers manager while
Airflow itself is importing) and the triggerer both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_knative import config
from airflow_provider_knative.invoker import Timeouts

CONN_TYPE = "knative"
HOOK_NAME = "Knative"

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["port", "login", "schema"],
    "relabeling": {"host": "URL template", "password": "Signing secret"},
    "placeholders": {
        "host": "http://{service}.{namespace}.svc.cluster.local  (or 'discover', or http://127.0.0.1:8080)",
        "password": "shared HMAC secret, same as the runtime's [knative] signing_secret",
    },
}

#: connection extra field -> [knative] option it overrides
_EXTRA_OPTIONS = {
    "namespace": "namespace",
    "connect_timeout_seconds": "connect_timeout_seconds",
    "invoke_timeout_seconds": "invoke_timeout_seconds",
    "startup_deadline_seconds": "startup_deadline_seconds",
}


def connection_type_info() -> dict[str, Any]:
    """The ``connection-types`` entry of provider info: the form the Airflow UI shows.

    Airflow 3.2+ reads the form declaratively from provider info (no wtforms import); the hook
    also exposes ``get_ui_field_behaviour`` for older 3.x.
    """
    number = {"type": ["number", "null"], "minimum": 0}
    return {
        "connection-type": CONN_TYPE,
        "hook-class-name": "airflow_provider_knative.hooks.KnativeHook",
        "hook-name": HOOK_NAME,
        "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
        "conn-fields": {
            "namespace": {
                "label": "Namespace",
                "description": "Kubernetes namespace of the Knative Services ([knative] namespace when empty).",
                "schema": {"type": ["string", "null"]},
            },
            "connect_timeout_seconds": {
                "label": "Connect timeout (s)",
                "description": "TCP connect timeout of one HTTP attempt.",
                "schema": number,
            },
            "invoke_timeout_seconds": {
                "label": "Invoke timeout (s)",
                "description": "Longest a function may run before the call is abandoned.",
                "schema": number,
            },
            "startup_deadline_seconds": {
                "label": "Startup deadline (s)",
                "description": "How long connection errors and 502/503/504 (cold start) are retried.",
                "schema": number,
            },
        },
    }


@dataclass(frozen=True)
class ServiceSettings:
    """Everything needed to call a service, resolved once from connection and config."""

    url_template: str
    namespace: str
    secret: bytes | None
    timeouts: Timeouts


def settings_from(connection: Any | None) -> ServiceSettings:
    """Merge a ``knative`` connection (may be None) over the ``[knative]`` config section."""
    extra: Mapping[str, Any] = {}
    host = ""
    password = ""
    if connection is not None:
        extra = connection.extra_dejson or {}
        host = (connection.host or "").strip()
        password = connection.password or ""

    def pick(field: str) -> Any:
        value = extra.get(field)
        if value in (None, ""):
            value = extra.get(f"extra__{CONN_TYPE}__{field}")  # the form's prefixed spelling
        option = config.OPTIONS[_EXTRA_OPTIONS[field]]
        if value in (None, ""):
            return config.get(option.key)
        try:
            return option.type(value)
        except (TypeError, ValueError):
            raise config.ConfigError(
                f"connection extra {field!r} must be {option.type.__name__}, got {value!r}"
            ) from None

    secret = password.encode() if password else config.signing_secret()
    return ServiceSettings(
        url_template=host or config.get("url_template"),
        namespace=pick("namespace"),
        secret=secret,
        timeouts=Timeouts(
            connect=pick("connect_timeout_seconds"),
            read=pick("invoke_timeout_seconds"),
            startup_deadline=pick("startup_deadline_seconds"),
        ),
    )
