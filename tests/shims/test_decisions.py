"""The shim's pure decisions as tables: signal routing, exit codes, backoff, options."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from shims.options import (
    DEFAULT_BUFFER_BYTES,
    app_environment,
    check_ps,
    parse_options,
    parse_router_url,
)
from shims.reaper import final_exit_code, status_code
from shims.shipper import BACKOFF_CAP_S, reconnect_delay_s
from shims.signals import catchable_signals
from shims.spawn import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, spawn_error
from shims.supervisor import SignalAction, route_signal


@pytest.mark.parametrize(
    ("signum", "app_running", "grace_started", "action"),
    [
        (signal.SIGCHLD, True, False, SignalAction.REAP),
        (signal.SIGCHLD, False, False, SignalAction.REAP),
        (signal.SIGTERM, True, False, SignalAction.FORWARD_AND_START_GRACE),
        (signal.SIGINT, True, False, SignalAction.FORWARD_AND_START_GRACE),
        (signal.SIGTERM, True, True, SignalAction.FORWARD),  # a second SIGTERM: no new timer
        (signal.SIGHUP, True, False, SignalAction.FORWARD),
        (signal.SIGTSTP, True, False, SignalAction.FORWARD),
        (signal.SIGTTIN, True, False, SignalAction.FORWARD),
        (signal.SIGTTOU, True, False, SignalAction.FORWARD),
        (signal.SIGPIPE, True, False, SignalAction.FORWARD),
        (signal.SIGRTMIN + 3, True, False, SignalAction.FORWARD),
        (signal.SIGTERM, False, False, SignalAction.IGNORE),  # the app is gone: nobody to signal
        (signal.SIGUSR1, False, True, SignalAction.IGNORE),
    ],
)
def test_route_signal(
    signum: int, app_running: bool, grace_started: bool, action: SignalAction
) -> None:
    assert route_signal(signum, app_running=app_running, grace_started=grace_started) is action


def test_catchable_signals_are_1_to_31_and_the_realtime_range() -> None:
    expected = set(range(1, 32)) - {signal.SIGKILL, signal.SIGSTOP}
    expected |= set(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    assert catchable_signals() == expected
    assert not {32, 33} & catchable_signals()  # glibc's own


@pytest.mark.parametrize(
    ("wait_status", "code"),
    [
        (0, 0),
        (7 << 8, 7),
        (255 << 8, 255),
        (signal.SIGTERM, 143),
        (signal.SIGKILL, 137),
        (signal.SIGSEGV | 0x80, 139),  # core dumped
    ],
)
def test_status_code(wait_status: int, code: int) -> None:
    assert status_code(wait_status) == code


@pytest.mark.parametrize(
    ("code", "success", "final"),
    [(3, frozenset(), 3), (3, frozenset({3}), 0), (143, frozenset({143, 1}), 0), (0, {5}, 0)],
)
def test_final_exit_code(code: int, success: frozenset[int], final: int) -> None:
    assert final_exit_code(code, frozenset(success)) == final


@pytest.mark.parametrize(
    ("attempt", "jitter", "delay"),
    [(0, 0.0, 0.05), (0, 0.999999, 0.1), (1, 0.0, 0.1), (3, 0.5, 0.6), (6, 0.0, 2.5)],
)
def test_reconnect_delay(attempt: int, jitter: float, delay: float) -> None:
    assert reconnect_delay_s(attempt, jitter) == pytest.approx(delay, abs=1e-5)


def test_reconnect_delay_is_capped() -> None:
    assert reconnect_delay_s(10_000, 0.999) <= BACKOFF_CAP_S
    assert reconnect_delay_s(10_000, 0.0) == BACKOFF_CAP_S / 2


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("tcp://router:6001", "router", 6001, False),
        ("tls://logs.example.com:443/", "logs.example.com", 443, True),
        ("tcp://[::1]:6001", "::1", 6001, False),
        ("tcp://127.0.0.1:1", "127.0.0.1", 1, False),
    ],
)
def test_parse_router_url(url: str, host: str, port: int, tls: bool) -> None:
    address = parse_router_url(url)
    assert (address.host, address.port, address.tls) == (host, port, tls)


@pytest.mark.parametrize(
    "url",
    ["http://router:80", "router:6001", "tcp://router", "tcp://:6001", "tcp://r:0", "tcp://r:x"],
)
def test_parse_router_url_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="tcp://"):
        parse_router_url(url)


def test_options_defaults() -> None:
    options = parse_options(["--", "app", "-x"], {})
    assert options.command == ["app", "-x"]
    assert options.router is None
    assert options.tee
    assert not options.single_child
    assert not options.block
    assert (options.grace_s, options.flush_timeout_s) == (25.0, 3.0)
    assert (options.buffer_bytes, options.max_line_bytes) == (DEFAULT_BUFFER_BYTES, 10000)
    assert options.ps == os.uname().nodename
    assert options.success_codes == frozenset()


def test_options_from_the_environment(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("")
    environ = {
        "LOGPLEX_URL": "tls://router:6001",
        "LOGPLEX_TOKEN": "t.env",
        "LOGPLEX_CA_FILE": str(ca_file),
        "DYNO": "web.2",
        "LOGPLEX_PLATFORM_TOKEN": "t.platform",
        "LOGSHIM_TEE": "0",
        "LOGSHIM_GRACE": "7.5",
    }
    options = parse_options(["app"], environ)
    assert options.router is not None
    assert (options.router.host, options.router.tls) == ("router", True)
    assert (options.token, options.ca_file, options.ps) == ("t.env", str(ca_file), "web.2")
    assert options.platform_token == "t.platform"
    assert not options.tee
    assert options.grace_s == 7.5
    # LOGPLEX_PS wins over DYNO, flags win over the environment.
    assert parse_options(["app"], {**environ, "LOGPLEX_PS": "worker.1"}).ps == "worker.1"
    flagged = parse_options(["--ps", "run.1", "--token", "t.flag", "--grace", "1", "app"], environ)
    assert (flagged.ps, flagged.token, flagged.grace_s) == ("run.1", "t.flag", 1.0)


def test_options_flags() -> None:
    argv = "--single-child --no-tee --block --buffer-bytes 65536 -e 3 -e 143"
    argv += " --max-line-bytes 100 --flush-timeout 0.5 -- a --b"
    options = parse_options(argv.split(), {})
    assert options.single_child
    assert not options.tee
    assert options.block
    assert options.buffer_bytes == 65536
    assert options.success_codes == {3, 143}
    assert options.max_line_bytes == 100
    assert options.flush_timeout_s == 0.5
    assert options.command == ["a", "--b"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--"],
        ["--grace", "-1", "app"],
        ["--max-line-bytes", "3", "app"],
        ["--max-line-bytes", "10001", "app"],
        ["-e", "-1", "app"],
    ],
)
def test_option_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_options(argv, {})
    assert exited.value.code == 2
    assert "logshim: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("program", "errno_value", "code", "words"),
    [
        ("app", 2, EXIT_NOT_FOUND, "not found in PATH"),
        ("/bin/app", 2, EXIT_NOT_FOUND, "not found"),
        ("/bin/app", 13, EXIT_NOT_EXECUTABLE, "Permission denied"),
        ("/bin/app", 8, EXIT_NOT_EXECUTABLE, "Exec format error"),
    ],
)
def test_spawn_errors(program: str, errno_value: int, code: int, words: str) -> None:
    error = spawn_error(program, OSError(errno_value, os.strerror(errno_value)))
    assert error.exit_code == code
    assert words in error.message
    assert "\n" not in error.message


@pytest.mark.parametrize(
    ("argv", "environ", "words"),
    [
        (["--url", "tcp://r:1", "--", "app"], {}, "needs a channel token"),
        (["--url", "http://router:80", "--token", "t.x", "app"], {}, "--url: router URL"),
        (["app"], {"LOGPLEX_URL": "router:6001", "LOGPLEX_TOKEN": "t.x"}, "LOGPLEX_URL:"),
        (
            ["--url", "tls://r:1", "--ca-file", "/no/such/ca.pem", "app"],
            {"LOGPLEX_TOKEN": "t.x"},
            "'/no/such/ca.pem' is not a readable file",
        ),
        (["--url", "tcp://r:1", "--token-file", "/no/such/token", "app"], {}, "cannot read"),
    ],
)
def test_shipping_problems_leave_the_app_to_run(
    argv: list[str], environ: dict[str, str], words: str
) -> None:
    options = parse_options(argv, environ)
    assert options.command == ["app"]
    assert options.router is None  # supervise and tee only
    assert any(words in warning for warning in options.warnings), options.warnings
    assert all("\n" not in warning for warning in options.warnings)
    assert any("without shipping" in warning for warning in options.warnings)


def test_tokens_from_files_are_stripped(tmp_path: Path) -> None:
    token_file, platform_file = tmp_path / "token", tmp_path / "platform"
    token_file.write_text("  t.from-file\n")
    platform_file.write_text("t.platform-file\n\n")
    argv = ["--url", "tcp://r:1", "--token-file", str(token_file)]
    argv += ["--platform-token-file", str(platform_file), "app"]
    options = parse_options(argv, {})
    assert (options.token, options.platform_token) == ("t.from-file", "t.platform-file")
    assert options.router is not None
    assert options.warnings == ()
    environ = {
        "LOGPLEX_TOKEN_FILE": str(token_file),
        "LOGPLEX_PLATFORM_TOKEN_FILE": str(platform_file),
    }
    options = parse_options(["--url", "tcp://r:1", "app"], environ)
    assert (options.token, options.platform_token) == ("t.from-file", "t.platform-file")
    assert options.warnings == ()


@pytest.mark.parametrize(
    ("argv", "environ", "token"),
    [
        (["--token-file", "{file}"], {"LOGPLEX_TOKEN": "t.env"}, "t.file"),  # flags first
        ([], {"LOGPLEX_TOKEN": "t.env", "LOGPLEX_TOKEN_FILE": "{file}"}, "t.env"),
        ([], {"LOGPLEX_TOKEN_FILE": "{file}"}, "t.file"),
        (["--token", "t.argv", "--token-file", "{file}"], {}, "t.argv"),
    ],
)
def test_token_precedence(
    tmp_path: Path, argv: list[str], environ: dict[str, str], token: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t.file")
    argv = [arg.format(file=token_file) for arg in argv]
    environ = {name: value.format(file=token_file) for name, value in environ.items()}
    assert parse_options([*argv, "app"], environ).token == token


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"", "is empty"), (b" \n\t", "is empty"), (b"t.\xff", "non-ASCII"), (b"t" * 5000, "over")],
)
def test_unusable_token_files_are_reported(tmp_path: Path, content: bytes, words: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    options = parse_options(["--url", "tcp://r:1", "--token-file", str(token_file), "app"], {})
    assert options.token is None
    assert options.router is None
    assert any(words in warning and "--token-file" in warning for warning in options.warnings)


@pytest.mark.parametrize(
    ("argv", "warned"),
    [
        (["--token", "t.argv"], ["--token"]),
        (["--platform-token", "t.argv"], ["--platform-token"]),
        (["--token", "t.a", "--platform-token", "t.b"], ["--token", "--platform-token"]),
        ([], []),
    ],
)
def test_a_token_in_argv_is_warned_about_once(argv: list[str], warned: list[str]) -> None:
    options = parse_options([*argv, "app"], {"LOGPLEX_TOKEN": "t.env"})
    flags = [warning.split()[1] for warning in options.warnings]
    assert flags == warned
    assert all("/proc/PID/cmdline" in warning for warning in options.warnings)


def test_app_environment_leaves_out_the_shims_secrets() -> None:
    environ = {
        "LOGPLEX_TOKEN": "t.a",
        "LOGPLEX_TOKEN_FILE": "/run/token",
        "LOGPLEX_PLATFORM_TOKEN": "t.p",
        "LOGPLEX_PLATFORM_TOKEN_FILE": "/run/platform",
        "LOGPLEX_URL": "tcp://r:1",
        "LOGPLEX_PS": "web.1",
        "PATH": "/bin",
    }
    assert app_environment(environ) == {
        "LOGPLEX_URL": "tcp://r:1",
        "LOGPLEX_PS": "web.1",
        "PATH": "/bin",
    }


@pytest.mark.parametrize(
    ("ps", "valid"),
    [
        ("web.1", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("web 1", False),
        ("wéb.1", False),
        ("web\n1", False),
        ("run.\udcff", False),  # a non-UTF-8 byte from the environment
    ],
)
def test_check_ps_falls_back_to_the_hostname(ps: str, valid: bool) -> None:
    options = parse_options(["--ps", ps, "app"], {})
    warning = check_ps(options)
    if valid:
        assert (warning, options.ps, options.notices) == (None, ps, ())
        return
    assert options.ps == os.uname().nodename
    assert warning is not None
    assert "\n" not in warning
    assert options.notices == (warning,)
