"""Chaos: the whole pipeline as real processes, with faults injected, accounted per output.

Three ``logshim`` processes (``.venv/bin/logshim``) run ``chaos_emitter.py`` (numbered lines,
each with a unique id ``s{shim} n{counter}`` and bytes derived from it) and ship through a
TCP proxy of ours (``CutProxy``) to ``logplex serve``. Channel ``alpha`` (shims 1 and 2) has
an HTTPS drain through ``HttpFront`` (TLS + h11) to ``logplex sink`` and a syslog drain to a
real ``rsyslogd`` (imptcp, ``omfile``); channel ``beta`` (shim 3) has an HTTPS drain through
``SlowProxy`` to the same sink. Every channel has a live tail session. The sink trusts no
one but its trustme certificate; the router gets the CA with ``--drain-ca-file``.

Faults, each proven to have happened (see the ``prove_*`` helpers):

- the HTTPS receiver answering 503 (the front answers it; the same Frame-Id is delivered
  later, and the drain's status is seen non-``up``), then down, connection refused, for 10 s;
- rsyslog stopped and started again (a new output file per run; the drain seen non-``up``).
  The stop waits until the syslog drain is idle, with the shims' bytes held at the proxy:
  a frame rsyslog had read but not yet parsed when it stops is lost inside rsyslog, beyond
  any sender's knowledge (DESIGN 8), and that is not what this suite measures;
- the shims' connections cut every few seconds (the proxy counts cuts and reconnects);
- the beta receiver reading very slowly (the proxy counts reads that found a full chunk
  already waiting: the sender was held back);
- the router SIGKILLed and started again twice, same ports and data dir (spool only);
- a small ``--spool-max-bytes`` with a drain down, so the disk budget runs out.

Accounting per output (``Tally``): delivered (unique ids), duplicated, reported (N summed
over L10/L11/L12/L13), published (app lines as counted by the emitters, plus each shim's
two lifecycle notices). Duplicates at the HTTPS receiver are allowed only under a Frame-Id
already seen for that line (a replay); the sink de-duplicates by Frame-Id, so a replay is
mostly invisible there, and a line arriving under a second Frame-Id fails the test. Syslog
may duplicate (resend after a failed connection). A tail never duplicates.

Required: with ``--no-spool`` (no SIGKILL there: in memory mode a SIGKILL may lose what is in
flight, DESIGN 8), delivered + reported = published exactly for every drain and tail. With
the spool (the default), zero lost and nothing reported for every drain across every fault,
SIGKILLs included; with the disk budget exhausted, delivered + reported = published exactly
for the drain that was down, with something really reported, and zero lost for the others.

Tails: a live tail does not survive a router kill (its stream ends; a new session is opened
after each restart). Tails are accounted exactly only over a span without a kill: a session
opened before the first line is published and alive to the end. In the kill scenario each
session is checked on its own (no duplicate, each shim's lines in order, no stray line),
and the last one, alive from its opening to the end, must hold every line of each shim from
its first one on (nothing lost inside its span).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from chaos_harness import (
    APP_LINE,
    CutProxy,
    HttpFront,
    Published,
    Router,
    Rsyslog,
    Shim,
    Sink,
    SlowProxy,
    StatusWatch,
    TailSession,
    Tally,
    child_env,
    https_tally,
    make_tls,
    open_tail,
    per_shim_in_order,
    syslog_tally,
    tail_tally,
    wait_progress,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.peer("rsyslog")]

LINES_PER_S_PER_SHIM = 250
SHIMS = {1: "alpha", 2: "alpha", 3: "beta"}


@dataclass
class World:
    tmp_path: Path
    router: Router
    sink: Sink
    rsyslog: Rsyslog
    front: HttpFront
    slow: SlowProxy
    cut: CutProxy
    watch: StatusWatch
    nursery: trio.Nursery
    pad_chars: int
    drain_tokens: dict[str, str] = field(default_factory=dict)  # label -> d.token
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)  # channel -> tokens
    shims: list[Shim] = field(default_factory=list)
    tails: dict[str, list[TailSession]] = field(default_factory=dict)  # channel -> sessions
    kills: int = 0

    async def open_tails(self) -> None:
        for channel in ("alpha", "beta"):
            session = await open_tail(self.router, channel, self.nursery)
            self.tails.setdefault(channel, []).append(session)

    async def kill_and_restart_router(self) -> None:
        self.watch.faults.add("router-killed")
        connected = self.cut.upstream_connected  # from here on, only to the new router
        code = await self.router.kill()
        assert code == -signal.SIGKILL
        self.kills += 1
        await self.router.start()
        self.watch.faults.discard("router-killed")
        await self.open_tails()
        # The shims reconnect to the same address through the proxy.
        await wait_until(
            lambda: self.cut.upstream_connected >= connected + len(self.shims),
            "the shims to reconnect after the restart",
            60,
        )

    def records_by_label(self) -> dict[str, int]:
        return {
            label: sum(1 for r in self.sink.records() if r["drain_token"] == token)
            for label, token in self.drain_tokens.items()
            if label.endswith("https")
        }


@asynccontextmanager
async def chaos_world(
    tmp_path: Path, router_flags: list[str], pad_chars: int = 40
) -> AsyncIterator[World]:
    env = child_env(tmp_path)
    tls = make_tls(tmp_path)
    sink = Sink(tmp_path, env, tls)
    rsyslog = Rsyslog(tmp_path)
    router = Router(tmp_path, env, tls, router_flags)
    front = HttpFront(tls, sink.port)
    slow = SlowProxy(sink.port)
    cut = CutProxy(router.shim_port)
    shims: list[Shim] = []
    try:
        await sink.start()
        await rsyslog.start()
        await router.start()
        async with trio.open_nursery() as nursery:
            for server in (front, slow, cut):
                await nursery.start(server.run)
            watch = StatusWatch(router, {})
            world = World(
                tmp_path, router, sink, rsyslog, front, slow, cut, watch, nursery, pad_chars
            )
            world.shims = shims
            urls = {
                "alpha-https": ("alpha", f"https://127.0.0.1:{front.port}/alpha"),
                "alpha-syslog": ("alpha", f"syslog://127.0.0.1:{rsyslog.port}"),
                "beta-https": ("beta", f"https://127.0.0.1:{slow.port}/beta"),
            }
            for channel in ("alpha", "beta"):
                created = await router.api.put(
                    f"/v3/channels/{channel}", json={"tokens": ["app", "heroku"]}
                )
                assert created.status_code == 201, created.text
                world.tokens[channel] = created.json()["tokens"]
            for label, (channel, url) in urls.items():
                added = await router.api.post(f"/v3/channels/{channel}/drains", json={"url": url})
                assert added.status_code == 201, added.text
                world.drain_tokens[label] = added.json()["token"]
                watch.labels[(channel, str(added.json()["id"]))] = label
            nursery.start_soon(watch.run)
            await world.open_tails()
            for number, channel in SHIMS.items():
                shim = Shim(
                    tmp_path,
                    env,
                    number,
                    f"tcp://127.0.0.1:{cut.port}",
                    world.tokens[channel],
                    LINES_PER_S_PER_SHIM,
                    pad_chars,
                )
                await shim.start()
                shims.append(shim)
            yield world
            nursery.cancel_scope.cancel()
    finally:
        for process in (*shims, router, rsyslog, sink):
            if process.alive():
                await process.stop(signal.SIGKILL if process in shims else signal.SIGTERM)
        await router.api.aclose()


async def wait_first_deliveries(world: World) -> None:
    await wait_until(
        lambda: all(world.records_by_label().values()) and bool(world.rsyslog.lines()),
        "every drain to deliver its first lines",
        60,
        poll_s=0.25,
    )


async def cut_repeatedly(world: World, every_s: float, stop: trio.Event) -> None:
    while not stop.is_set():
        with trio.move_on_after(every_s):
            await stop.wait()
        world.cut.cut_all()


async def https_5xx_then_down(
    world: World,
    down_s: float = 10.0,
    during_down: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """503 for 5 s and until the router was refused a few times, then connection refused.

    ``during_down`` runs 3 s into the outage (a router kill while a drain is down)."""
    world.watch.faults.add("5xx")
    world.front.set_mode("5xx")
    await trio.sleep(5)  # the fault's length, at least; then its effects are waited for
    await wait_until(
        lambda: (
            sum(p.status == 503 for p in world.front.posts) >= 3
            and world.watch.failing_seen("alpha-https", "5xx")
        ),
        "the router to be refused with 503 and see its drain fail",
        60,
    )
    world.watch.faults.discard("5xx")
    world.watch.faults.add("down")
    world.front.set_mode("down")
    up_at = trio.current_time() + down_s
    if during_down is not None:
        await trio.sleep(3)
        await during_down()
    await trio.sleep_until(up_at)  # the fault's length, not a wait for an outcome
    world.front.set_mode("proxy")
    world.watch.faults.discard("down")


async def restart_rsyslog(world: World) -> None:
    """Stop rsyslog once the syslog drain is idle, let traffic fail on it, start it again."""
    world.cut.hold()
    seen = [-1, trio.current_time()]

    def idle() -> bool:
        count, now = len(world.rsyslog.lines()), trio.current_time()
        if count != seen[0]:
            seen[:] = [count, now]
        return now - float(seen[1]) > 1.0 and world.watch.latest("alpha-syslog").buffered == 0

    await wait_until(idle, "the syslog drain to go idle", 60, poll_s=0.2)
    await world.rsyslog.stop()
    world.watch.faults.add("rsyslog-down")
    world.cut.release()
    await wait_until(
        lambda: world.watch.failing_seen("alpha-syslog", "rsyslog-down"),
        "the syslog drain to notice rsyslog is gone",
        60,
    )
    await world.rsyslog.start()
    world.watch.faults.discard("rsyslog-down")


async def slow_receiver(world: World, duration_s: float) -> None:
    world.watch.faults.add("slow")
    world.slow.slow = True
    await trio.sleep(duration_s)  # the fault's length
    world.slow.slow = False
    world.watch.faults.discard("slow")


@dataclass
class Outcome:
    published: Published
    drains: dict[str, Tally]
    tails: dict[str, list[Tally]]
    shim_stderr: dict[int, str]
    statuses: dict[str, dict[str, Any]]  # label -> the drain's status at the end


async def finish(world: World, done: Callable[[dict[str, Tally]], bool]) -> Outcome:
    """Stop the apps, let the shims ship, wait for the outputs to settle, then tally."""
    counts = {}
    for shim in world.shims:
        counts[shim.number] = await shim.finish()
    published_by_channel = {
        channel: Published(
            {n: c for n, c in counts.items() if SHIMS[n] == channel}, world.pad_chars
        )
        for channel in ("alpha", "beta")
    }

    def drain_tallies() -> dict[str, Tally]:
        records = world.sink.records()
        return {
            "alpha-https": https_tally(
                "alpha-https",
                published_by_channel["alpha"],
                records,
                world.drain_tokens["alpha-https"],
            ),
            "alpha-syslog": syslog_tally(
                "alpha-syslog", published_by_channel["alpha"], world.rsyslog.lines()
            ),
            "beta-https": https_tally(
                "beta-https",
                published_by_channel["beta"],
                records,
                world.drain_tokens["beta-https"],
            ),
        }

    latest: dict[str, dict[str, Tally]] = {}

    def settled() -> bool:
        latest["drains"] = drain_tallies()
        return done(latest["drains"])

    def progress() -> object:
        return (
            world.sink.jsonl.stat().st_size if world.sink.jsonl.exists() else 0,
            len(world.rsyslog.lines()),
            tuple(len(s.received) for sessions in world.tails.values() for s in sessions),
        )

    # HTTPS retries back off up to 30 s with full jitter: a stall shorter than that is no
    # proof that nothing more will come.
    await wait_progress(settled, progress, stall_s=40, timeout_s=150)
    # The last L10 may go alone up to 1 s after the last batch; tails get what follows.
    await trio.sleep(2)
    drains = drain_tallies()
    tails = {
        channel: [tail_tally(f"{channel}-tail", published_by_channel[channel], s) for s in sessions]
        for channel, sessions in world.tails.items()
    }
    return Outcome(
        published=Published(counts, world.pad_chars),
        drains=drains,
        tails=tails,
        shim_stderr={shim.number: shim.stderr_text() for shim in world.shims},
        statuses=await final_statuses(world),
    )


async def final_statuses(world: World) -> dict[str, dict[str, Any]]:
    statuses = {}
    for channel in ("alpha", "beta"):
        drains = await world.router.drain_statuses(channel)
        assert drains is not None, f"no drain status for {channel}"
        for drain in drains:
            statuses[world.watch.labels[(channel, str(drain["id"]))]] = drain["status"]
    return statuses


def check_counters(outcome: Outcome) -> None:
    """The drains' own counters agree with what their receivers got and were told."""
    for label, tally in outcome.drains.items():
        status = outcome.statuses[label]
        assert status["dropped"] == tally.reported, (label, status, tally.summary())
        assert status["delivered"] >= tally.delivered, (label, status, tally.summary())


