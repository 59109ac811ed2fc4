"""``logplex serve`` as a real subprocess: port 0 lines, env/TOML flags, auth key, SIGTERM."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trustme

from logplex.codecs import shimproto
from logplex.codecs.octet import encode_octet_frame
from logplex.serve.wiring import ServeConfigError, server_tls_context

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 20.0
LOGPLEX = str(Path(sys.executable).parent / "logplex")  # the console script


class RouterProcess:
    """``logplex serve`` in a child process, with the addresses it printed."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [LOGPLEX, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        self.lines: list[str] = []
        self.addresses: dict[str, str] = {}
        self.stderr_text = ""
        self._read_until_listening()

    def _read_until_listening(self) -> None:
        """Read stdout with a deadline until the three ``listening`` lines arrived."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        pending = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while len(self.addresses) < 3:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError(
                        f"no listening lines; stdout {self.lines!r} stderr {self.stderr_text!r}"
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 65536)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode()
                    self.lines.append(line)
                    if line.startswith("listening "):
                        name, _, address = line.removeprefix("listening ").partition("=")
                        self.addresses[name] = address
        os.set_blocking(fd, True)

    def host_port(self, name: str) -> tuple[str, int]:
        host, _, port = self.addresses[name].rpartition(":")
        return host, int(port)

    @property
    def api(self) -> str:
        return f"http://{self.addresses['http']}"

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        """Signal the router, wait for it, keep its stderr and close the pipes."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        if not self.proc.stderr.closed:
            self.stderr_text = self.proc.stderr.read().decode(errors="replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def stderr(self) -> str:
        return self.stderr_text


@pytest.fixture
def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEX_")}
    env.pop("PYTHONUNBUFFERED", None)  # the listening lines must be flushed explicitly
    return env


def ports0() -> list[str]:
    return ["--http", "127.0.0.1:0", "--shim", "127.0.0.1:0", "--syslog", "127.0.0.1:0"]


def send_syslog(router: RouterProcess, token: str, lines: list[bytes]) -> None:
    frames = b"".join(
        encode_octet_frame(
            b"<190>1 2026-11-27T20:39:33.123456+00:00 host %s web.1 - - %s" % (token.encode(), line)
        )
        for line in lines
    )
    with socket.create_connection(router.host_port("syslog")) as sock:
        sock.sendall(frames)


def create_channel(router: RouterProcess, key: str, name: str = "app1") -> str:
    response = httpx.put(
        f"{router.api}/v3/channels/{name}",
        json={"tokens": ["app"]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code in (200, 201), response.text
    token: str = response.json()["tokens"]["app"]
    return token


def wait_for_logs(router: RouterProcess, key: str, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(
            f"{router.api}/v3/channels/app1/logs",
            params={"num": "1000"},
            headers={"Authorization": f"Bearer {key}"},
        )
        lines = response.text.splitlines()
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_port_zero_lines_key_file_and_sigterm_exit_0(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    data_dir = tmp_path / "data"
    router = RouterProcess(["--data-dir", str(data_dir), *ports0()], child_env, tmp_path)
    try:
        assert set(router.addresses) == {"http", "shim", "syslog"}
        for name in ("http", "shim", "syslog"):
            host, port = router.host_port(name)
            assert host == "127.0.0.1"
            assert port > 0
        # The key is generated with mode 0600 and its path is printed.
        key_file = data_dir / "auth-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700  # a new data dir
        assert any(str(key_file.resolve()) in line for line in router.lines)
        assert httpx.get(f"{router.api}/healthcheck").status_code == 200
        key = key_file.read_text().strip()
        assert len(key) >= 32
    finally:
        assert router.stop() == 0
    # Second start: the same key is reused, not regenerated.
    again = RouterProcess(["--data-dir", str(data_dir), *ports0()], child_env, tmp_path)
    try:
        assert key_file.read_text().strip() == key
        assert (
            httpx.get(
                f"{again.api}/v3/channels", headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 200
        )
    finally:
        assert again.stop(signal.SIGINT) == 0


def test_env_and_toml_settings_with_flags_winning(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    config = tmp_path / "logplex.toml"
    config.write_text(
        'history = 3\nauth_key = "from-toml"\nshim = "127.0.0.1:0"\n'
        f'data-dir = "{tmp_path / "toml-data"}"\n'
    )
    env = {
        **child_env,
        "LOGPLEX_AUTH_KEY": "from-env",
        "LOGPLEX_SYSLOG": "127.0.0.1:0",
        "LOGPLEX_CONFIG": str(config),
    }
    router = RouterProcess(["--http", "127.0.0.1:0"], env, tmp_path)
    try:
        assert (tmp_path / "toml-data" / "config.sqlite3").exists()  # data-dir from TOML
        assert not (tmp_path / "toml-data" / "auth-key").exists()  # a key was given
        denied = httpx.get(
            f"{router.api}/v3/channels", headers={"Authorization": "Bearer from-toml"}
        )
        assert denied.status_code == 401  # env beats TOML
        token = create_channel(router, "from-env")
        send_syslog(router, token, [b"one", b"two", b"three", b"four", b"five"])
        lines = wait_for_logs(router, "from-env", 5)
        assert [line.rsplit(" ", 1)[-1] for line in lines] == ["three", "four", "five"]
    finally:
        assert router.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--history", "many"], "--history='many' is invalid"),
        (["--http", "localhost"], "is not HOST:PORT"),
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(
    tmp_path: Path, child_env: dict[str, str], args: list[str], message: str
) -> None:
    result = subprocess.run(
        [LOGPLEX, "serve", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        env=child_env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_sigterm_flushes_drains_within_the_grace(tmp_path: Path, child_env: dict[str, str]) -> None:
    sink_port = free_port()  # nothing listens yet: the drain retries
    router = RouterProcess(
        ["--data-dir", str(tmp_path / "d"), "--auth-key", "k", "--shutdown-grace", "15", *ports0()],
        child_env,
        tmp_path,
    )
    received = b""
    try:
        token = create_channel(router, "k")
        response = httpx.post(
            f"{router.api}/v3/channels/app1/drains",
            json={"url": f"syslog://127.0.0.1:{sink_port}"},
            headers={"Authorization": "Bearer k"},
        )
        assert response.status_code == 201, response.text
        lines = [b"flush me %d" % n for n in range(50)]
        send_syslog(router, token, lines)
        assert len(wait_for_logs(router, "k", 50)) == 50
        router.proc.send_signal(signal.SIGTERM)
        router.proc.send_signal(signal.SIGTERM)  # platform + supervisor: the same request twice
        time.sleep(0.5)
        assert router.proc.poll() is None  # still flushing: the drain holds 50 messages
        with socket.create_server(("127.0.0.1", sink_port)) as server:
            server.settimeout(15)
            conn, _ = server.accept()
            with conn:
                conn.settimeout(15)
                while received.count(b"\n") < 50:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                assert router.proc.wait(15) == 0
    finally:
        router.stop()
    assert [frame.rsplit(b" - - ", 1)[-1] for frame in received.splitlines()] == lines


@pytest.mark.parametrize("flag", ["--http", "--shim", "--syslog"])
def test_busy_port_exits_2_naming_the_flag(
    tmp_path: Path, child_env: dict[str, str], flag: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [LOGPLEX, "serve", "--data-dir", str(tmp_path), *ports0(), flag, f"127.0.0.1:{port}"],
            capture_output=True,
            env=child_env,
            timeout=30,
            check=False,
        )
    assert result.returncode == 2
    assert f"cannot listen on {flag} 127.0.0.1:{port}" in result.stderr.decode()


def test_tls_flags_make_shim_and_syslog_speak_tls(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)  # the router refuses a key file others can read
    router = RouterProcess(
        [
            "--data-dir",
            str(tmp_path / "d"),
            "--auth-key",
            "k",
            *ports0(),
            "--tls-cert",
            str(cert_file),
            "--tls-key",
            str(key_file),
        ],
        child_env,
        tmp_path,
    )
    try:
        token = create_channel(router, "k")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with (
            socket.create_connection(router.host_port("syslog")) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(
                encode_octet_frame(
                    b"<190>1 2026-11-27T20:39:33.123456+00:00 host %s web.1 - - over tls"
                    % token.encode()
                )
            )
        assert wait_for_logs(router, "k", 1)[-1].endswith("over tls")
        with (
            socket.create_connection(router.host_port("shim")) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(shimproto.encode_hello(token, "web.1", "tls-stream", "test"))
            decoder = shimproto.ShimFrameDecoder(1 << 20)
            tls.settimeout(10)
            while (event := decoder.next_event()) is None:
                decoder.feed(tls.recv(65536))
            assert isinstance(event, shimproto.Ready)
    finally:
        assert router.stop() == 0


def test_unreadable_tls_files_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServeConfigError, match="cannot load --tls-cert"):
        server_tls_context(tmp_path / "missing.pem", tmp_path / "missing.key")


def test_sigint_after_sigterm_stops_waiting_for_drains(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    router = RouterProcess(
        ["--data-dir", str(tmp_path / "d"), "--auth-key", "k", "--shutdown-grace", "60", *ports0()],
        child_env,
        tmp_path,
    )
    try:
        token = create_channel(router, "k")
        response = httpx.post(
            f"{router.api}/v3/channels/app1/drains",
            json={"url": f"syslog://127.0.0.1:{free_port()}"},  # never answers
            headers={"Authorization": "Bearer k"},
        )
        assert response.status_code == 201, response.text
        send_syslog(router, token, [b"stuck"])
        assert len(wait_for_logs(router, "k", 1)) == 1
        router.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert router.proc.poll() is None  # waiting for the drain, up to 60 s
        began = time.monotonic()
        router.proc.send_signal(signal.SIGINT)
        assert router.proc.wait(15) == 0
        assert time.monotonic() - began < 10
    finally:
        router.stop()
