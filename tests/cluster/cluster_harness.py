"""What the cluster tests share: routers in the cluster mode, their API, who owns what."""

from __future__ import annotations

import contextvars
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import h11
import httpx
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "chaos"))

from chaos_harness import HttpFront, Router, TlsFiles  # noqa: E402

PARTITIONS = 4
LEASE_TTL_S = 2.0
PAD = 40


def cluster_args(urls: list[str], partitions: int = PARTITIONS) -> list[str]:
    return [
        "--nats",
        ",".join(urls),
        "--nats-partitions",
        str(partitions),
        "--nats-lease-ttl",
        str(LEASE_TTL_S),
    ]


def make_router(
    tmp_path: Path,
    name: str,
    env: dict[str, str],
    tls: Any,
    urls: list[str],
    partitions: int = PARTITIONS,
) -> Router:
    workdir = tmp_path / name
    workdir.mkdir()
    router = Router(workdir, env, tls, cluster_args(urls, partitions))
    router.name = name
    return router


async def put_channel(router: Router, name: str) -> dict[str, Any]:
    """Create the channel; a 503 (NATS still electing leaders) is tried again, as a client
    following ``Retry-After`` would."""
    for _ in range(20):
        response = await router.api.put(f"/v3/channels/{name}", json={"tokens": ["app", "heroku"]})
        if response.status_code != 503:
            break
        await trio.sleep(float(response.headers.get("Retry-After", "1")))
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def add_drain(router: Router, channel: str, url: str) -> dict[str, Any]:
    response = await router.api.post(f"/v3/channels/{channel}/drains", json={"url": url})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def cluster_view(router: Router) -> dict[str, Any]:
    response = await router.api.get("/v3/cluster")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def owner_of(routers: list[Router], partition: int) -> Router | None:
    for router in routers:
        if not router.alive():
            continue
        try:
            view = await cluster_view(router)
        except (httpx.HTTPError, AssertionError):
            continue
        if partition in view["owned"]:
            return router
    return None


def partition_of(channel: str) -> int:
    from logplex.cluster.names import partition_of as place

    return place(channel, PARTITIONS)


async def members_live(router: Router, count: int) -> bool:
    view = await cluster_view(router)
    return sum(1 for m in view["members"].values() if m.get("live")) >= count


# -- who sent a post ---------------------------------------------------------------------


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the loopback TCP socket from ``local_port`` to ``remote_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
            ):
                return inode
    return None


def pid_of_connection(peer_port: int, our_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the client end of a connection to us from ``peer_port``."""
    inode = _socket_inode(peer_port, our_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    if os.readlink(fd) == wanted:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


@dataclass(frozen=True, slots=True)
class AttributedPost:
    at_wall_s: float
    pid: int | None
    frame_id: str
    msg_count: int


class AttributingFront(HttpFront):
    """An ``HttpFront`` that also records which process sent each post, and when (wall
    clock): fencing shows in who posts while the lease is someone else's."""

    def __init__(self, tls: TlsFiles, upstream_port: int, pids: Callable[[], list[int]]) -> None:
        super().__init__(tls, upstream_port)
        self._pids = pids
        self.attributed: list[AttributedPost] = []
        self._peer_pid: dict[int, int | None] = {}

    async def _serve(self, tcp: trio.SocketStream) -> None:
        peer_port = tcp.socket.getpeername()[1]
        self._peer_pid[peer_port] = pid_of_connection(peer_port, self.port, self._pids())
        current.set(peer_port)
        await super()._serve(tcp)

    async def _answer(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.attributed.append(
            AttributedPost(
                time.time(),
                self._peer_pid.get(current.get()),
                headers.get("logplex-frame-id", ""),
                int(headers.get("logplex-msg-count", "0")),
            )
        )
        return await super()._answer(request, body)


current: contextvars.ContextVar[int] = contextvars.ContextVar("peer_port", default=0)


def log_times(text: str, pattern: str) -> list[float]:
    """Wall-clock times of the router log lines matching ``pattern``."""
    times = []
    for line in text.splitlines():
        if re.search(pattern, line):
            stamp = line.split(" ", 1)[0]
            try:
                times.append(datetime.fromisoformat(stamp).timestamp())
            except ValueError:
                continue
    return times