def exact(tally: Tally) -> bool:
    return tally.delivered + tally.reported >= tally.published.total()


def none_lost(tally: Tally) -> bool:
    return tally.delivered >= tally.published.total()


# ---------------------------------------------------------------------------------------
# Proofs that each fault happened


def prove_5xx_and_down(world: World) -> None:
    refused = [p for p in world.front.posts if p.status == 503]
    assert refused, "the front never answered 503"
    assert world.front.retried_after_5xx(), "no Frame-Id refused with 503 was delivered later"
    assert world.watch.failing_seen("alpha-https", "down"), (
        "the HTTPS drain never saw its receiver down"
    )


def prove_rsyslog_restarted(world: World) -> None:
    assert world.rsyslog.runs == 2
    assert world.rsyslog.out_path(1).stat().st_size > 0
    assert world.rsyslog.out_path(2).stat().st_size > 0, "nothing reached the second rsyslogd"


def prove_cuts(world: World, at_least: int) -> None:
    assert world.cut.cuts_with_connections >= at_least, world.cut.cuts_with_connections
    assert world.cut.upstream_connected >= len(world.shims) * (at_least + 1)


def prove_slow(world: World) -> None:
    assert world.slow.saturated_slow_reads >= 10, (
        f"the slow receiver was never the bottleneck: {world.slow.saturated_slow_reads} of "
        f"{world.slow.slow_reads} reads found a full chunk waiting"
    )


