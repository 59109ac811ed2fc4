"""Chaos for the cluster mode: 3 nats-server nodes, 3 routers, shims on every router.

One run, faults one after another, every output accounted at the end (DESIGN 8 and 10):

1. SIGKILL the owner of a busy partition (alpha's): another router takes it over within the
   lease TTL + 2 s (polling slack added), and the killed router comes back (same data dir:
   the same member, so it gets its partitions back through a clean hand-off).
2. SIGSTOP the owner of beta's partition past its lease TTL, then SIGCONT, with the receiver
   answering 503 around the pause (so the owner is retrying when it stops): another router
   takes beta over meanwhile, and the paused one sends no post — not even the retry due at
   its wake-up — until it holds a lease again (fencing). Posts are attributed to the
   process that sent them (``AttributingFront`` maps each connection to its pid).
3. SIGKILL one NATS node, then start it again: nothing acknowledged is lost.
4. Restart every router (SIGTERM, start): history and drains continue.

At the end: every HTTPS drain got every line (zero lost, nothing reported), duplicates only
under the Frame-Id the line first came with; the live tail (on the router no fault touches
until step 4) got each line of its span at most once and in order, and every line of the span
it did not get is counted in an L11 (a takeover's backlog reaches tails as one burst; a tail
buffer holds 1,024 messages, drop-oldest, DESIGN 8).
"""

from __future__ import annotations

import base64
import signal
import sys
import time
from pathlib import Path

import pytest
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "chaos"))

from chaos_harness import (  # noqa: E402
    APP_LINE,
    Published,
    Router,
    Shim,
    Sink,
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
    AttributingFront,
    add_drain,
    cluster_view,
    log_times,
    make_router,
    members_live,
    owner_of,
    put_channel,
)
from natsd import start_cluster, wait_cluster  # noqa: E402

from logplex.cluster.names import partition_of, rendezvous_owner  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.peer("nats-server")]

PARTITIONS = 8  # over three routers each owns some (all to one is 1 in 2,000)
RATE = 120  # lines per second per shim
CANDIDATES = ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota")


def pids(routers: list[Router]) -> list[int]:
    return [r.process.pid for r in routers if r.process is not None and r.alive()]


async def owners(routers: list[Router]) -> dict[int, Router]:
    found: dict[int, Router] = {}
    for router in routers:
        for partition in (await cluster_view(router))["owned"]:
            found[partition] = router
    return found


