"""Configuration is validated once at start; a wrong key or value names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hangw.config import DEFAULT_CONFIG_PATH, ConfigError, from_mapping, load


def test_embedded_default_loads() -> None:
    """config/hangw.toml gives SQLite under .state, loopback API and the demo TDSP's simulator."""
    config = load(DEFAULT_CONFIG_PATH)
    assert config.store_url == "sqlite:///.state/hangw.sqlite"
    assert config.api.host == "127.0.0.1"
    assert [(a.tdsp_duns, a.kind) for a in config.adapters] == [("1039940674000", "simulator")]


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"api": {"prot": 1}}, "api.prot"),
        ({"api": {"port": "x"}}, "api.port"),
        ({"api": {"port": 70000}}, "api.port"),
        ({"provisioning": {"join_window_s": 0}}, "provisioning.join_window_s"),
        ({"logging": {"level": "loud"}}, "logging.level"),
        ({"nonsense": {}}, "nonsense"),
        ({"adapters": {"abc": {"kind": "simulator"}}}, "adapters.abc"),
        ({"adapters": {"123456789": {}}}, "adapters.123456789.kind"),
        ({"store": "sqlite://"}, "store"),
    ],
)
def test_bad_key_or_value_is_named(data: dict[str, object], named: str) -> None:
    """Each bad key or value stops loading with a message that starts with the key's name."""
    with pytest.raises(ConfigError) as refusal:
        from_mapping(data)
    assert str(refusal.value).startswith(named + ":"), str(refusal.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    """A file that is not TOML is refused with its path."""
    path = tmp_path / "bad.toml"
    path.write_text("[api\nport = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load(path)


def test_config_is_frozen() -> None:
    """Parsed configuration cannot be changed after start."""
    config = from_mapping({})
    with pytest.raises(AttributeError):
        config.api.port = 1  # type: ignore[misc]
