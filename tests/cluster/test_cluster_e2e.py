"""The cluster mode end to end (DESIGN 10): real nats-server, real routers, shims and a sink.

Every piece is a real process: ``nats-server`` (tests/natsd.py), ``logplex serve --nats``,
``logshim`` around the chaos suite's numbered-line emitter, ``logplex sink`` over TLS as an
HTTPS drain, and live tails read over HTTP. What each output received is accounted with the
chaos suite's ``Tally`` (every line by its id and bytes; duplicates only under a Frame-Id
already seen for that line).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "chaos"))

from chaos_harness import (  # noqa: E402
    AUTH_KEY,
    Published,
    Shim,
    Sink,
    TailSession,
    child_env,
    https_tally,
    make_tls,
    open_tail,
    per_shim_in_order,
    tail_tally,
    wait_until,
)
from cluster_harness import (  # noqa: E402
    LEASE_TTL_S,
    PAD,
    PARTITIONS,
    add_drain,
    cluster_view,
    make_router,
    members_live,
    owner_of,
    partition_of,
    put_channel,
)
from natsd import NatsNode, start_cluster, start_node, wait_cluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.peer("nats-server")]


@pytest.fixture
def one_nats(tmp_path: Path) -> Iterator[NatsNode]:
    node = start_node(tmp_path / "nats")
    try:
        yield node
    finally:
        node.stop()


async def test_two_routers_share_config_traffic_tails_and_drains(
    tmp_path: Path, one_nats: NatsNode
) -> None:
    env = child_env(tmp_path)
    tls = make_tls(tmp_path)
    a = make_router(tmp_path, "a", env, tls, [one_nats.url])
    b = make_router(tmp_path, "b", env, tls, [one_nats.url])
    sink = Sink(tmp_path, env, tls)
    shims: list[Shim] = []
    try:
        await sink.start()
        await a.start()
        await b.start()
        # An API write on A is visible on B (through the config bucket's watch).
        created = await put_channel(a, "alpha")
        tokens = created["tokens"]

        async def on_b() -> bool:
            return (await b.api.get("/v3/channels/alpha")).status_code == 200

        await wait_until(on_b, "channel alpha on router B", 10)
        drain = await add_drain(b, "alpha", f"https://127.0.0.1:{sink.port}/logs")

        async def drain_on_a() -> bool:
            listed = (await a.api.get("/v3/channels/alpha/drains")).json()
            return any(d["id"] == drain["id"] for d in listed)

        await wait_until(drain_on_a, "the drain listed on router A", 10)
        view = await cluster_view(a)
        assert set(view["members"]) >= {view["member"]}
        await wait_until(
            lambda: members_live(a, 2), "both routers live in A's view", 15, poll_s=0.2
        )

        async with trio.open_nursery() as nursery:
            tail: TailSession = await open_tail(b, "alpha", nursery)
            shim = Shim(tmp_path, env, 1, f"tcp://127.0.0.1:{a.shim_port}", tokens, 300, PAD)
            shims.append(shim)
            await shim.start()
            await trio.sleep(3)
            count = await shim.finish()
            published = Published({1: count}, PAD)

            def sink_has_all() -> bool:
                return https_tally("https", published, sink.records(), drain["token"]).lost == 0

            await wait_until(sink_has_all, "every line at the HTTPS drain", 30)
            await wait_until(
                lambda: tail_tally("tail", published, tail).lost == 0, "every line at B's tail", 15
            )
            nursery.cancel_scope.cancel()

        delivered = https_tally("https", published, sink.records(), drain["token"])
        delivered.check_clean(duplicates_allowed=True)
        assert delivered.reported == 0, delivered.summary()
        tailed = tail_tally("tail", published, tail)
        tailed.check_clean(duplicates_allowed=False)
        assert per_shim_in_order(tail)
        # History is the owner's, served by either router.
        for router in (a, b):
            response = await router.api.get("/v3/channels/alpha/logs", params={"num": 5})
            assert response.status_code == 200
            assert response.headers["Logplex-Msg-Count"] == "5"
        # Health and the cluster view.
        assert (await b.api.get("/healthcheck")).status_code == 200
        view = await cluster_view(b)
        assert view["partitions"] == PARTITIONS
        owned = set((await cluster_view(a))["owned"]) | set(view["owned"])
        assert owned == set(range(PARTITIONS))
        # Any router tells the whole cluster: every partition with its owner and lag.
        for entry in view["partition_status"].values():
            assert entry["owner"] in view["members"], entry
            assert entry["lag_batches"] >= 0
            assert entry["lease_age_s"] >= 0
        per_member = [len(m["partitions"]) for m in view["members"].values()]
        assert sum(per_member) == PARTITIONS
        unauthorized = await a.api.get("/v3/cluster", headers={"Authorization": "Bearer no"})
        assert unauthorized.status_code == 401
        # ... and so does the CLI.
        result = await trio.run_process(
            [str(Path(sys.executable).with_name("logplex")), "cluster", "status"],
            env={
                **env,
                "LOGPLEX_API_URL": f"http://127.0.0.1:{b.http_port}",
                "LOGPLEX_AUTH_KEY": AUTH_KEY,
            },
            capture_stdout=True,
        )
        text = result.stdout.decode()
        assert f"{PARTITIONS} partitions" in text, text
        for member in view["members"]:
            assert member in text
        assert text.count("\n") >= 2 + len(view["members"]) + 1 + PARTITIONS
    finally:
        for process in (*shims, a, b, sink):
            if process.process is not None and process.alive():
                await process.stop()
        for router in (a, b):
            await router.api.aclose()


async def test_owner_sigkill_takeover_loses_nothing_and_repeats_frame_ids(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path / "nats", 3)
    env = child_env(tmp_path)
    tls = make_tls(tmp_path)
    urls = [node.url for node in nodes]
    routers = [make_router(tmp_path, f"r{i}", env, tls, urls) for i in range(3)]
    sink = Sink(tmp_path, env, tls)
    shims: list[Shim] = []
    try:
        wait_cluster(nodes)
        await sink.start()
        for router in routers:
            await router.start()
        await wait_until(lambda: members_live(routers[0], 3), "three live routers", 20, poll_s=0.2)
        tokens = (await put_channel(routers[0], "alpha"))["tokens"]
        drain = await add_drain(routers[1], "alpha", f"https://127.0.0.1:{sink.port}/logs")
        partition = partition_of("alpha")

        async def settled_owner() -> bool:
            return await owner_of(routers, partition) is not None

        await wait_until(settled_owner, "an owner for alpha's partition", 20, poll_s=0.2)
        victim = await owner_of(routers, partition)
        assert victim is not None
        others = [r for r in routers if r is not victim]
        # Shims on the routers that live on (a shim on the victim would reconnect too, but
        # its own loss window is the shim's business, tested elsewhere).
        for number, router in enumerate(others, 1):
            shim = Shim(
                tmp_path, env, number, f"tcp://127.0.0.1:{router.shim_port}", tokens, 200, PAD
            )
            shims.append(shim)
            await shim.start()
        await trio.sleep(2.5)
        killed_at = time.monotonic()
        await victim.kill()

        async def taken_over() -> bool:
            return await owner_of(others, partition) is not None

        await wait_until(taken_over, "a new owner of alpha's partition", LEASE_TTL_S + 10, 0.1)
        takeover_s = time.monotonic() - killed_at
        await trio.sleep(2.0)
        counts = {shim.number: await shim.finish() for shim in shims}
        published = Published(counts, PAD)

        def sink_has_all() -> bool:
            return https_tally("https", published, sink.records(), drain["token"]).lost == 0

        await wait_until(sink_has_all, "every line at the HTTPS drain after the takeover", 60)
        tally = https_tally("https", published, sink.records(), drain["token"])
        tally.check_clean(duplicates_allowed=True)
        assert tally.reported == 0, tally.summary()
        # Takeover within the lease TTL + 2 s (the new owner is visible in its view).
        assert takeover_s <= LEASE_TTL_S + 2 + 3, takeover_s  # + polling and a loaded machine
        # The victim comes back and the cluster goes on.
        await victim.start()
        await wait_until(lambda: members_live(others[0], 3), "the victim back", 20, poll_s=0.2)
    finally:
        for process in (*shims, *routers, sink):
            if process.process is not None and process.alive():
                await process.stop()
        for router in routers:
            await router.api.aclose()
        for node in nodes:
            node.stop()


async def test_healthcheck_says_503_while_nats_is_away(tmp_path: Path, one_nats: NatsNode) -> None:
    env = child_env(tmp_path)
    tls = make_tls(tmp_path)
    router = make_router(tmp_path, "a", env, tls, [one_nats.url])
    try:
        await router.start()

        async def status() -> int:
            try:
                return (await router.api.get("/healthcheck")).status_code
            except httpx.HTTPError:
                return -1

        assert await status() == 200
        one_nats.stop()

        async def unhealthy() -> bool:
            return await status() == 503

        await wait_until(unhealthy, "503 with NATS stopped", 15, poll_s=0.2)
        body = (await router.api.get("/healthcheck")).json()
        assert "NATS" in body["error"]

        async def metric_says_down() -> bool:
            return "logplex_cluster_connected 0.0" in (await router.api.get("/metrics")).text

        await wait_until(metric_says_down, "logplex_cluster_connected 0", 10, poll_s=0.2)
        one_nats.start()

        async def healthy() -> bool:
            return await status() == 200

        await wait_until(healthy, "200 with NATS back", 30, poll_s=0.2)
        router.check_alive()
        assert (await put_channel(router, "after"))["channel"] == "after"
    finally:
        if router.alive():
            await router.stop()
        await router.api.aclose()
