"""``logplex serve`` settings: precedence flag > env > TOML > default, and every error message."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import pytest

from logplex.serve.settings import (
    HostPort,
    ServeConfigError,
    add_arguments,
    env_name,
    load_toml,
    parse_byte_size,
    parse_host_port,
    resolve_settings,
    settings_from_args,
)
from logplex.serve.wiring import is_duplicate_signal, load_or_create_auth_key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8001", HostPort("127.0.0.1", 8001)),
        ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
        ("[::1]:6001", HostPort("::1", 6001)),
        ("localhost:65535", HostPort("localhost", 65535)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8001", "is not HOST:PORT"),
        (":8001", "is not HOST:PORT"),
        ("host:http", "is not a number"),
        ("host:70000", "outside 0..65535"),
    ],
)
def test_parse_host_port_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_host_port(text)


def test_host_port_renders_ipv6_in_brackets() -> None:
    assert str(HostPort("::1", 80)) == "[::1]:80"
    assert str(HostPort("127.0.0.1", 80)) == "127.0.0.1:80"


def test_defaults_follow_design_section_2() -> None:
    settings = resolve_settings({}, {}, {})
    assert settings.data_dir == Path(".logplex")
    assert settings.http == HostPort("127.0.0.1", 8001)
    assert settings.shim == HostPort("127.0.0.1", 6001)
    assert settings.syslog == HostPort("127.0.0.1", 6601)
    assert (settings.tls_cert, settings.tls_key, settings.auth_key) == (None, None, None)
    assert settings.history == 1500
    assert settings.drain_buffer == 1024
    assert settings.max_drains_per_channel == 6
    assert settings.public_url is None
    assert settings.drain_ca_file is None
    assert settings.shutdown_grace == 10.0
    assert settings.drain_retry_window == 60.0


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "expected_history"),
    [
        ({}, {}, {"history": 7}, 7),
        ({}, {"LOGPLEX_HISTORY": "8"}, {"history": 7}, 8),
        ({"history": "9"}, {"LOGPLEX_HISTORY": "8"}, {"history": 7}, 9),
        ({"history": None}, {}, {}, 1500),
    ],
)
def test_precedence(
    flags: dict[str, str | None],
    environ: dict[str, str],
    toml: dict[str, object],
    expected_history: int,
) -> None:
    assert resolve_settings(flags, environ, toml).history == expected_history


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "message"),
    [
        ({"history": "-1"}, {}, {}, "--history='-1' is invalid: -1 is below the minimum of 0"),
        ({}, {"LOGPLEX_DRAIN_BUFFER": "0"}, {}, "LOGPLEX_DRAIN_BUFFER='0' is invalid"),
        ({}, {}, {"shutdown-grace": "soon"}, "shutdown-grace in --config='soon' is invalid"),
        ({}, {}, {"shutdown-grace": -1}, "is not a number of seconds"),
        ({}, {}, {"history": True}, "must be a string or a number"),
        ({}, {}, {"http": ["a"]}, "must be a string or a number"),
        ({"tls_cert": None, "tls-cert": "c.pem"}, {}, {}, "--tls-cert and --tls-key go together"),
        ({}, {"LOGPLEX_TLS_KEY": "k.pem"}, {}, "--tls-cert and --tls-key go together"),
        ({"auth-key": ""}, {}, {}, "it is empty"),
        ({"shim": "nohost"}, {}, {}, "--shim='nohost' is invalid"),
    ],
)
def test_errors_name_the_source_and_the_problem(
    flags: dict[str, str | None], environ: dict[str, str], toml: dict[str, object], message: str
) -> None:
    with pytest.raises(ServeConfigError) as caught:
        resolve_settings(flags, environ, toml)
    assert message in str(caught.value)


def test_env_names() -> None:
    assert env_name("shutdown-grace") == "LOGPLEX_SHUTDOWN_GRACE"
    assert env_name("max-drains-per-channel") == "LOGPLEX_MAX_DRAINS_PER_CHANNEL"


def test_toml_file_keys_with_dashes_or_underscores(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('shutdown_grace = 2.5\n"drain-buffer" = 10\npublic-url = "https://x"\n')
    assert load_toml(path) == {"shutdown-grace": 2.5, "drain-buffer": 10, "public-url": "https://x"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("histroy = 3\n", "unknown setting 'histroy'"),
        ("history = \n", "is not valid TOML"),
    ],
)
def test_toml_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ServeConfigError, match=message):
        load_toml(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("spool-max-bytes = 'lots'\n", "spool-max-bytes in .* is invalid: 'lots' is not a size"),
        ("spool-max-bytes = 1000\n", "below the minimum of 1048576 bytes"),
        ("spool-sync-ms = 0\n", "outside 1..10000"),
        ("no-spool = 'maybe'\n", "not a yes/no value"),
        ("no-spool = true\nspool = '/x'\n", "contradict each other"),
    ],
)
def test_spool_setting_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ServeConfigError, match=message):
        resolve_settings({}, {}, load_toml(path), toml_path=str(path))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("1GiB", 1 << 30),
        ("500 MB", 500_000_000),
        ("2g", 2_000_000_000),
        ("1.5MiB", 3 << 19),
        ("1_000_000_000", 10**9),
    ],
)
def test_byte_sizes(text: str, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "1 parsecs", "-5MB", "1e9"])
def test_bad_byte_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_byte_size(text)


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ServeConfigError, match="cannot read --config"):
        load_toml(tmp_path / "absent.toml")


def test_every_flag_parses_through_argparse(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = tmp_path / "c.toml"
    config.write_text("history = 5\n")
    args = parser.parse_args(
        [
            "--http",
            "0.0.0.0:80",
            "--shim",
            "127.0.0.1:0",
            "--syslog",
            "127.0.0.1:0",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--auth-key",
            "secret",
            "--drain-buffer",
            "3",
            "--max-drains-per-channel",
            "2",
            "--public-url",
            "https://logs.example",
            "--drain-ca-file",
            "ca.pem",
            "--shutdown-grace",
            "1",
            "--drain-retry-window",
            "5",
            "--data-dir",
            str(tmp_path),
            "--config",
            str(config),
        ]
    )
    settings = settings_from_args(args, {})
    assert settings.history == 5
    assert settings.http == HostPort("0.0.0.0", 80)
    assert settings.tls_cert == Path("c")
    assert settings.auth_key == "secret"
    assert settings.drain_buffer == 3
    assert settings.max_drains_per_channel == 2
    assert settings.public_url == "https://logs.example"
    assert settings.drain_ca_file == Path("ca.pem")
    assert settings.shutdown_grace == 1.0
    assert settings.drain_retry_window == 5.0
    spooled = settings_from_args(
        parser.parse_args(["--spool", "/sp", "--spool-max-bytes", "2GiB", "--spool-sync-ms", "7"]),
        {},
    )
    assert (spooled.spool_dir, spooled.spool_max_bytes, spooled.spool_sync_ms) == (
        Path("/sp"),
        2 << 30,
        7,
    )
    assert settings.spool_dir == tmp_path / "spool"  # the default: DATA_DIR/spool
    off = settings_from_args(parser.parse_args(["--no-spool"]), {})
    assert off.no_spool and off.spool_dir is None
    assert settings_from_args(parser.parse_args([]), {"LOGPLEX_NO_SPOOL": "yes"}).no_spool
    with pytest.raises(SystemExit):
        parser.parse_args(["--no-spool", "x"])  # a switch takes no value
    with pytest.raises(SystemExit):
        parser.parse_args(["--deny-private-drains", "x"])


def test_auth_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "auth-key"
    key, created = load_or_create_auth_key(path)
    assert created
    assert len(key) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_auth_key(path) == (key, False)
    assert load_or_create_auth_key(tmp_path / "other")[0] != key  # random per data dir


@pytest.mark.parametrize(
    ("first", "again", "seconds_later", "duplicate"),
    [
        (signal.SIGTERM, signal.SIGTERM, 0.01, True),  # platform + supervisor
        (signal.SIGTERM, signal.SIGTERM, 1.9, True),
        (signal.SIGTERM, signal.SIGTERM, 2.0, False),  # the operator insists
        (signal.SIGTERM, signal.SIGINT, 0.01, False),  # Ctrl-C: stop now
        (signal.SIGINT, signal.SIGINT, 5.0, False),
        (signal.SIGINT, signal.SIGTERM, 0.5, False),
    ],
)
def test_signal_during_shutdown(
    first: signal.Signals, again: signal.Signals, seconds_later: float, duplicate: bool
) -> None:
    assert is_duplicate_signal(first, 100.0, again, 100.0 + seconds_later) is duplicate


def test_tune_gc_makes_collections_rare_and_freezes_start_up_objects() -> None:
    import gc

    from logplex.serve.wiring import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_threshold()[0] >= 10_000
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
