"""``logplex serve`` as a process: open-files limit, log lines, a broken drains package.

Each router here is a real subprocess; its stderr goes to a file (a flood of log lines must
never block it on a full pipe).
"""

from __future__ import annotations

import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from logplex.serve.limits import (
    API_AND_DRAINS_MIN_FDS,
    BASE_RESERVED_FDS,
    MAX_CONNECTIONS_PER_LISTENER,
    ingest_connection_cap,
)

pytestmark = pytest.mark.slow

LOGPLEX = str(Path(sys.executable).parent / "logplex")
PORTS0 = ("--http", "127.0.0.1:0", "--shim", "127.0.0.1:0", "--syslog", "127.0.0.1:0")
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEX_")}
    env.pop("PYTHONUNBUFFERED", None)
    return env


def open_files_limit(soft: int, hard: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


class Router:
    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.addresses: dict[str, str] = {}

    def read_listening(self, timeout_s: float = 30) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        pending = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while len(self.addresses) < 3:
                assert time.monotonic() < deadline, (pending, self.stderr())
                if not selector.select(deadline - time.monotonic()):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"the router exited: {pending!r} {self.stderr()}"
                pending += chunk
                for line in pending.decode().splitlines():
                    if line.startswith("listening "):
                        name, _, address = line.removeprefix("listening ").partition("=")
                        self.addresses[name] = address

    def host_port(self, name: str) -> tuple[str, int]:
        host, _, port = self.addresses[name].rpartition(":")
        return host, int(port)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextmanager
def router(
    tmp_path: Path,
    *args: str,
    preexec_fn: Callable[[], None] | None = None,
    process_group: int | None = None,
) -> Iterator[Router]:
    stderr_path = tmp_path / "router.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [LOGPLEX, "serve", "--data-dir", str(tmp_path / "d"), "--auth-key", "k", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(),
            preexec_fn=preexec_fn,
            process_group=process_group,
        )
    running = Router(proc, stderr_path)
    try:
        running.read_listening()
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def soft_open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