def check_shims(outcome: Outcome) -> None:
    for number, text in outcome.shim_stderr.items():
        assert "not delivered" not in text, f"shim {number} gave up lines: {text[-500:]}"


def check_exact(tally: Tally, *, duplicates_allowed: bool) -> None:
    tally.check_clean(duplicates_allowed=duplicates_allowed)
    assert tally.delivered + tally.reported == tally.published.total(), (
        tally.name,
        tally.summary(),
    )


def check_none_lost(tally: Tally, *, duplicates_allowed: bool) -> None:
    tally.check_clean(duplicates_allowed=duplicates_allowed)
    assert (tally.lost, tally.reported) == (0, 0), (tally.name, tally.summary())


def check_tail_sessions(outcome: Outcome, world: World) -> None:
    """Per session: clean, in order; the last one holds every line of its span."""
    for channel, tallies in outcome.tails.items():
        sessions = world.tails[channel]
        assert len(sessions) == world.kills + 1
        for session, tally in zip(sessions, tallies, strict=True):
            tally.check_clean(duplicates_allowed=False)
            assert per_shim_in_order(session), f"{channel}: a tail got lines out of order"
            assert any(APP_LINE.fullmatch(m) for _, _, m in session.received), (
                f"{channel}: a tail session got no app line"
            )
        for session in sessions[:-1]:
            assert session.ended is not None, "a tail outlived the router it was reading"
        last, last_tally = sessions[-1], tallies[-1]
        for number, count in last_tally.published.counts.items():
            got = sorted(
                int(m.group(2))
                for _, ps, msg in last.received
                if ps == f"web.{number}" and (m := APP_LINE.fullmatch(msg))
            )
            missing = count - got[0] - len(got)
            assert missing == last_tally.reported == 0, (channel, number, missing, last_tally)


