"""The ``knative`` connection type: its UI form and how it merges over ``[knative]`` config.

Kept free of Airflow imports: provider info (read by Airflow's providers manager while
Airflow itself is importing) and the triggerer both use it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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

#: the environment variables that name a CA bundle, in the order they are honoured (requests reads
#: the first, OpenSSL and httpx the second); proxies from the environment stay off
CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")

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
    text = {"type": ["string", "null"]}
    fields = [
        (
            "namespace",
            "Namespace",
            "Kubernetes namespace of the Knative Services ([knative] namespace when empty).",
            text,
        ),
        (
            "connect_timeout_seconds",
            "Connect timeout (s)",
            "TCP connect timeout of one HTTP attempt.",
            number,
        ),
        (
            "invoke_timeout_seconds",
            "Invoke timeout (s)",
            "Longest a function may run before the call is abandoned.",
            number,
        ),
        (
            "startup_deadline_seconds",
            "Startup deadline (s)",
            "How long connection errors and 502/503/504 (cold start) are retried.",
            number,
        ),
        (
            "headers",
            "Extra headers (JSON)",
            'Sent on every call, e.g. {"Host": "svc.ns.example.com"} for a Knative ingress.',
            text,
        ),
        (
            "verify",
            "Verify TLS certificates",
            "Off only for testing: the server's certificate is then not checked.",
            {"type": ["boolean", "null"]},
        ),
        (
            "ca_bundle",
            "CA bundle path",
            "PEM file of the CAs that sign the service's certificate "
            "(default: $REQUESTS_CA_BUNDLE, $SSL_CERT_FILE, else the system's).",
            text,
        ),
        (
            "client_cert",
            "Client certificate path",
            "PEM certificate (optionally with its key) for mutual TLS.",
            text,
        ),
        (
            "client_key",
            "Client key path",
            "PEM private key of the client certificate, if a separate file.",
            text,
        ),
        (
            "test_service",
            "Service for the Test button",
            "Service name put into a URL template with {service} when the connection is tested.",
            text,
        ),
    ]
    return {
        "connection-type": CONN_TYPE,
        "hook-class-name": "airflow_provider_knative.hooks.KnativeHook",
        "hook-name": HOOK_NAME,
        "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
        "conn-fields": {
            name: {"label": label, "description": description, "schema": schema}
            for name, label, description, schema in fields
        },
    }


@dataclass(frozen=True)
class TLSSettings:
    """How HTTPS calls check the server and present a client certificate.

    ``verify`` is True (the system's CAs), False (no check: testing only) or the path of a CA
    bundle; ``cert`` is None, a PEM file holding certificate and key, or (certificate, key).
    Where they come from, first match wins: the connection's ``verify``/``ca_bundle`` extras,
    then ``$REQUESTS_CA_BUNDLE`` and ``$SSL_CERT_FILE``, then the system's default.
    """

    verify: bool | str = True
    cert: str | tuple[str, str] | None = None

    def requests_kwargs(self) -> dict[str, Any]:
        """``verify=``/``cert=`` for one ``requests`` call."""
        return {"verify": self.verify, "cert": self.cert}

    def ssl_context(self) -> Any:
        """An ``ssl.SSLContext`` with the same rules, for httpx (which takes nothing else).

        Built once per settings and process: loading a CA bundle costs milliseconds of CPU, which
        the executor would otherwise pay for every task it sends. A bundle changed on disk is
        read again after a restart.
        """
        return _ssl_context(self)


@functools.lru_cache(maxsize=32)
def _ssl_context(tls: TLSSettings) -> Any:
    import ssl

    if tls.verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif isinstance(tls.verify, str):
        context = ssl.create_default_context(cafile=tls.verify)
    else:
        import certifi  # what requests and httpx trust by default

        context = ssl.create_default_context(cafile=certifi.where())
    if tls.cert is not None:
        certfile, keyfile = tls.cert if isinstance(tls.cert, tuple) else (tls.cert, None)
        context.load_cert_chain(certfile, keyfile)
    return context


@dataclass(frozen=True)
class ServiceSettings:
    """Everything needed to call a service, resolved once from connection and config."""

    url_template: str
    namespace: str
    secret: bytes | None
    timeouts: Timeouts
    headers: Mapping[str, str] = field(default_factory=dict)
    tls: TLSSettings = field(default_factory=TLSSettings)
    test_service: str = ""


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

    def text(name: str) -> str:
        value = extra.get(name)
        if value in (None, ""):
            value = extra.get(f"extra__{CONN_TYPE}__{name}")
        return "" if value is None else str(value).strip()

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
        headers=_headers(extra.get("headers")),
        tls=_tls(extra, text),
        test_service=text("test_service"),
    )


def _headers(value: Any) -> dict[str, str]:
    """The ``headers`` extra: a JSON object (or its text, as the form stores it) of str values."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise config.ConfigError(
                f'connection extra "headers" must be a JSON object such as {{"Host": "svc.example.com"}}: {exc}'
            ) from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise config.ConfigError(
            f'connection extra "headers" must be a JSON object of header names to values, got {value!r}'
        )
    return {k: str(v) for k, v in value.items()}


def _flag(value: Any) -> bool | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    return None  # not a flag: a path (the requests convention verify="/path/ca.pem")


def _existing_file(what: str, path: str) -> str:
    if not os.path.isfile(path):
        raise config.ConfigError(f"{what} {path!r} is not a readable file; fix the path or unset it")
    return path


def _tls(extra: Mapping[str, Any], text: Callable[[str], str]) -> TLSSettings:
    """TLS settings from the connection's extras, then the CA bundle environment variables."""
    verify: bool | str = True
    raw_verify = extra.get("verify", extra.get(f"extra__{CONN_TYPE}__verify"))
    flag = _flag(raw_verify)
    ca_bundle = text("ca_bundle")
    if flag is None and raw_verify not in (None, ""):
        ca_bundle = ca_bundle or str(raw_verify).strip()  # verify="/path/ca.pem", as in requests
    if flag is False:
        verify = False
    elif ca_bundle:
        verify = _existing_file('connection extra "ca_bundle"', ca_bundle)
    else:
        for name in CA_BUNDLE_ENV:
            path = os.environ.get(name, "").strip()
            if path:
                verify = _existing_file(f"${name}", path)
                break
    cert_path, key_path = text("client_cert"), text("client_key")
    cert: str | tuple[str, str] | None = None
    if cert_path:
        cert_path = _existing_file('connection extra "client_cert"', cert_path)
        cert = (
            (cert_path, _existing_file('connection extra "client_key"', key_path)) if key_path else cert_path
        )
    elif key_path:
        raise config.ConfigError('connection extra "client_key" is set without "client_cert"; set both')
    return TLSSettings(verify=verify, cert=cert)
