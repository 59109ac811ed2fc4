"""Test harness for the control plane: the real API app on hypercorn, on a loopback port.

``running_api`` opens a ``ConfigStore`` in a temporary directory, a real ``Router`` (with
drains configured but not started unless a factory is given), serves ``create_app`` with
hypercorn's trio worker on ``127.0.0.1:0``, and yields an ``ApiHarness`` with the base URL
and an ``httpx.AsyncClient`` that speaks to it over real sockets.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import h11
import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from processes import read_listening

from drains import parse_drain_url
from logplex.api.app import create_app
from logplex.api.base import ApiConfig, ApiState
from logplex.api.sessions import IDLE_READER_TIMEOUT_S, drop_connections_that_stop_reading
from logplex.config.store import ConfigStore
from logplex.fanout.router import Router

AUTH_KEY = "test-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {AUTH_KEY}"}


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@dataclass
class ApiHarness:
    base_url: str
    client: httpx.AsyncClient
    router: Router
    store: ConfigStore
    state: ApiState
    app_state: object

    def set_ready(self, ready: bool) -> None:
        self.app_state.ready = ready  # type: ignore[attr-defined]

    async def create_channel(self, name: str, tokens: list[str]) -> dict[str, object]:
        response = await self.client.put(
            f"/v3/channels/{name}", json={"tokens": tokens}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        body: dict[str, object] = response.json()
        return body


class ServerErrors(logging.Handler):
    """Collects what hypercorn logs at ERROR and above (exceptions escaping the app)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self.logger = logging.getLogger(f"tests.controlplane.hypercorn.{id(self)}")
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))

    def close(self) -> None:
        self.logger.removeHandler(self)
        super().close()


@asynccontextmanager
async def running_api(
    tmp_path: Path,
    *,
    router: Router | None = None,
    max_drains_per_channel: int = 6,
    validate_drain_url: Callable[[str], None] | None = parse_drain_url,
    ready: bool = True,
    unread_output_timeout_s: float = IDLE_READER_TIMEOUT_S,
) -> AsyncIterator[ApiHarness]:
    store = await ConfigStore.open(tmp_path / "config.sqlite3")
    router = router if router is not None else Router()
    config = ApiConfig(
        auth_key=AUTH_KEY,
        public_url="http://placeholder",
        max_drains_per_channel=max_drains_per_channel,
        validate_drain_url=validate_drain_url,
    )
    app = create_app(store=store, router=router, config=config)
    # Bound here, like serve does, so the listener carries the stalled-reader timeout.
    listener = socket.create_server(("127.0.0.1", 0))
    drop_connections_that_stop_reading(listener, unread_output_timeout_s)
    hyper = HypercornConfig()
    hyper.bind = [f"fd://{listener.detach()}"]
    hyper.accesslog = None
    server_errors = ServerErrors()
    hyper.errorlog = server_errors.logger
    hyper.graceful_timeout = 0.1
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(router.run)
            binds: list[str] = await nursery.start(serve, app, hyper)
            base_url = binds[0]
            state: ApiState = app.state.api
            # Like serve, the app learns the address it listens on only once bound.
            listening = ("http", base_url.removeprefix("http://"))
            state.config = dataclasses.replace(
                config, public_url=base_url, listen_addresses=(listening,)
            )
            app.state.ready = ready
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                yield ApiHarness(base_url, client, router, store, state, app.state)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()
        server_errors.close()
    # Any exception the app raised (hypercorn logs it and answers 500) fails the test.
    assert server_errors.records == [], server_errors.records


class StreamingGet:
    """A GET whose body is read piece by piece over a raw socket, parsed with h11.

    httpx's streaming iterators are nested async generators that warn when a test stops
    reading mid-body; a tail test does exactly that, so it reads through this instead.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._conn = h11.Connection(h11.CLIENT)
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.received = b""
        self.ended = False

    @classmethod
    async def open(cls, url: str) -> StreamingGet:
        parsed = httpx.URL(url)
        assert parsed.port is not None
        stream = await trio.open_tcp_stream(parsed.host, parsed.port)
        self = cls(stream)
        target = parsed.raw_path.decode()
        request = h11.Request(method="GET", target=target, headers=[("Host", parsed.host)])
        await stream.send_all(self._conn.send(request) + self._conn.send(h11.EndOfMessage()))
        while self.status is None:
            await self._next()
        return self

    async def _next(self) -> None:
        event = self._conn.next_event()
        while event is h11.NEED_DATA:
            data = await self._stream.receive_some(65536)
            self._conn.receive_data(data)
            if not data:
                raise EOFError(f"connection closed after {len(self.received)} body bytes")
            event = self._conn.next_event()
        if isinstance(event, h11.Response):
            self.status = event.status_code
            self.headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            self.received += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            self.ended = True

    async def read_until(self, expected: bytes, timeout_s: float = 10) -> None:
        """Read until ``expected`` bytes arrived, then check they are exactly ``expected``."""
        with trio.fail_after(timeout_s):
            while len(self.received) < len(expected) and not self.ended:
                await self._next()
        assert self.received == expected, (self.received[:300], expected[:300])

    async def read_more(self) -> None:
        """Wait for the next piece of the response."""
        await self._next()

    async def read_to_end(self, timeout_s: float = 10) -> bytes:
        with trio.fail_after(timeout_s):
            while not self.ended:
                await self._next()
        return self.received

    async def aclose(self) -> None:
        await self._stream.aclose()


LOGPLEX = str(Path(sys.executable).with_name("logplex"))
LOGSHIM = str(Path(sys.executable).with_name("logshim"))
SERVE_ON_FREE_PORTS = ("--http", "127.0.0.1:0", "--shim", "127.0.0.1:0", "--syslog", "127.0.0.1:0")


@dataclass
class ServeProcess:
    """A running ``logplex serve``: its addresses and an environment for CLI calls."""

    http_url: str
    shim_address: str
    syslog_address: str
    data_dir: Path
    env: dict[str, str]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without LOGPLEX_* settings and without PYTHONUNBUFFERED."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEX_")}
    env.pop("PYTHONUNBUFFERED", None)
    env["LOGPLEX_DATA_DIR"] = str(tmp_path / "data")
    return env


@asynccontextmanager
async def logplex_serve(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    """``logplex serve`` on loopback port 0; yields once ``/healthcheck`` answers 200.

    On exit it sends SIGTERM and checks the router exits 0 (DESIGN 2, graceful stop).
    """
    env = clean_env(tmp_path)
    process = await trio.lowlevel.open_process(
        [LOGPLEX, "serve", *SERVE_ON_FREE_PORTS],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    try:
        addresses = await read_listening(process.stdout, 3)
        http_url = f"http://{addresses['http']}"
        async with httpx.AsyncClient() as client:
            with trio.fail_after(10):
                while (await client.get(f"{http_url}/healthcheck")).status_code != 200:
                    await trio.sleep(0.05)
        yield ServeProcess(
            http_url,
            addresses["shim"],
            addresses["syslog"],
            tmp_path / "data",
            {**env, "LOGPLEX_API_URL": http_url},
        )
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            status = await process.wait()
        await process.stdout.aclose()
    assert status == 0