async def test_cluster_chaos_loses_nothing(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path / "nats", 3)
    env = child_env(tmp_path)
    tls = make_tls(tmp_path)
    urls = [node.url for node in nodes]
    routers = [make_router(tmp_path, f"r{i}", env, tls, urls, PARTITIONS) for i in range(3)]
    sink = Sink(tmp_path, env, tls)
    front = AttributingFront(tls, sink.port, lambda: pids(routers))
    shims: list[Shim] = []
    try:
        wait_cluster(nodes)
        await sink.start()
        for router in routers:
            await router.start()
        await wait_until(lambda: members_live(routers[0], 3), "three routers", 30, poll_s=0.2)

        async def settled() -> bool:
            # Every partition held by the member rendezvous hashing gives it.
            members = sorted((await cluster_view(routers[0]))["members"])
            found = await owners(routers)
            if len(found) != PARTITIONS:
                return False
            for partition, router in found.items():
                member = (await cluster_view(router))["member"]
                if rendezvous_owner(partition, members) != member:
                    return False
            return True

        await wait_until(settled, "every partition with its owner", 30, poll_s=0.2)
        owned = await owners(routers)
        # alpha and beta on partitions of two different owners; the tail on the third.
        alpha = CANDIDATES[0]
        victim1 = owned[partition_of(alpha, PARTITIONS)]
        beta = next(
            (c for c in CANDIDATES[1:] if owned[partition_of(c, PARTITIONS)] is not victim1),
            CANDIDATES[1],
        )
        victim2 = owned[partition_of(beta, PARTITIONS)]
        tail_router = next(r for r in routers if r is not victim1 and r is not victim2)

        async with trio.open_nursery() as nursery:
            await nursery.start(front.run)
            tokens = {}
            drains = {}
            for channel in (alpha, beta):
                tokens[channel] = (await put_channel(routers[0], channel))["tokens"]
                drain = await add_drain(routers[2], channel, f"https://127.0.0.1:{front.port}/logs")
                drains[channel] = drain
            tail = await open_tail(tail_router, alpha, nursery)
            # Shims 1-3 write alpha through each router, shim 4 beta through the tail's.
            plan = [(1, alpha, routers[0]), (2, alpha, routers[1]), (3, alpha, routers[2])]
            plan.append((4, beta, tail_router))
            for number, channel, router in plan:
                url = f"tcp://127.0.0.1:{router.shim_port}"
                shim = Shim(tmp_path, env, number, url, tokens[channel], RATE, PAD)
                shims.append(shim)
                await shim.start()
            await trio.sleep(3)

            # 1. SIGKILL alpha's owner.
            killed_at = time.monotonic()
            await victim1.kill()
            others = [r for r in routers if r is not victim1]

            async def alpha_taken() -> bool:
                return await owner_of(others, partition_of(alpha, PARTITIONS)) is not None

            await wait_until(alpha_taken, "alpha's partition taken over", LEASE_TTL_S + 15, 0.1)
            takeover_s = time.monotonic() - killed_at
            await trio.sleep(1.5)
            await victim1.start()
            await wait_until(lambda: members_live(victim2, 3), "victim1 back", 30, poll_s=0.2)
            await trio.sleep(2)

            # 2. SIGSTOP beta's owner past its lease, then SIGCONT.
            beta_partition = partition_of(beta, PARTITIONS)
            victim2 = await owner_of(routers, beta_partition) or victim2
            assert victim2.process is not None
            victim2_pid = victim2.process.pid
            # The receiver answers 503 from just before the pause to after it: the paused
            # owner is retrying a post when it stops, and its retry is due the moment it
            # wakes; fencing must hold that retry back too.
            front.set_mode("5xx")
            await trio.sleep(1.0)
            stopped_wall = time.time()
            victim2.process.send_signal(signal.SIGSTOP)
            rest = [r for r in routers if r is not victim2]

            async def beta_taken() -> bool:
                return await owner_of(rest, beta_partition) is not None

            await wait_until(beta_taken, "beta's partition taken over", LEASE_TTL_S + 15, 0.1)
            await trio.sleep(1.5)
            resumed_wall = time.time()
            victim2.process.send_signal(signal.SIGCONT)

            async def beta_owned() -> bool:
                return await owner_of(routers, beta_partition) is not None

            await wait_until(beta_owned, "beta owned", 30, 0.2)
            await trio.sleep(2)
            front.set_mode("proxy")
            await trio.sleep(2)

            # 3. SIGKILL one NATS node, then start it again.
            nodes[1].kill()
            await trio.sleep(3)
            await trio.to_thread.run_sync(nodes[1].start)
            await trio.to_thread.run_sync(wait_cluster, nodes)
            await trio.sleep(1)

            # 4. Restart every router. A quiet channel gets ten lines just before: its
            # history must come back from the stream.
            quiet_token = (await put_channel(routers[0], "quiet"))["tokens"]["app"]
            body = b"".join(_frame(quiet_token, f"quiet line {n}") for n in range(10))
            posted = await routers[0].api.post(  # the writer: read-your-writes
                "/logs",
                content=body,
                headers={
                    "Content-Type": "application/logplex-1",
                    "Logplex-Msg-Count": "10",
                    "Authorization": "Basic "
                    + base64.b64encode(f"token:{quiet_token}".encode()).decode(),
                },
            )
            assert posted.status_code == 204, posted.text
            before_restart = {
                shim.number: _max_counter(sink, drains[alpha]["token"], shim.number)
                for shim in shims[:3]
            }
            for router in routers:
                await router.stop()
            for router in routers:
                await router.start()
            await wait_until(lambda: members_live(routers[0], 3), "routers back", 30, 0.2)
            await trio.sleep(2)
            counts = {shim.number: await shim.finish(timeout_s=90) for shim in shims}
            # The receiver's front lives in this nursery: wait for the drains inside it.
            for channel, numbers in ((alpha, (1, 2, 3)), (beta, (4,))):
                published = Published({n: counts[n] for n in numbers}, PAD)
                token = drains[channel]["token"]

                def complete(
                    published: Published = published, token: str = token, name: str = channel
                ) -> bool:
                    return https_tally(name, published, sink.records(), token).lost == 0

                await wait_until(complete, f"every line of {channel} at its drain", 90)
            nursery.cancel_scope.cancel()

        # Every drain: nothing lost, nothing reported, duplicates only as replays.
        for channel, numbers in ((alpha, (1, 2, 3)), (beta, (4,))):
            published = Published({n: counts[n] for n in numbers}, PAD)
            token = drains[channel]["token"]
            tally = https_tally(channel, published, sink.records(), token)
            tally.check_clean(duplicates_allowed=True)
            assert tally.reported == 0, (channel, tally.summary())

        # Takeover after the SIGKILL within the lease TTL + 2 s (+ polling on a busy machine).
        assert takeover_s <= LEASE_TTL_S + 2 + 3, takeover_s

        # Fencing: the paused owner sent nothing from its wake-up until it held a lease again.
        stderr = victim2.stderr_text()
        assert log_times(stderr, r"lease (not renewed in time|taken by another router)"), stderr[
            -3000:
        ]
        reacquired = [t for t in log_times(stderr, r"lease acquired") if t > resumed_wall]
        fenced_until = min(reacquired) if reacquired else float("inf")
        stale = [
            post
            for post in front.attributed
            if post.pid == victim2_pid and resumed_wall <= post.at_wall_s < fenced_until
        ]
        assert not stale, f"posts from the paused owner after it lost its lease: {stale[:3]}"
        delivered_meanwhile = [
            post
            for post in front.attributed
            if post.pid not in (victim2_pid, None) and stopped_wall < post.at_wall_s < resumed_wall
        ]
        assert delivered_meanwhile, "nobody delivered while the owner was paused"

        # History survived the restart of every router.
        response = await routers[1].api.get(f"/v3/channels/{alpha}/logs", params={"num": 1500})
        assert response.status_code == 200
        assert int(response.headers["Logplex-Msg-Count"]) > 0
        # The quiet channel's lines, written before the restart, came back from the stream.
        for router in routers:
            quiet = await router.api.get("/v3/channels/quiet/logs", params={"num": 100})
            assert quiet.status_code == 200
            assert quiet.headers["Logplex-Msg-Count"] == "10", quiet.text
            assert all(f"quiet line {n}" in quiet.text for n in range(10)), quiet.text
        # The tail, over its span (from before the first line to the routers' restart): each
        # line once, each shim in order, and every line of the span delivered or counted in
        # an L11 (a takeover's backlog arrives as a burst, and a tail's buffer is 1,024
        # messages, drop-oldest: DESIGN 8).
        assert per_shim_in_order(tail)
        tailed = tail_tally("tail", Published(counts, PAD), tail)
        assert not tailed.strays, tailed.strays[:3]
        assert not tailed.bad_bytes, tailed.bad_bytes[:3]
        assert tailed.duplicated == 0, tailed.summary()
        seen: dict[int, list[int]] = {}
        for source, _ps, msg in tail.received:
            app = APP_LINE.fullmatch(msg)
            if app and source == "app":
                seen.setdefault(int(app.group(1)), []).append(int(app.group(2)))
        missing = 0
        for number in (1, 2, 3):
            got = seen.get(number, [])
            assert got, f"the tail saw nothing of shim {number}"
            assert got[0] == 0 or tailed.reported, f"shim {number}: the tail began at {got[0]}"
            missing += got[-1] + 1 - len(got)
            assert len(got) >= before_restart[number] * 0.5, (len(got), before_restart[number])
        assert missing <= tailed.reported, (
            f"{missing} lines missing inside the tail's span, {tailed.reported} reported (L11)"
        )
    finally:
        for process in (*shims, *routers, sink):
            if process.process is not None and process.alive():
                if process.process.poll() is None:
                    process.process.send_signal(signal.SIGCONT)
                await process.stop()
        for router in routers:
            await router.api.aclose()
        for node in nodes:
            node.stop()


def _frame(token: str, msg: str) -> bytes:
    payload = f"<190>1 2026-12-04T19:00:00.000000+00:00 host {token} web.9 - - {msg}".encode()
    return b"%d %b" % (len(payload), payload)


def _max_counter(sink: Sink, token: str, shim: int) -> int:
    best = 0
    for record in sink.records():
        if record["drain_token"] != token:
            continue
        app = APP_LINE.fullmatch(record["msg"])
        if app and int(app.group(1)) == shim:
            best = max(best, int(app.group(2)))
    return best
