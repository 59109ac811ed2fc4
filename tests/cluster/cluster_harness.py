"""What the cluster tests share: routers in the cluster mode, their API, who owns what."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "chaos"))

from chaos_harness import Router  # noqa: E402

PARTITIONS = 4
LEASE_TTL_S = 2.0
PAD = 40


def cluster_args(urls: list[str]) -> list[str]:
    return [
        "--nats",
        ",".join(urls),
        "--nats-partitions",
        str(PARTITIONS),
        "--nats-lease-ttl",
        str(LEASE_TTL_S),
    ]


def make_router(
    tmp_path: Path, name: str, env: dict[str, str], tls: Any, urls: list[str]
) -> Router:
    workdir = tmp_path / name
    workdir.mkdir()
    router = Router(workdir, env, tls, cluster_args(urls))
    router.name = name
    return router


async def put_channel(router: Router, name: str) -> dict[str, Any]:
    response = await router.api.put(f"/v3/channels/{name}", json={"tokens": ["app", "heroku"]})
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
