"""Tenant limits against a real ``logplex serve``, with the canary shim, tail and health
probe running beside the attack (tests/canary.py): 200 readers of one session URL, and
channels and tokens past their limits."""

from __future__ import annotations

import base64
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from canary import Canary

pytestmark = pytest.mark.slow

LOGPLEX = str(Path(sys.executable).with_name("logplex"))
KEY = "limits-test-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
MAX_CLIENTS = 4
MAX_CHANNELS = 5
MAX_TOKENS = 3
READERS = 200
HISTORY_LINE = "x" * 1000


@dataclass
class Router:
    api: str
    shim: str
    process: subprocess.Popen[bytes]
    canary_token: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers=ADMIN, timeout=30)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/PID/status")

    def refusals(self, limit: str) -> float:
        text = httpx.get(f"{self.api}/metrics", timeout=30).text
        prefix = f'logplex_limit_refusals_total{{limit="{limit}"}} '
        values = [
            float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)
        ]
        return values[0] if values else 0.0

    def create_channel(self, name: str, tokens: list[str]) -> httpx.Response:
        with self.client() as client:
            return client.put(f"/v3/channels/{name}", json={"tokens": tokens})


def _wait_listening(process: subprocess.Popen[bytes], stderr: Path) -> dict[str, str]:
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + 60
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while seen.count(b"listening ") < 3:
            assert time.monotonic() < deadline, stderr.read_text()
            if selector.select(1):
                chunk = os.read(process.stdout.fileno(), 4096)
                assert chunk, f"the router exited: {stderr.read_text()}"
                seen += chunk
    return dict(
        line.removeprefix("listening ").split("=", 1)
        for line in seen.decode().splitlines()
        if line.startswith("listening ")
    )


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    data = tmp_path_factory.mktemp("limits") / "data"
    stderr_path = data.parent / "router.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEX_")}
    env.pop("PYTHONUNBUFFERED", None)
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [
                *(LOGPLEX, "serve", "--data-dir", str(data), "--auth-key", KEY),
                *("--http", "127.0.0.1:0", "--shim", "127.0.0.1:0", "--syslog", "127.0.0.1:0"),
                *("--max-clients-per-session", str(MAX_CLIENTS)),
                *("--max-channels", str(MAX_CHANNELS)),
                *("--max-tokens-per-channel", str(MAX_TOKENS)),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        addresses = _wait_listening(process, stderr_path)
        api = f"http://{addresses['http']}"
        with httpx.Client(timeout=30) as probe:
            deadline = time.monotonic() + 30
            while probe.get(f"{api}/healthcheck").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        running = Router(api, addresses["shim"], process, "")
        created = running.create_channel("canary", ["app"])
        assert created.status_code == 201, created.text
        running.canary_token = created.json()["tokens"]["app"]
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        if process.stdout is not None:
            process.stdout.close()
    assert code == 0, stderr_path.read_text()
    assert "Traceback" not in stderr_path.read_text()


@contextmanager
def canary_beside(router: Router) -> Iterator[Canary]:
    """The canary, flowing, around an attack; it checks itself when the block ends."""
    with Canary(router.api, router.shim, router.canary_token, "canary", auth_key=KEY) as canary:
        canary.wait_for_lines(20)
        yield canary


def post_history(router: Router, token: str, count: int) -> None:
    """``count`` lines of 1 kB into the token's channel through ``POST /logs``."""
    frame = f"<134>1 2026-12-03T00:00:00+00:00 host app web.1 - {HISTORY_LINE}".encode()
    body = b"%d %s" % (len(frame), frame) * count
    auth = base64.b64encode(f"token:{token}".encode()).decode()
    response = httpx.post(
        f"{router.api}/logs",
        content=body,
        headers={"Content-Type": "application/logplex-1", "Authorization": f"Basic {auth}"},
        timeout=30,
    )
    assert response.status_code == 204, response.text


@dataclass
class Reader:
    status: int
    head: bytes
    body: bytes  # of an error answer; a 200's streamed body is not read
    stream: trio.SocketStream


async def open_reader(host: str, port: int, path: str) -> Reader:
    """A raw ``GET path``; returns once the head (and an error answer's body) arrived."""
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before the response head: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:  # an error answer: read its whole JSON body
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed inside the error body: {body!r}"
            body += chunk
    return Reader(status, head, body, stream)


async def hammer(url: str, readers: int, router: Router) -> tuple[list[Reader], int]:
    """Open ``readers`` GETs of ``url`` at once; the readers and the router's RSS while
    all of them are still connected."""
    parsed = httpx.URL(url)
    assert parsed.port is not None
    results: list[Reader] = []

    async def one() -> None:
        results.append(await open_reader(parsed.host, parsed.port, parsed.raw_path.decode()))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(readers):
                nursery.start_soon(one)
    return results, router.rss_bytes()


async def close_all(readers: list[Reader]) -> None:
    for reader in readers:
        await reader.stream.aclose()


def test_200_readers_of_one_session_url_get_429_past_the_limit(router: Router) -> None:
    created = router.create_channel("victim", ["app"])
    assert created.status_code == 201, created.text
    post_history(router, created.json()["tokens"]["app"], 1500)  # 1.5 MB of history
    with router.client() as client:
        session = client.post(
            "/v3/sessions", json={"channel_id": "victim", "tail": True, "num": 1500}
        )
        assert session.status_code == 201, session.text
    url = session.json()["url"]
    with canary_beside(router) as canary:
        rss_before = router.rss_bytes()
        refused_before = router.refusals("max_clients_per_session")
        readers, rss_during = trio.run(hammer, url, READERS, router)
        try:
            statuses = sorted(reader.status for reader in readers)
            assert statuses == [200] * MAX_CLIENTS + [429] * (READERS - MAX_CLIENTS)
            refused = next(reader for reader in readers if reader.status == 429)
            assert b"retry-after: 5" in refused.head.lower()
            assert b"client limit reached" in refused.body
            refusals = router.refusals("max_clients_per_session") - refused_before
            assert refusals == READERS - MAX_CLIENTS
            # Without the limit 200 fetches each held a copy of the 1.5 MB history (the
            # issue saw 384 MB for 1,000 readers); with it, the four that stream hold theirs.
            grown = rss_during - rss_before
            assert grown < 40 << 20, f"the router grew by {grown >> 20} MiB"
        finally:
            trio.run(close_all, readers)
        canary.wait_for_lines(len(canary.tail_lines) + 20)  # still flowing afterwards


def test_channels_and_tokens_past_their_limits_are_422_naming_the_flag(router: Router) -> None:
    with canary_beside(router):
        with router.client() as client:
            existing = len(client.get("/v3/channels").json())
        for n in range(MAX_CHANNELS - existing):
            assert router.create_channel(f"extra{n}", []).status_code == 201
        refused_before = router.refusals("max_channels")
        refused = router.create_channel("one-too-many", ["app"])
        assert refused.status_code == 422
        assert refused.json()["error"].startswith(
            f"channel limit reached: {MAX_CHANNELS} channels exist, the limit is "
            f"{MAX_CHANNELS} (--max-channels)"
        )
        assert router.refusals("max_channels") - refused_before == 1

        tokens_before = router.refusals("max_tokens_per_channel")
        too_many = router.create_channel("extra0", ["a", "b", "c", "d"])
        assert too_many.status_code == 422
        assert "(--max-tokens-per-channel)" in too_many.json()["error"]
        with router.client() as client:
            for name in ("a", "b", "c"):
                added = client.post("/v3/channels/extra0/tokens", json={"name": name})
                assert added.status_code == 201, added.text
            past = client.post("/v3/channels/extra0/tokens", json={"name": "d"})
            assert past.status_code == 422
            assert "the limit is 3 (--max-tokens-per-channel)" in past.json()["error"]
            assert sorted(client.get("/v3/channels/extra0").json()["tokens"]) == ["a", "b", "c"]
        assert router.refusals("max_tokens_per_channel") - tokens_before == 2
