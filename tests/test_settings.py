"""Settings come from the environment, once, each declared with its bounds (docs/settings.md)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from gateway.settings import Setting, Settings, SettingsError, reference


def test_the_documented_names_are_read() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/x",
            "REDIS_URL": "redis://r/0",
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_PORT": "9000",
            "ADMIN_TOKEN": "adm",
            "PUBLIC_BASE_URL": "https://gw.example/",
            "SECRET_KEY": "a8Fq-2vLx9ZpT0cW7mYbR4nK1sHdJ6gE3uQiV5oN8tCj",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.database_url == "postgresql://db/x"
    assert settings.redis_url == "redis://r/0"
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert settings.public_base_url == "https://gw.example"
    assert settings.log_level == "DEBUG"
    assert settings.secret_key == "a8Fq-2vLx9ZpT0cW7mYbR4nK1sHdJ6gE3uQiV5oN8tCj"
    assert "a8Fq-2vLx9ZpT0cW7mYbR4nK1sHdJ6gE3uQiV5oN8tCj" not in repr(settings)


def test_the_public_url_defaults_to_the_listening_address() -> None:
    assert Settings.from_env({"GATEWAY_PORT": "8081"}).public_base_url == "http://127.0.0.1:8081"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PORT", "eighty"),
        ("RATE_LIMIT_FAIL_OPEN", "maybe"),
        ("WAIT_RECHECK_S", "soon"),
        ("WAIT_RECHECK_S", "0"),
        ("FOLLOW_LEASE_S", "-5"),
        ("FOLLOW_LEASE_S", "nan"),
    ],
)
def test_a_bad_value_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_package_urls_live_15_minutes_unless_told_otherwise() -> None:
    assert Settings.from_env({}).package_url_ttl_s == 900
    assert Settings.from_env({"PACKAGE_URL_TTL_S": "60"}).package_url_ttl_s == 60
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SettingsError, match="PACKAGE_URL_TTL_S"):
            Settings.from_env({"PACKAGE_URL_TTL_S": bad})


def test_drain_and_consumer_settings_are_read_with_the_former_name_still_honoured() -> None:
    settings = Settings.from_env(
        {
            "GATEWAY_HOST": "0.0.0.0",
            "DRAIN_PRE_STOP_S": "0",
            "DRAIN_TIMEOUT_S": "45",
            "CONSUMER_PORT": "9100",
        }
    )
    assert (settings.drain_pre_stop_s, settings.drain_timeout_s) == (0.0, 45.0)
    assert (settings.consumer_host, settings.consumer_port) == ("0.0.0.0", 9100)
    assert Settings.from_env({"SHUTDOWN_GRACE_S": "12"}).drain_timeout_s == 12.0
    assert Settings.from_env({}).drain_timeout_s == 30.0
    assert Settings.from_env({"CONSUMER_HOST": "10.0.0.5"}).consumer_host == "10.0.0.5"


@pytest.mark.parametrize(
    ("name", "value"),
    [("DRAIN_PRE_STOP_S", "-1"), ("DRAIN_PRE_STOP_S", "later"), ("DRAIN_TIMEOUT_S", "0")],
)
def test_a_bad_drain_setting_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def _numeric_settings() -> list[tuple[str, Setting]]:
    hints = typing.get_type_hints(Settings)
    found = []
    for declared in dataclasses.fields(Settings):
        spec: Setting = declared.metadata["setting"]
        if spec.env and hints[declared.name] in (int, float):
            found.append((spec.env, spec))
    return found


def test_a_negative_request_body_limit_is_refused() -> None:
    with pytest.raises(SettingsError, match="MAX_REQUEST_BODY must be at least 1, got '-5'"):
        Settings.from_env({"MAX_REQUEST_BODY": "-5"})


@pytest.mark.parametrize(("name", "spec"), _numeric_settings(), ids=lambda value: str(value)[:40])
def test_every_numeric_setting_refuses_a_value_below_its_bounds(name: str, spec: Setting) -> None:
    assert spec.minimum is not None, f"{name} declares no lower bound"
    below = spec.minimum if spec.above_minimum else spec.minimum - 1
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: str(int(below) if below == int(below) else below)})
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: "inf"})


def test_every_setting_read_from_the_environment_is_documented_as_generated() -> None:
    reference_file = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert reference_file.read_text() == reference(), (
        "docs/settings.md is stale: python -m gateway.settings > docs/settings.md"
    )


def test_each_variable_is_declared_once() -> None:
    names = [
        name
        for declared in dataclasses.fields(Settings)
        for name in (declared.metadata["setting"].env, *declared.metadata["setting"].aliases)
        if name
    ]
    assert len(names) == len(set(names))


def test_the_trigger_dev_run_tag_must_be_one_trigger_dev_accepts_and_can_filter_on() -> None:
    settings = Settings.from_env({"TRIGGER_DEV_RUN_TAG": "gw-prod", "TRIGGER_DEV_REALTIME": "off"})
    assert (settings.trigger_dev_run_tag, settings.trigger_dev_realtime) == ("gw-prod", False)
    assert Settings.from_env({}).trigger_dev_run_tag == "agent-gateway"
    for bad in ("a,b", 'say "hi"', "back\\slash", "x" * 129, "tab\there"):
        with pytest.raises(SettingsError, match="TRIGGER_DEV_RUN_TAG"):
            Settings.from_env({"TRIGGER_DEV_RUN_TAG": bad})


def _secret_names() -> list[str]:
    return [
        declared.metadata["setting"].env
        for declared in dataclasses.fields(Settings)
        if declared.metadata["setting"].secret
    ]


def test_the_secrets_are_the_ones_a_deployment_mounts_as_files() -> None:
    assert set(_secret_names()) == {
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
        "SECRET_KEYS_PREVIOUS",
        "ADMIN_TOKEN",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
    }


@pytest.mark.parametrize("name", _secret_names())
def test_a_secret_is_read_from_the_file_its_file_variable_names(name: str, tmp_path: Path) -> None:
    value = {
        "REDIS_URL": "redis://from-a-mounted-secret",
        "SECRET_KEY": "from-a-mounted-secret-" + "0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c",
    }.get(name, "from-a-mounted-secret")
    mounted = tmp_path / name.lower()
    # As `echo value > file` or a Docker secret leaves it: the newline is not the secret's.
    mounted.write_text(f"{value}\n")

    settings = Settings.from_env({f"{name}_FILE": str(mounted)})

    field = next(
        declared.name
        for declared in dataclasses.fields(Settings)
        if declared.metadata["setting"].env == name
    )
    assert getattr(settings, field) == value
    assert "from-a-mounted-secret" not in repr(settings)


def test_the_variable_and_its_file_variable_together_are_refused_naming_both(
    tmp_path: Path,
) -> None:
    mounted = tmp_path / "secret_key"
    mounted.write_text("from-the-file")
    with pytest.raises(SettingsError, match="SECRET_KEY or SECRET_KEY_FILE, not both"):
        Settings.from_env({"SECRET_KEY": "from-the-env", "SECRET_KEY_FILE": str(mounted)})


def test_an_unreadable_secret_file_is_refused_naming_the_variable_and_path_not_the_content(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-file"
    with pytest.raises(SettingsError, match="ADMIN_TOKEN_FILE") as refused:
        Settings.from_env({"ADMIN_TOKEN_FILE": str(missing)})
    assert str(missing) in str(refused.value)

    # A folder where the file should be (a volume mounted one level off) cannot be read either.
    with pytest.raises(SettingsError, match="DATABASE_URL_FILE") as refused:
        Settings.from_env({"DATABASE_URL_FILE": str(tmp_path)})
    assert str(tmp_path) in str(refused.value)

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xffpostgresql://user:hunter2@db/x")
    with pytest.raises(SettingsError, match="DATABASE_URL_FILE") as refused:
        Settings.from_env({"DATABASE_URL_FILE": str(binary)})
    assert str(binary) in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_file_variable_is_honoured_for_secrets_only(tmp_path: Path) -> None:
    mounted = tmp_path / "port"
    mounted.write_text("9000\n")
    assert Settings.from_env({"GATEWAY_PORT_FILE": str(mounted)}).port == 8080


def test_a_redis_url_redis_cannot_open_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL") as refused:
        Settings.from_env({"REDIS_URL": "http://:hunter2@redis.internal:6379"})
    assert "hunter2" not in str(refused.value)
    assert Settings.from_env({"REDIS_URL": "rediss://r:6380/1"}).redis_url == "rediss://r:6380/1"
