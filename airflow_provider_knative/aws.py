"""S3 credentials from an Airflow connection: ``[knative] aws_conn_id``.

The object store (``store.py``) knows nothing of Airflow; this module installs the provider it
asks for a boto3 Session when ``aws_conn_id`` is set. With the amazon provider installed, the
connection goes through its ``AwsBaseHook`` (so everything that provider supports works: role
assumption, web identity, profiles, session tokens). Without it, the connection's own fields
are read the way the amazon provider reads them:

* ``login`` / ``password``: access key id / secret access key (or the extras
  ``aws_access_key_id`` / ``aws_secret_access_key``), extra ``aws_session_token``;
* extras ``region_name``, ``endpoint_url`` (or ``service_config.s3.endpoint_url``),
  ``profile_name``.

Anything that needs the amazon provider (``role_arn``, ...) is refused with that advice.
Imported by the modules that open stores in Airflow processes (the XCom backend, the operator,
the trigger) and by the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_knative import store
from airflow_provider_knative.errors import ConfigError

#: extras that only the amazon provider's AwsBaseHook can honour
_NEEDS_PROVIDER = ("role_arn", "assume_role_method", "assume_role_kwargs", "federation")


def s3_session(aws_conn_id: str) -> tuple[Any, str | None, str | None]:
    """The boto3 Session of Airflow connection ``aws_conn_id``, and its S3 endpoint and region."""
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    except ImportError:
        return _from_connection(aws_conn_id)
    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="s3")
    conn_config = hook.conn_config
    endpoint = None
    if hasattr(conn_config, "get_service_endpoint_url"):
        endpoint = conn_config.get_service_endpoint_url("s3")
    endpoint = endpoint or getattr(conn_config, "endpoint_url", None)
    return hook.get_session(region_name=hook.conn_region_name), endpoint, hook.conn_region_name


def _from_connection(aws_conn_id: str) -> tuple[Any, str | None, str | None]:
    import boto3

    from airflow_provider_knative.airflow_compat import AirflowNotFoundException, BaseHook

    try:
        conn = BaseHook.get_connection(aws_conn_id)
    except AirflowNotFoundException:
        raise ConfigError(
            f"[knative] aws_conn_id names the connection {aws_conn_id!r}, which does not exist; create it "
            "(type aws: access key as login, secret as password, endpoint_url/region_name in extra) or "
            "unset aws_conn_id to use boto3's default chain"
        ) from None
    extra: Mapping[str, Any] = conn.extra_dejson or {}
    needs = [key for key in _NEEDS_PROVIDER if extra.get(key)]
    if needs:
        raise ConfigError(
            f"connection {aws_conn_id!r} sets {', '.join(needs)}, which needs the amazon provider: "
            "pip install apache-airflow-providers-amazon"
        )
    service = extra.get("service_config") or {}
    s3_config = service.get("s3") if isinstance(service, Mapping) else None
    endpoint = extra.get("endpoint_url") or (s3_config or {}).get("endpoint_url") or None
    region = extra.get("region_name") or None
    session = boto3.session.Session(
        aws_access_key_id=conn.login or extra.get("aws_access_key_id") or None,
        aws_secret_access_key=conn.password or extra.get("aws_secret_access_key") or None,
        aws_session_token=extra.get("aws_session_token") or None,
        region_name=region,
        profile_name=extra.get("profile_name") or None,
    )
    return session, endpoint, region


def install() -> None:
    """Make ``[knative] aws_conn_id`` work in this process (idempotent)."""
    store.use_credentials_provider(s3_session)
