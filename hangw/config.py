"""Configuration: one TOML file parsed once at start into validated, frozen objects.

A wrong key or value stops start-up with a ConfigError that names the key, e.g.
``api.port: must be an integer from 0 to 65535, got 'x'`` (port 0: any free port, as tests use).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: The file used when none is given: config/hangw.toml, which the package carries as default.toml
#: (a link in the source tree, a copy in an installed wheel).
DEFAULT_CONFIG_PATH = Path(__file__).parent / "default.toml"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what is wrong."""


@dataclass(frozen=True)
class GatewayConfig:
    state_dir: Path = Path(".state")
    #: "auto", "off" or a CPU number: which CPU hangwd keeps its threads on (hangw.affinity).
    cpu: str | int = "auto"


@dataclass(frozen=True)
class StoreConfig:
    url: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    cert_dir: str = ""
    max_body_bytes: int = 65536
    ops_port: int = 9464
    adapter_port: int = 8444


@dataclass(frozen=True)
class ProvisioningConfig:
    join_window_s: int = 600
    command_timeout_s: int = 120
    timer_interval_s: float = 1.0


@dataclass(frozen=True)
class MessagingConfig:
    #: A delivery with no confirmation, opt-out or failure by then fails (FLR), in seconds after
    #: it was accepted (an event that ends sooner fails at its end).
    settle_timeout_s: int = 3600
    #: Bodies of POST /v1/messages and PUT /v1/groups/{name} may be this large (200,000 ESI IDs).
    max_body_bytes: int = 16 << 20
    #: ESI IDs per fan-out command handed to a head-end.
    fan_out_chunk: int = 2000


@dataclass(frozen=True)
class WebhooksConfig:
    #: Consecutive failed attempts after which a subscription is parked (with the reason).
    max_attempts: int = 8
    #: Back-off between attempts: doubles from the first to the most, in seconds.
    first_retry_s: float = 1.0
    max_retry_s: float = 300.0
    #: Seconds to wait for a receiver's answer.
    timeout_s: float = 10.0
    #: Notifications per POST.
    batch: int = 100
    #: Extra CA certificates (PEM) trusted for https receivers, besides the system's.
    ca_file: str = ""


@dataclass(frozen=True)
class UsageConfig:
    #: GnuPG home with the key for PGP-encrypted LSE files; empty: <state_dir>/gnupg.
    gnupg_home: str = ""
    #: Drop directories, one per TDSP DUNS (as the FTPS folders were): files put there are
    #: imported, then moved to done/ or rejected/ beside them.
    drop_dirs: Mapping[str, str] = field(default_factory=dict)
    #: Seconds between looks into the drop directories.
    poll_s: float = 5.0
    #: A delivery may unpack to at most this many bytes (a zip bomb is refused).
    max_unpacked_bytes: int = 4 << 30
    #: VEE: the highest interval above this many times the third-highest is a spike.
    spike_ratio: float = 1.5
    #: VEE: this many consecutive zero intervals are flagged.
    zero_run: int = 12
    #: VEE: the day total may differ from the register reads' difference by this many Wh.
    sum_tolerance_wh: int = 10
    #: Bulk report jobs: at most this many ESI IDs, results kept this many days, under this
    #: directory (empty: <state_dir>/usage-jobs).
    max_job_esiids: int = 50000
    job_retention_days: int = 10
    jobs_dir: str = ""


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class AdapterConfig:
    """Which adapter serves one TDSP's meters, and that adapter's own options (checked by it)."""

    tdsp_duns: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = GatewayConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    provisioning: ProvisioningConfig = ProvisioningConfig()
    messaging: MessagingConfig = MessagingConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    usage: UsageConfig = UsageConfig()
    logging: LoggingConfig = LoggingConfig()
    adapters: tuple[AdapterConfig, ...] = ()
    source: str = "<defaults>"

    @property
    def state_dir(self) -> Path:
        return self.gateway.state_dir

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_dir / 'hangw.sqlite'}"

    @property
    def store_key_path(self) -> Path:
        return Path(self.store.key_file) if self.store.key_file else self.state_dir / "store.key"

    @property
    def cert_dir(self) -> Path:
        return Path(self.api.cert_dir) if self.api.cert_dir else self.state_dir / "certs"

    @property
    def gnupg_home(self) -> Path:
        return Path(self.usage.gnupg_home) if self.usage.gnupg_home else self.state_dir / "gnupg"

    @property
    def usage_jobs_dir(self) -> Path:
        return Path(self.usage.jobs_dir) if self.usage.jobs_dir else self.state_dir / "usage-jobs"

    def adapter_for(self, tdsp_duns: str) -> AdapterConfig | None:
        return next((a for a in self.adapters if a.tdsp_duns == tdsp_duns), None)


