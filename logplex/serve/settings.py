"""Settings of ``logplex serve`` (DESIGN section 2): flags, environment, TOML, defaults.

Every setting has one name, the flag without its dashes. A value is taken, first found, from
the command line, then the environment (``--shutdown-grace`` <- ``LOGPLEX_SHUTDOWN_GRACE``),
then the TOML file named by ``--config`` / ``LOGPLEX_CONFIG`` (keys are the flag names, with
``-`` or ``_``: ``shutdown-grace = 5``), then the default. ``resolve_settings`` is a pure
function of those sources, table-tested.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final


class ServeConfigError(ValueError):
    """A setting is missing, malformed or inconsistent; the message says which and how to fix."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServeSettings:
    data_dir: Path
    http: HostPort
    shim: HostPort
    syslog: HostPort
    tls_cert: Path | None
    tls_key: Path | None
    auth_key: str | None
    history: int
    drain_buffer: int
    max_drains_per_channel: int
    public_url: str | None
    drain_ca_file: Path | None
    shutdown_grace: float
    drain_retry_window: float
    spool: Path | None = None  # None: DATA_DIR/spool (see ``spool_dir``)
    no_spool: bool = False
    spool_max_bytes: int = 1 << 30
    spool_sync_ms: int = 50
    # Guards against tenants, apps and network peers (docs/security.md).
    auth_key_file: Path | None = None
    allow_insecure_permissions: bool = False
    deny_private_drains: bool = False
    max_channels: int = 10_000
    max_tokens_per_channel: int = 20
    max_sessions_per_channel: int = 50
    max_clients_per_session: int = 4
    history_max_bytes: int = 2 << 20
    max_connections: int | None = None  # None: derived from the open-files limit
    max_connections_per_ip: int = 1000
    max_inflating_bodies: int = 8
    max_inflate_bytes: int = 64 << 20
    auth_failure_limit: int = 20
    http_idle_timeout: float = 5.0
    http_body_timeout: float = 30.0
    syslog_idle_timeout: float = 300.0
    syslog_frame_timeout: float = 30.0
    shim_hello_timeout: float = 10.0
    shim_frame_timeout: float = 30.0
    # The cluster mode (DESIGN 10): None keeps SQLite and the local spool.
    nats: tuple[str, ...] | None = None
    nats_creds: Path | None = None
    nats_ca_file: Path | None = None
    nats_replicas: int | None = None  # None: min(3, the number of --nats servers)
    nats_partitions: int = 64
    nats_lease_ttl: float = 3.0
    nats_stream_max_bytes: int = 256 << 20

    @property
    def spool_dir(self) -> Path | None:
        """Where the durable spool lives, or None with ``--no-spool``."""
        if self.no_spool:
            return None
        return self.spool if self.spool is not None else self.data_dir / "spool"


