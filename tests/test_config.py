"""The [knative] section: env first, then airflow.cfg, defaults, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_knative import config


def test_environment_wins_and_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_INLINE_MAX_BYTES", " 1234 ")
    monkeypatch.setenv("AIRFLOW__KNATIVE__LOCAL_MODE", "yes")
    monkeypatch.setenv("AIRFLOW__KNATIVE__CONNECT_TIMEOUT_SECONDS", "2.5")
    assert config.get("xcom_inline_max_bytes") == 1234
    assert config.get("local_mode") is True
    assert config.get("connect_timeout_seconds") == 2.5


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIRFLOW__KNATIVE__XCOM_INLINE_MAX_BYTES", raising=False)
    monkeypatch.delenv("AIRFLOW__KNATIVE__S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert config.get("xcom_inline_max_bytes") == 64 * 1024
    assert config.get("s3_endpoint_url") == ""
    assert config.get("xcom_store_url") == (tmp_path / "knative_xcom").as_uri()


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("xcom_inline_max_bytes", "64k", "must be a whole number, got '64k'"),
        ("xcom_inline_max_bytes", "-1", "must not be negative"),
        ("local_mode", "maybe", "must be true or false"),
        ("transfer_concurrency", "2.5", "must be a whole number"),
    ],
)
def test_bad_values_name_the_key_and_env_var(
    monkeypatch: pytest.MonkeyPatch, key: str, text: str, message: str
) -> None:
    env = config.OPTIONS[key].env_var
    monkeypatch.setenv(env, text)
    with pytest.raises(config.ConfigError) as err:
        config.get(key)
    assert f"[knative] {key} (env {env})" in str(err.value) and message in str(err.value)


def test_airflow_cfg_is_read_inside_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.configuration import conf

    monkeypatch.delenv("AIRFLOW__KNATIVE__TRANSFER_CONCURRENCY", raising=False)
    if not conf.has_section("knative"):
        conf.add_section("knative")
    conf.set("knative", "transfer_concurrency", "3")
    try:
        assert config.get("transfer_concurrency") == 3
        config.forget_cached()
        assert config.get("transfer_concurrency", cached=True) == 3
        conf.set("knative", "transfer_concurrency", "5")
        assert config.get("transfer_concurrency") == 5  # uncached reads see the change
        assert config.get("transfer_concurrency", cached=True) == 3  # the hot path does not
        monkeypatch.setenv("AIRFLOW__KNATIVE__TRANSFER_CONCURRENCY", "7")
        assert config.get("transfer_concurrency", cached=True) == 7  # the environment still wins
    finally:
        conf.remove_option("knative", "transfer_concurrency")
        config.forget_cached()


def test_every_option_is_declared_for_airflow() -> None:
    section = config.provider_config_section()["knative"]
    assert set(section["options"]) == set(config.OPTIONS)
    for key, option in config.OPTIONS.items():
        declared = section["options"][key]
        assert declared["description"] and declared["type"] in ("string", "integer", "float", "boolean")
        assert declared["sensitive"] is option.sensitive
    assert section["options"]["signing_secret"]["sensitive"] is True
    assert section["options"]["xcom_inline_max_bytes"]["default"] == str(64 * 1024)


def test_readme_documents_every_option():
    """The README's configuration table is the user's reference: it must list every key."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [key for key in config.OPTIONS if f"| `{key}` |" not in readme]
    assert not missing, f"README.md's configuration table lacks {missing}"