_LEVELS = ("debug", "info", "warning", "error")
_FORMATS = ("auto", "json", "console")


def _integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}: must be an integer from {low} to {high}, got {value!r}")
    return value


def _number(key: str, value: Any, low: float) -> float:
    number = math.nan  # TOML's nan and inf are numbers, but no setting can use them
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            pass
    if not math.isfinite(number) or number < low:
        raise ConfigError(f"{key}: must be a finite number of at least {low}, got {value!r}")
    return number


def _string(key: str, value: Any, choices: tuple[str, ...] = (), *, empty_ok: bool = True) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    if not empty_ok and not value.strip():
        raise ConfigError(f"{key}: must not be empty")
    return value


def _store_url(key: str, value: Any) -> str:
    """A SQLAlchemy database URL of an installed dialect, or empty (the SQLite default)."""
    import sqlalchemy as sa

    url = _string(key, value)
    if not url:
        return url
    example = "such as sqlite:///path/hangw.sqlite or postgresql+psycopg://user@host/db"
    try:  # the value is not shown: a URL may carry a password
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(f"{key}: not a database URL ({example})") from None
    try:
        parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise ConfigError(f"{key}: no database dialect {parsed.drivername!r} ({example})") from None
    return url


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a table, got {value!r}")
    return value


def _known(section: str, table: Mapping[str, Any], cls: type) -> None:
    names = {f.name for f in fields(cls)}
    for key in table:
        if key not in names:
            raise ConfigError(
                f"{section}.{key}: unknown key (known keys: {', '.join(sorted(names))})"
            )


def _refuse_shared_ports(api: ApiConfig, adapters: list[AdapterConfig]) -> None:
    """Each listener on api.host needs a port of its own (0, any free port, never clashes); the
    adapter port counts only when a head-end dials in (``kind = "wire"``), as only then it opens."""
    listeners = {"api.port": api.port, "api.ops_port": api.ops_port}
    if any(adapter.kind == "wire" for adapter in adapters):
        listeners["api.adapter_port"] = api.adapter_port
    taken: dict[int, str] = {}
    for key, port in listeners.items():
        if port and port in taken:
            raise ConfigError(
                f"{key}: must differ from {taken[port]} (both are {port}): each is a listener "
                "of its own on api.host"
            )
        taken[port] = key