def parse_host_port(text: str) -> HostPort:
    """``HOST:PORT`` or ``[IPv6]:PORT``; port 0 means "pick a free port"."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:8001)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 0..65535")
    return HostPort(host, port)


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"{value} is below the minimum of {minimum}")
        return value

    return parse


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{text} is not a number of seconds >= 0")
    return value


_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
MIN_SPOOL_BYTES: Final = 1 << 20
MIN_HISTORY_BYTES: Final = 1 << 10
MIN_INFLATE_BYTES: Final = 1 << 20


_SIZE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def byte_size(minimum: int, minimum_text: str) -> Callable[[str], int]:
    """A parser of byte sizes (``1073741824``, ``1GiB``, ``512 MiB``, ``2G``: decimal units
    without the ``i``) that refuses sizes below ``minimum``."""

    def parse(text: str) -> int:
        match = _SIZE.fullmatch(text.replace("_", ""))
        factor = _SIZE_UNITS.get(match[2].lower()) if match else None
        if match is None or factor is None:
            raise ValueError(
                f"{text!r} is not a size in bytes (for example 1073741824, 1GiB, 500MB)"
            )
        value = int(float(match[1]) * factor)
        if value < minimum:
            raise ValueError(f"{text!r} is below the minimum of {minimum} bytes ({minimum_text})")
        return value

    return parse


parse_byte_size: Final = byte_size(MIN_SPOOL_BYTES, "1 MiB")


def _timeout(text: str) -> float:
    value = float(text)
    if not 0 < value <= 86_400:  # also refuses NaN
        raise ValueError(f"{text} is not a number of seconds in (0, 86400]")
    return value


def _lease_ttl(text: str) -> float:
    value = float(text)
    if not 1.0 <= value <= 3600.0:  # also refuses NaN
        raise ValueError(
            f"{text} is not a lease TTL in [1, 3600] seconds: renewals run every third of it, "
            "and a shorter one would move partitions on every hiccup"
        )
    return value


def _sync_ms(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise ValueError(f"{value} is outside 1..10000 milliseconds")
    return value


_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off", ""}


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("it is not a yes/no value (1, true, yes, on / 0, false, no, off)")


def _text(text: str) -> str:
    if not text:
        raise ValueError("it is empty")
    return text


@dataclass(frozen=True, slots=True)
class _Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    metavar: str
    help: str
    switch: bool = False  # a flag without a value (``--no-spool``); env/TOML take yes/no


SETTINGS: Final = (
    _Setting("data-dir", Path, Path(".logplex"), "DIR", "config database and auth key"),
    _Setting(
        "http",
        parse_host_port,
        "127.0.0.1:8001",
        "HOST:PORT",
        "REST API, sessions, POST /logs, /metrics, /healthcheck",
    ),
    _Setting("shim", parse_host_port, "127.0.0.1:6001", "HOST:PORT", "shim stream listener"),
    _Setting(
        "syslog",
        parse_host_port,
        "127.0.0.1:6601",
        "HOST:PORT",
        "RFC 6587 octet-counted syslog over TCP",
    ),
    _Setting("tls-cert", Path, None, "FILE", "with --tls-key: shim and syslog listeners speak TLS"),
    _Setting("tls-key", Path, None, "FILE", "private key of --tls-cert"),
    _Setting("auth-key", _text, None, "KEY", "API key (default: generated into DATA_DIR/auth-key)"),
    _Setting("history", _count(0), 1500, "N", "lines of history kept per channel"),
    _Setting(
        "drain-buffer",
        _count(1),
        1024,
        "N",
        "messages buffered per drain before the oldest are dropped",
    ),
    _Setting("max-drains-per-channel", _count(1), 6, "N", "drains allowed per channel"),
    _Setting("public-url", _text, None, "URL", "base of session URLs (default: from --http)"),
    _Setting(
        "drain-ca-file",
        Path,
        None,
        "FILE",
        "extra CA bundle trusted for HTTPS and syslog+tls drains",
    ),
    _Setting(
        "shutdown-grace", _seconds, 10.0, "SECONDS", "time allowed to flush drains on SIGTERM"
    ),
    _Setting(
        "drain-retry-window",
        _seconds,
        60.0,
        "SECONDS",
        "without the spool, how long a failing batch is retried before it is dropped (L10)",
    ),
    _Setting(
        "spool",
        Path,
        None,
        "DIR",
        "durable spool: accepted batches are fsynced before they are acknowledged "
        "(default DATA_DIR/spool)",
    ),
    _Setting(
        "no-spool",
        _switch,
        False,
        "",
        "memory only: per-drain buffers of --drain-buffer messages, drop-oldest, L10",
        switch=True,
    ),
    _Setting(
        "spool-max-bytes",
        parse_byte_size,
        1 << 30,
        "BYTES",
        "disk bound of the spool (1GiB, 500MB, ...); beyond it the oldest segments go (L10)",
    ),
    _Setting(
        "spool-sync-ms",
        _sync_ms,
        50,
        "MS",
        "group commit: the longest an accepted batch waits for its fsync",
    ),
    # -- guards (docs/security.md) ---------------------------------------------------------
    _Setting(
        "auth-key-file",
        Path,
        None,
        "FILE",
        "read the API key from FILE (keeps it out of argv and ps; not with --auth-key)",
    ),
    _Setting(
        "allow-insecure-permissions",
        _switch,
        False,
        "",
        "start even if the data dir or a key file is group- or world-accessible (warns)",
        switch=True,
    ),
    _Setting(
        "deny-private-drains",
        _switch,
        False,
        "",
        "refuse drain URLs that resolve to loopback, link-local, private or this router's "
        "own addresses, at creation and at every connect (multi-tenant routers: turn it on)",
        switch=True,
    ),
    _Setting("max-channels", _count(1), 10_000, "N", "channels the API key may create"),
    _Setting("max-tokens-per-channel", _count(1), 20, "N", "tokens allowed per channel"),
    _Setting(
        "max-sessions-per-channel",
        _count(1),
        50,
        "N",
        "log sessions (pending or being read) allowed per channel",
    ),
    _Setting(
        "max-clients-per-session",
        _count(1),
        4,
        "N",
        "clients that may read one session URL at once",
    ),
    _Setting(
        "history-max-bytes",
        byte_size(MIN_HISTORY_BYTES, "1 KiB"),
        2 << 20,
        "BYTES",
        "message bytes of history kept per channel (with --history lines, whichever is less)",
    ),
    _Setting(
        "max-connections",
        _count(1),
        None,
        "N",
        "connections each listener serves at once (default: fitted to the open-files limit)",
    ),
    _Setting(
        "max-connections-per-ip",
        _count(1),
        1000,
        "N",
        "connections one source address may hold open on each listener",
    ),
    _Setting(
        "max-inflating-bodies",
        _count(1),
        8,
        "N",
        "POST /logs gzip bodies inflated at once; more wait (then 503)",
    ),
    _Setting(
        "max-inflate-bytes",
        byte_size(MIN_INFLATE_BYTES, "1 MiB"),
        64 << 20,
        "BYTES",
        "memory all POST /logs bodies being read and inflated may take together",
    ),
    _Setting(
        "auth-failure-limit",
        _count(1),
        20,
        "N",
        "failed authentications per source address per minute before 429",
    ),
    _Setting(
        "http-idle-timeout",
        _timeout,
        5.0,
        "SECONDS",
        "HTTP: a connection's idle keep-alive time, and the time to send a request head",
    ),
    _Setting(
        "http-body-timeout",
        _timeout,
        30.0,
        "SECONDS",
        "HTTP: the time a client has to send a whole request body",
    ),
    _Setting(
        "syslog-idle-timeout",
        _timeout,
        300.0,
        "SECONDS",
        "syslog: close a connection that completes no frame for this long",
    ),
    _Setting(
        "syslog-frame-timeout",
        _timeout,
        30.0,
        "SECONDS",
        "syslog: the time a begun frame has to complete",
    ),
    _Setting(
        "shim-hello-timeout",
        _timeout,
        10.0,
        "SECONDS",
        "shim: the time a new connection has to send HELLO",
    ),
    _Setting(
        "shim-frame-timeout",
        _timeout,
        30.0,
        "SECONDS",
        "shim: the time a begun frame has to complete",
    ),
    # -- the cluster mode (DESIGN 10, docs/scale-out.md) -------------------------------------
    _Setting(
        "nats",
        lambda text: parse_nats_urls(text),
        None,
        "URL[,URL...]",
        "scale-out: config, durable log and tails through NATS JetStream instead of SQLite "
        "and the local spool",
    ),
    _Setting("nats-creds", Path, None, "FILE", "NATS credentials file (JWT + NKey seed)"),
    _Setting("nats-ca-file", Path, None, "FILE", "CA bundle that verifies NATS servers (TLS)"),
    _Setting(
        "nats-replicas",
        _count(1),
        None,
        "N",
        "replicas of the partition streams and buckets (default: 3 with 3+ servers, else 1)",
    ),
    _Setting(
        "nats-partitions",
        _count(1),
        64,
        "N",
        "partitions of a new cluster (fixed when the cluster is first created)",
    ),
    _Setting(
        "nats-stream-max-bytes",
        parse_byte_size,
        256 << 20,
        "BYTES",
        "bound of each partition stream (256MiB, 10GiB, ...): how far behind a drain may fall; "
        "the oldest batches go first",
    ),
    _Setting(
        "nats-lease-ttl",
        _lease_ttl,
        3.0,
        "SECONDS",
        "partition lease TTL: a dead owner's partitions move after about this long",
    ),
)
_BY_NAME: Final = {s.name: s for s in SETTINGS}


def parse_nats_urls(text: str) -> tuple[str, ...]:
    """``URL[,URL...]`` of NATS servers: nats://, tls:// (or bare HOST:PORT, as nats://)."""
    urls = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "nats://" + part
        scheme = part.split("://", 1)[0]
        if scheme not in ("nats", "tls"):
            raise ValueError(f"{part!r}: a NATS URL starts with nats:// or tls://")
        if "@" in part:
            raise ValueError(
                "credentials do not belong in --nats URLs (they would show in ps and logs); "
                "use --nats-creds FILE"
            )
        urls.append(part)
    if not urls:
        raise ValueError("give at least one NATS server URL")
    return tuple(urls)