def metric_value(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} is not in the metrics"
    return values[0]


def report(outcome: Outcome, world: World) -> str:
    posts = world.front.posts
    delivered_ids = [p.frame_id for p in posts if 200 <= p.status < 300]
    rows = [
        f"faults: 503 answers={sum(p.status == 503 for p in posts)}"
        f" retried after 503={len(world.front.retried_after_5xx())}"
        f" posts again after 2xx={len(delivered_ids) - len(set(delivered_ids))}"
        f" cuts={world.cut.cuts_with_connections} shim connections={world.cut.upstream_connected}"
        f" slow reads={world.slow.saturated_slow_reads}/{world.slow.slow_reads} full"
        f" rsyslog runs={world.rsyslog.runs} router kills={world.kills}"
    ]
    rows += [f"{name}: {tally.summary()}" for name, tally in outcome.drains.items()]
    for channel, tallies in outcome.tails.items():
        for i, tally in enumerate(tallies):
            summary = tally.summary()
            if len(tallies) > 1:  # a session's span is part of the run: no "lost" to speak of
                summary = {k: summary[k] for k in ("delivered", "duplicated", "reported")}
            rows.append(f"{channel} tail session {i}: {summary}")
    return "\n".join(rows)


async def fault_script(world: World, *, kill_router: bool) -> None:
    """The faults, in this order, while the shims emit: cuts every 2.5 s and a slow beta
    receiver all along; alpha's HTTPS receiver 503 then down (a router kill 3 s into it);
    rsyslog restarted (a second router kill after it)."""
    stop_cutting = trio.Event()
    kill = world.kill_and_restart_router if kill_router else None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cut_repeatedly, world, 2.5, stop_cutting)
        nursery.start_soon(slow_receiver, world, 15.0)
        await https_5xx_then_down(world, during_down=kill)
        await restart_rsyslog(world)
        if kill is not None:
            await kill()
        await trio.sleep(3)  # traffic through the recovered receivers before the end
        stop_cutting.set()