def from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> Config:
    """Validate a parsed TOML document into a Config."""
    sections = {
        "gateway",
        "store",
        "api",
        "provisioning",
        "messaging",
        "webhooks",
        "usage",
        "logging",
        "adapters",
    }
    for key in data:
        if key not in sections:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sorted(sections))})")

    g = _table("gateway", data.get("gateway", {}))
    _known("gateway", g, GatewayConfig)
    cpu = g.get("cpu", "auto")
    if isinstance(cpu, str):
        _string("gateway.cpu", cpu, ("auto", "off"))
    else:
        cpu = _integer("gateway.cpu", cpu, 0, 65535)
    state_dir = _string("gateway.state_dir", g.get("state_dir", ".state"), empty_ok=False)
    gateway = GatewayConfig(state_dir=Path(state_dir), cpu=cpu)

    s = _table("store", data.get("store", {}))
    _known("store", s, StoreConfig)
    store = StoreConfig(
        url=_store_url("store.url", s.get("url", "")),
        key_file=_string("store.key_file", s.get("key_file", "")),
    )

    a = _table("api", data.get("api", {}))
    _known("api", a, ApiConfig)
    api = ApiConfig(
        host=_string("api.host", a.get("host", "127.0.0.1"), empty_ok=False),
        port=_integer("api.port", a.get("port", 8443), 0, 65535),
        cert_dir=_string("api.cert_dir", a.get("cert_dir", "")),
        max_body_bytes=_integer(
            "api.max_body_bytes", a.get("max_body_bytes", 65536), 1024, 1 << 30
        ),
        ops_port=_integer("api.ops_port", a.get("ops_port", 9464), 0, 65535),
        adapter_port=_integer("api.adapter_port", a.get("adapter_port", 8444), 0, 65535),
    )

    p = _table("provisioning", data.get("provisioning", {}))
    _known("provisioning", p, ProvisioningConfig)
    provisioning = ProvisioningConfig(
        join_window_s=_integer("provisioning.join_window_s", p.get("join_window_s", 600), 1, 86400),
        command_timeout_s=_integer(
            "provisioning.command_timeout_s", p.get("command_timeout_s", 120), 1, 86400
        ),
        timer_interval_s=_number(
            "provisioning.timer_interval_s", p.get("timer_interval_s", 1.0), 0.01
        ),
    )

    m = _table("messaging", data.get("messaging", {}))
    _known("messaging", m, MessagingConfig)
    messaging = MessagingConfig(
        settle_timeout_s=_integer(
            "messaging.settle_timeout_s", m.get("settle_timeout_s", 3600), 1, 7 * 86400
        ),
        max_body_bytes=_integer(
            "messaging.max_body_bytes", m.get("max_body_bytes", 16 << 20), 1024, 1 << 30
        ),
        fan_out_chunk=_integer("messaging.fan_out_chunk", m.get("fan_out_chunk", 2000), 1, 5000),
    )

    w = _table("webhooks", data.get("webhooks", {}))
    _known("webhooks", w, WebhooksConfig)
    webhooks = WebhooksConfig(
        max_attempts=_integer("webhooks.max_attempts", w.get("max_attempts", 8), 1, 1000),
        first_retry_s=_number("webhooks.first_retry_s", w.get("first_retry_s", 1.0), 0.01),
        max_retry_s=_number("webhooks.max_retry_s", w.get("max_retry_s", 300.0), 0.01),
        timeout_s=_number("webhooks.timeout_s", w.get("timeout_s", 10.0), 0.1),
        batch=_integer("webhooks.batch", w.get("batch", 100), 1, 1000),
        ca_file=_string("webhooks.ca_file", w.get("ca_file", "")),
    )
    if webhooks.first_retry_s > webhooks.max_retry_s:
        raise ConfigError(
            f"webhooks.first_retry_s: must not be more than webhooks.max_retry_s "
            f"({webhooks.max_retry_s:g}), got {webhooks.first_retry_s:g}"
        )

    u = _table("usage", data.get("usage", {}))
    _known("usage", u, UsageConfig)
    drop_dirs = {}
    for duns, directory in _table("usage.drop_dirs", u.get("drop_dirs", {})).items():
        if not str(duns).isdigit():
            raise ConfigError(f"usage.drop_dirs.{duns}: the key must be the TDSP's DUNS number")
        drop_dirs[str(duns)] = _string(f"usage.drop_dirs.{duns}", directory)
    usage = UsageConfig(
        gnupg_home=_string("usage.gnupg_home", u.get("gnupg_home", "")),
        drop_dirs=drop_dirs,
        poll_s=_number("usage.poll_s", u.get("poll_s", 5.0), 0.01),
        max_unpacked_bytes=_integer(
            "usage.max_unpacked_bytes", u.get("max_unpacked_bytes", 4 << 30), 1024, 1 << 40
        ),
        spike_ratio=_number("usage.spike_ratio", u.get("spike_ratio", 1.5), 1.0),
        zero_run=_integer("usage.zero_run", u.get("zero_run", 12), 2, 100),
        sum_tolerance_wh=_integer(
            "usage.sum_tolerance_wh", u.get("sum_tolerance_wh", 10), 0, 1 << 31
        ),
        max_job_esiids=_integer(
            "usage.max_job_esiids", u.get("max_job_esiids", 50000), 1, 1_000_000
        ),
        job_retention_days=_integer(
            "usage.job_retention_days", u.get("job_retention_days", 10), 1, 3650
        ),
        jobs_dir=_string("usage.jobs_dir", u.get("jobs_dir", "")),
    )

    lg = _table("logging", data.get("logging", {}))
    _known("logging", lg, LoggingConfig)
    logging = LoggingConfig(
        level=_string("logging.level", lg.get("level", "info"), _LEVELS),
        format=_string("logging.format", lg.get("format", "auto"), _FORMATS),
    )

    adapters = []
    for duns, table in _table("adapters", data.get("adapters", {})).items():
        key = f"adapters.{duns}"
        if not str(duns).isdigit():
            raise ConfigError(f"{key}: the table name must be the TDSP's DUNS number (digits)")
        table = _table(key, table)
        kind = _string(f"{key}.kind", table.get("kind"))
        options = {k: v for k, v in table.items() if k != "kind"}
        adapters.append(AdapterConfig(tdsp_duns=str(duns), kind=kind, options=options))

    _refuse_shared_ports(api, adapters)

    return Config(
        gateway=gateway,
        store=store,
        api=api,
        provisioning=provisioning,
        messaging=messaging,
        webhooks=webhooks,
        usage=usage,
        logging=logging,
        adapters=tuple(adapters),
        source=source,
    )