def env_name(setting: str) -> str:
    return "LOGPLEX_" + setting.upper().replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``logplex serve`` flags; defaults stay None so env and TOML can fill them."""
    parser.add_argument(
        "--config", metavar="FILE.toml", help="TOML file setting any flag (env LOGPLEX_CONFIG)"
    )
    for setting in SETTINGS:
        default = setting.default
        shown = (
            f" (default {default}; env {env_name(setting.name)})"
            if default is not None
            else (f" (env {env_name(setting.name)})")
        )
        if setting.switch:
            parser.add_argument(
                f"--{setting.name}",
                dest=setting.name.replace("-", "_"),
                action="store_const",
                const="1",
                default=None,
                help=f"{setting.help} (env {env_name(setting.name)}=1)",
            )
            continue
        parser.add_argument(
            f"--{setting.name}",
            dest=setting.name.replace("-", "_"),
            metavar=setting.metavar,
            default=None,
            help=setting.help + shown,
        )


def load_toml(path: Path) -> dict[str, Any]:
    """The settings table of a ``--config`` file, keys normalised to flag names."""
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ServeConfigError(f"cannot read --config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ServeConfigError(f"--config {path} is not valid TOML: {exc}") from None
    settings: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("_", "-")
        if name not in _BY_NAME:
            known = ", ".join(sorted(_BY_NAME))
            raise ServeConfigError(f"unknown setting {key!r} in {path}; known settings: {known}")
        settings[name] = value
    return settings


def resolve_settings(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    toml: Mapping[str, Any],
    *,
    toml_path: str = "--config",
) -> ServeSettings:
    """Flags over env over TOML over defaults, each value parsed and validated."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        flag_value = flags.get(setting.name)
        env_value = environ.get(env_name(setting.name))
        if flag_value is not None:
            raw, origin = flag_value, f"--{setting.name}"
        elif env_value is not None:
            raw, origin = env_value, env_name(setting.name)
        elif setting.name in toml:
            value = toml[setting.name]
            if setting.switch and isinstance(value, bool):
                values[setting.name.replace("-", "_")] = value
                continue
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ServeConfigError(
                    f"{setting.name} in {toml_path} must be a string or a number, "
                    f"not {type(value).__name__}"
                )
            raw, origin = str(value), f"{setting.name} in {toml_path}"
        else:
            values[setting.name.replace("-", "_")] = (
                setting.parse(setting.default)
                if isinstance(setting.default, str)
                else setting.default
            )
            continue
        try:
            values[setting.name.replace("-", "_")] = setting.parse(raw)
        except ValueError as exc:
            raise ServeConfigError(f"{origin}={raw!r} is invalid: {exc}") from None
    settings = ServeSettings(**values)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ServeConfigError(
            "--tls-cert and --tls-key go together: give both (TLS on the shim and syslog "
            "listeners) or neither"
        )
    if settings.auth_key is not None and settings.auth_key_file is not None:
        raise ServeConfigError(
            "--auth-key and --auth-key-file contradict each other: give the key one way"
        )
    if settings.no_spool and settings.spool is not None:
        raise ServeConfigError(
            "--spool and --no-spool contradict each other: give a spool directory or turn "
            "the spool off, not both"
        )
    if settings.nats is not None and settings.nats_partitions > 1024:
        raise ServeConfigError("--nats-partitions must be at most 1024")
    if settings.nats is None and (settings.nats_creds or settings.nats_ca_file):
        raise ServeConfigError("--nats-creds and --nats-ca-file need --nats")
    return settings


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeSettings:
    """Resolve ``logplex serve`` arguments (as added by ``add_arguments``)."""
    flags = {s.name: getattr(args, s.name.replace("-", "_"), None) for s in SETTINGS}
    config = getattr(args, "config", None) or environ.get("LOGPLEX_CONFIG")
    toml = load_toml(Path(config)) if config else {}
    return resolve_settings(flags, environ, toml, toml_path=str(config or "--config"))