@pytest.mark.parametrize(
    ("limit", "cap"),
    [
        (1024, (1024 - BASE_RESERVED_FDS - 256) // 2),  # the common default soft limit
        (512, (512 - BASE_RESERVED_FDS - API_AND_DRAINS_MIN_FDS) // 2),
        (100, 1),  # too small to share: ingest still gets one connection
        (65536, MAX_CONNECTIONS_PER_LISTENER),
        (1 << 20, MAX_CONNECTIONS_PER_LISTENER),
    ],
)
def test_ingest_connection_cap_leaves_the_api_its_share(limit: int, cap: int) -> None:
    assert ingest_connection_cap(limit) == cap
    if cap > 1:
        assert 2 * cap <= limit - BASE_RESERVED_FDS - max(API_AND_DRAINS_MIN_FDS, limit // 4)


def test_soft_open_files_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    with router(tmp_path, *PORTS0, preexec_fn=open_files_limit(512, 4096)) as running:
        assert soft_open_files_limit(running.proc.pid) == 4096
        assert "open-files limit 4096 (raised from 512)" in running.stderr()


def test_idle_syslog_connections_beyond_the_limit_leave_healthcheck_answering(
    tmp_path: Path,
) -> None:
    """512 descriptors and nothing to raise them to: 600 idle syslog connections would
    use them all; the listener's cap keeps room for the API."""
    with (
        router(tmp_path, *PORTS0, preexec_fn=open_files_limit(512, 512)) as running,
        ExitStack() as connections,
    ):
        for _ in range(600):
            sock = connections.enter_context(socket.create_connection(running.host_port("syslog")))
            sock.settimeout(10)
        began = time.monotonic()
        with httpx.Client(timeout=5) as client:
            for _ in range(3):
                response = client.get(f"http://{running.addresses['http']}/healthcheck")
                assert response.status_code == 200
            assert time.monotonic() - began < 10
            # The kernel completes the handshakes; the router accepts (and refuses) them from
            # its backlog at its own pace, so count until every connection has been judged.
            expected = 600 - ingest_connection_cap(512)
            refused = 0.0
            deadline = time.monotonic() + 60
            while refused < expected and time.monotonic() < deadline:
                metrics = client.get(f"http://{running.addresses['http']}/metrics").text
                found = re.search(
                    r'logplex_ingest_errors_total\{protocol="syslog",reason="overloaded"\} (\S+)',
                    metrics,
                )
                refused = float(found[1]) if found else 0.0
                if refused < expected:
                    time.sleep(0.05)
        assert refused >= expected
    assert "connection(s) refused" in running.stderr()


def test_log_lines_carry_utc_timestamps_and_end_with_stopped(tmp_path: Path) -> None:
    with router(tmp_path, *PORTS0) as running:
        assert running.proc.stdout is not None
    assert running.proc.returncode == 0
    lines = running.stderr().splitlines()
    assert lines, "the router logged nothing"
    for line in lines:
        assert re.match(ISO_UTC + r" (INFO|WARNING|ERROR) \S+: ", line), line
    assert "Running on" not in running.stderr()  # hypercorn's line repeats `listening http=`
    assert lines[-2].endswith("SIGTERM: stopping")
    assert lines[-1].endswith("logplex.serve.wiring: stopped")


def test_listening_lines_on_stdout_are_unchanged(tmp_path: Path) -> None:
    with router(tmp_path, *PORTS0) as running:
        assert set(running.addresses) == {"http", "shim", "syslog"}
        for address in running.addresses.values():
            assert re.fullmatch(r"127\.0\.0\.1:\d+", address)


def test_a_broken_drains_package_is_not_swallowed(tmp_path: Path) -> None:
    """Drains that cannot be imported fail the start with the ImportError, instead of a
    router that stores drains and never starts them."""
    broken = tmp_path / "broken"
    (broken / "drains").mkdir(parents=True)
    (broken / "drains" / "__init__.py").write_text("raise ImportError('drains is broken here')\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(broken)!r}); import argparse; "
            "from logplex.serve import wiring; parser = argparse.ArgumentParser(); "
            "wiring.add_arguments(parser); sys.exit(wiring.main(parser.parse_args()))",
            "--data-dir",
            str(tmp_path / "d"),
            *PORTS0,
        ],
        capture_output=True,
        env=child_env(),
        timeout=30,  # a router that starts anyway runs until then, and fails the test
        check=False,
    )
    assert result.returncode != 0
    assert b"ImportError: drains is broken here" in result.stderr
    assert b"listening " not in result.stdout


def start_tail(running: Router, process_group: int | None = None) -> subprocess.Popen[bytes]:
    """``logplex tail -t`` on a new channel, once the router serves its live session."""
    api = f"http://{running.addresses['http']}"
    env = {**child_env(), "LOGPLEX_API_URL": api, "LOGPLEX_AUTH_KEY": "k"}
    subprocess.run([LOGPLEX, "channels", "create", "c"], env=env, check=True, capture_output=True)
    tail = subprocess.Popen(
        [LOGPLEX, "tail", "c", "-t"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        process_group=process_group,
    )
    deadline = time.monotonic() + 20
    while not re.search(r"^logplex_tail_sessions 1", httpx.get(f"{api}/metrics").text, re.M):
        assert time.monotonic() < deadline, "the tail never connected"
        time.sleep(0.05)
    return tail


def finish(tail: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    try:
        _, stderr = tail.communicate(timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    return tail.returncode, stderr


def test_a_tail_cut_by_a_router_shutdown_says_so_and_exits_1(tmp_path: Path) -> None:
    with router(tmp_path, *PORTS0) as running:
        tail = start_tail(running)
        running.proc.send_signal(signal.SIGTERM)
        status, stderr = finish(tail)
    assert status == 1
    assert b"the router closed the stream" in stderr
    assert b"run logplex tail again" in stderr


def test_ctrl_c_to_router_and_tail_together_exits_the_tail_0(tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole foreground group at once: however soon the
    router's shutdown cuts the stream, the tail stops on its own SIGINT, with status 0."""
    with router(tmp_path, *PORTS0, process_group=0) as running:
        tail = start_tail(running, process_group=running.proc.pid)
        os.killpg(running.proc.pid, signal.SIGINT)
        status, stderr = finish(tail)
    assert (status, stderr) == (0, b"")