# ---------------------------------------------------------------------------------------


async def test_no_spool_every_output_accounts_for_every_line_through_the_faults(
    tmp_path: Path,
) -> None:
    async with chaos_world(tmp_path, ["--no-spool"]) as world:
        await wait_first_deliveries(world)
        await fault_script(world, kill_router=False)
        outcome = await finish(world, lambda drains: all(exact(t) for t in drains.values()))
        print(report(outcome, world))
        prove_5xx_and_down(world)
        prove_rsyslog_restarted(world)
        prove_cuts(world, at_least=4)
        prove_slow(world)
    check_shims(outcome)
    check_exact(outcome.drains["alpha-https"], duplicates_allowed=True)
    check_exact(outcome.drains["alpha-syslog"], duplicates_allowed=True)
    check_exact(outcome.drains["beta-https"], duplicates_allowed=True)
    for tallies in outcome.tails.values():
        (tally,) = tallies
        check_exact(tally, duplicates_allowed=False)
    check_counters(outcome)
    # The faults were hard enough that something really was dropped and reported.
    assert outcome.drains["alpha-https"].reported > 0


async def test_spool_loses_nothing_through_every_fault_and_two_sigkills(tmp_path: Path) -> None:
    async with chaos_world(tmp_path, []) as world:
        await wait_first_deliveries(world)
        await fault_script(world, kill_router=True)
        outcome = await finish(world, lambda drains: all(none_lost(t) for t in drains.values()))
        print(report(outcome, world))
    check_shims(outcome)
    check_none_lost(outcome.drains["alpha-https"], duplicates_allowed=True)
    check_none_lost(outcome.drains["alpha-syslog"], duplicates_allowed=True)
    check_none_lost(outcome.drains["beta-https"], duplicates_allowed=True)
    check_tail_sessions(outcome, world)
    # Counters continue across the restarts (DESIGN 8: they survive with the spool).
    check_counters(outcome)
    prove_5xx_and_down(world)
    prove_rsyslog_restarted(world)
    prove_cuts(world, at_least=4)
    prove_slow(world)
    assert world.router.exit_codes[:2] == [-signal.SIGKILL, -signal.SIGKILL]


async def test_spool_disk_budget_exhausted_is_reported_exactly(tmp_path: Path) -> None:
    # A drain buffer and retry window far beyond the outage: without the spool nothing would
    # be dropped here, so whatever is reported comes from the spool's disk budget.
    flags = ["--spool-max-bytes", "1MiB", "--drain-buffer", "200000"]
    flags += ["--drain-retry-window", "600"]
    async with chaos_world(tmp_path, flags, pad_chars=300) as world:
        await wait_first_deliveries(world)
        world.watch.faults.add("down")
        world.front.set_mode("down")
        # Long enough at ~750 lines/s of ~330 bytes to spool several MiB.
        await trio.sleep(20)
        world.front.set_mode("proxy")
        world.watch.faults.discard("down")
        outcome = await finish(
            world,
            lambda drains: (
                exact(drains["alpha-https"])
                and none_lost(drains["alpha-syslog"])
                and none_lost(drains["beta-https"])
            ),
        )
        metrics = await world.router.metrics()
        print(report(outcome, world))
    check_shims(outcome)
    down = outcome.drains["alpha-https"]
    check_exact(down, duplicates_allowed=True)
    assert down.reported > 0, "the spool's disk budget was never exhausted"
    check_counters(outcome)
    # The metric sums over drains; only the drain that was down fell off the budget.
    assert metric_value(metrics, "logplex_spool_dropped_messages_total") == down.reported
    check_none_lost(outcome.drains["alpha-syslog"], duplicates_allowed=True)
    check_none_lost(outcome.drains["beta-https"], duplicates_allowed=True)
    for tallies in outcome.tails.values():
        (tally,) = tallies
        check_exact(tally, duplicates_allowed=False)
        assert tally.reported == 0
