"""Settings come from the environment, once, with the names DESIGN.md gives."""

from __future__ import annotations

import pytest

from gateway.settings import Settings, SettingsError


def test_the_design_names_are_read() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/x",
            "REDIS_URL": "redis://r/0",
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_PORT": "9000",
            "ADMIN_TOKEN": "adm",
            "PUBLIC_BASE_URL": "https://gw.example/",
            "SECRET_KEY": "super-secret-value",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.database_url == "postgresql://db/x"
    assert settings.redis_url == "redis://r/0"
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert settings.public_base_url == "https://gw.example"
    assert settings.log_level == "DEBUG"
    assert settings.secret_key == "super-secret-value"
    assert "super-secret-value" not in repr(settings)


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
