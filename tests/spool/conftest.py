"""Helpers for the spool's process tests: a real ``logplex serve`` that can be killed and
started again on the same ports and data dir, and a real syslog TCP receiver."""

from __future__ import annotations

import base64
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from logplex.codecs.octet import OctetFrameDecoder

LOGPLEX = str(Path(sys.executable).parent / "logplex")
KEY = "spool-test-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEX_")}
    env.pop("PYTHONUNBUFFERED", None)
    return env


class Serve:
    """``logplex serve`` on fixed ports in ``data``; ``start``, ``kill`` (SIGKILL), ``stop``."""

    def __init__(
        self, data: Path, *args: str, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        self.data = data
        self.args = args
        self.preexec_fn = preexec_fn
        self.ports = {name: free_port() for name in ("http", "shim", "syslog")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def stderr(self) -> str:
        path = self.data.parent / f"{self.data.name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout_s: float = 60) -> None:
        self.starts += 1
        stderr = (self.data.parent / f"{self.data.name}.stderr").open("ab")
        self.proc = subprocess.Popen(
            [
                *(LOGPLEX, "serve", "--data-dir", str(self.data), "--auth-key", KEY),
                *("--http", f"127.0.0.1:{self.ports['http']}"),
                *("--shim", f"127.0.0.1:{self.ports['shim']}"),
                *("--syslog", f"127.0.0.1:{self.ports['syslog']}"),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(),
            preexec_fn=self.preexec_fn,
        )
        stderr.close()
        assert self.proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while seen.count(b"listening ") < 3:
                assert time.monotonic() < deadline, self.stderr()
                if selector.select(1):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    assert chunk, f"the router exited: {self.stderr()}"
                    seen += chunk

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._close()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self._close()
        return code

    def _close(self) -> None:
        assert self.proc is not None
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers=ADMIN, timeout=30)

    def create_channel(self, name: str) -> str:
        with self.client() as client:
            response = client.put(f"/v3/channels/{name}", json={"tokens": ["app"]})
            assert response.status_code == 201, response.text
            return str(response.json()["tokens"]["app"])

    def add_drain(self, channel: str, url: str) -> int:
        with self.client() as client:
            response = client.post(f"/v3/channels/{channel}/drains", json={"url": url})
            assert response.status_code == 201, response.text
            return int(response.json()["id"])

    def post_lines(self, token: str, texts: list[str]) -> None:
        frames = b""
        for text in texts:
            frame = f"<134>1 2026-12-03T00:00:00+00:00 host app web.1 - {text}".encode()
            frames += b"%d %s" % (len(frame), frame)
        auth = base64.b64encode(f"token:{token}".encode()).decode()
        response = httpx.post(
            f"{self.api}/logs",
            content=frames,
            headers={"Content-Type": "application/logplex-1", "Authorization": f"Basic {auth}"},
            timeout=30,
        )
        assert response.status_code == 204, response.text

    def history(self, channel: str, num: int = 1500) -> list[str]:
        with self.client() as client:
            response = client.get(f"/v3/channels/{channel}/logs", params={"num": num})
            assert response.status_code == 200, response.text
        return messages_of(response.content)

    def drain_status(self, channel: str) -> dict[str, object]:
        with self.client() as client:
            drains = client.get(f"/v3/channels/{channel}/drains").json()
        status: dict[str, object] = drains[0]["status"]
        return status

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.api}/metrics", timeout=30).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total


def messages_of(body: bytes) -> list[str]:
    decoder = OctetFrameDecoder(max_frame_bytes=1 << 20)
    decoder.feed(body)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame.rsplit(b" - ", 1)[1].decode().rstrip("\n"))
    return out


class SyslogReceiver:
    """A real TCP syslog receiver on a fixed port, collecting message texts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.texts: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connections: list[threading.Thread] = []
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._read, args=(conn,), daemon=True)
            thread.start()
            connections.append(thread)
        self._server.close()

    def _read(self, conn: socket.socket) -> None:
        decoder = OctetFrameDecoder(max_frame_bytes=1 << 20)
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    text = frame.split(b" - - ", 1)[1].decode().rstrip("\n")
                    with self._lock:
                        self.texts.append(text)

    def wait_for(self, count: int, timeout_s: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.texts) >= count:
                    return list(self.texts)
            time.sleep(0.05)
        with self._lock:
            return list(self.texts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.proc is not None:
            if serve.proc.poll() is None:
                serve.proc.kill()
                serve.proc.wait(30)
            if serve.proc.stdout is not None:
                serve.proc.stdout.close()