def unusable_path(key: str, path: Path | str, error: OSError) -> ConfigError:
    """Why the path ``key`` names could not be used (an OSError met reading or making it), in
    words and naming the key; what the file holds is never in it."""
    where = error.filename or path
    if isinstance(error, FileNotFoundError):
        why = f"{where} does not exist"
    elif isinstance(error, IsADirectoryError):
        why = f"{where} is a directory, not a file"
    elif isinstance(error, NotADirectoryError):
        why = f"{where}: a part of the path is a file, not a directory"
    elif isinstance(error, FileExistsError):  # a directory to make, where a file is
        why = f"{where} is a file, not a directory"
    else:
        why = f"{where}: {error.strerror or type(error).__name__}"
    return ConfigError(f"{key}: {why}")


def safe_url(url: str) -> str:
    """A database URL as it may be shown or logged: without its password."""
    import sqlalchemy as sa

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


def store_problem(config: Config, error: Exception) -> str:
    """Why the store cannot be used (an SQLAlchemy error), with its URL and what to check; the
    URL's password is shown nowhere, not even where the driver's message repeats it."""
    import sqlalchemy as sa

    cause = getattr(error, "orig", None) or error
    detail = (str(cause).strip().splitlines() or [""])[0][:200]
    try:
        password = sa.make_url(config.store_url).password
    except sa.exc.ArgumentError:
        password = None
    if password:
        detail = detail.replace(str(password), "***")
    return (
        f"cannot use the store at {safe_url(config.store_url)} "
        f"({type(cause).__name__}: {detail}); check store.url in {config.source} and that the "
        "database can be reached"
    )


def load(path: Path | str | None = None) -> Config:
    """Read and validate a TOML file (config/hangw.toml when none is given)."""
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        with open(config_path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: no such configuration file") from None
    except OSError as error:  # a directory, or a file it may not read
        raise ConfigError(f"{config_path}: cannot read it: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{config_path}: not valid TOML: {error}") from None
    try:
        return from_mapping(data, source=str(config_path))
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from None
