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
        ({"usage": {"poll_s": float("nan")}}, "usage.poll_s"),
        ({"provisioning": {"timer_interval_s": float("inf")}}, "provisioning.timer_interval_s"),
        ({"webhooks": {"timeout_s": float("inf")}}, "webhooks.timeout_s"),
        ({"usage": {"spike_ratio": 10**400}}, "usage.spike_ratio"),
        ({"webhooks": {"first_retry_s": 60, "max_retry_s": 10}}, "webhooks.first_retry_s"),
        ({"api": {"host": ""}}, "api.host"),
        ({"gateway": {"state_dir": ""}}, "gateway.state_dir"),
        ({"store": {"url": "nonsense"}}, "store.url"),
        ({"store": {"url": "nonsense://db.example/hangw"}}, "store.url"),
    ],
)
def test_bad_key_or_value_is_named(data: dict[str, object], named: str) -> None:
    """Each bad key or value stops loading with a message that starts with the key's name."""
    with pytest.raises(ConfigError) as refusal:
        from_mapping(data)
    assert str(refusal.value).startswith(named + ":"), str(refusal.value)


def test_nan_and_infinity_are_refused_as_toml_gives_them(tmp_path: Path) -> None:
    """TOML's nan and inf, which no setting can use, stop loading with the key named."""
    path = tmp_path / "hangw.toml"
    path.write_text("[usage]\npoll_s = nan\n")
    with pytest.raises(ConfigError, match=r"usage\.poll_s: must be a finite number"):
        load(path)
    path.write_text("[provisioning]\ntimer_interval_s = inf\n")
    with pytest.raises(ConfigError, match=r"provisioning\.timer_interval_s: must be a finite"):
        load(path)


def test_a_bad_store_url_is_refused_without_showing_it() -> None:
    """A store URL SQLAlchemy cannot use is refused naming store.url, never echoing its password."""
    for url in ("postgresql+nosuchdriver://hangw:s3cret@db.example/hangw", "hangw:s3cret@db"):
        with pytest.raises(ConfigError) as refusal:
            from_mapping({"store": {"url": url}})
        assert str(refusal.value).startswith("store.url:")
        assert "s3cret" not in str(refusal.value)


def test_port_zero_is_any_free_port_and_retry_bounds_may_be_equal() -> None:
    """Port 0 (an ephemeral port, as the tests use) and first_retry_s == max_retry_s load."""
    config = from_mapping({"api": {"port": 0}, "webhooks": {"first_retry_s": 5, "max_retry_s": 5}})
    assert config.api.port == 0 and config.webhooks.first_retry_s == 5.0


def test_listeners_given_one_port_are_refused_naming_both_keys() -> None:
    """Two listeners given one port stop loading with a message naming both keys; port 0 (any
    free port) may repeat, and so may the adapter port when no head-end dials in to use it."""
    wire = {"adapters": {"1039940674000": {"kind": "wire"}}}
    for data, named, other in [
        ({"api": {"port": 8443, "ops_port": 8443}}, "api.ops_port", "api.port"),
        ({"api": {"port": 8443, "adapter_port": 8443}, **wire}, "api.adapter_port", "api.port"),
        (
            {"api": {"ops_port": 9000, "adapter_port": 9000}, **wire},
            "api.adapter_port",
            "api.ops_port",
        ),
    ]:
        with pytest.raises(ConfigError) as refusal:
            from_mapping(data)
        assert str(refusal.value).startswith(named + ":"), str(refusal.value)
        assert other in str(refusal.value), str(refusal.value)
    from_mapping({"api": {"port": 0, "ops_port": 0, "adapter_port": 0}, **wire})
    assert from_mapping({"api": {"port": 8444}}).api.adapter_port == 8444


def test_a_directory_given_as_the_configuration_is_refused(tmp_path: Path) -> None:
    """--config naming a directory is a ConfigError with the path, not an OSError."""
    with pytest.raises(ConfigError, match="cannot read it"):
        load(tmp_path)


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
