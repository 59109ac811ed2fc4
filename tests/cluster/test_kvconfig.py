"""KvConfigStore: the config in NATS KV, against a real nats-server (tests/natsd.py).

Each router is a bridge, a store and a recorder of what the store applies (a plain class
standing where the router's ``apply_channel`` / ``remove_channel`` would be). Cross-router
effects are polled with a deadline; nothing asserts how fast they happen.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from logplex.cluster import names
from logplex.cluster.bridge import BridgeSettings, NatsBridge
from logplex.cluster.kvconfig import (
    DRAIN_ID_KEY,
    KvConfigStore,
    channel_key,
    channel_of_key,
    decode_channel,
    encode_channel,
)
from logplex.config.records import ChannelConfig, DrainConfig
from logplex.config.store import (
    CHANNEL_NAME_MAX_CHARS,
    ChannelNotFound,
    ConfigError,
    ConfigStore,
    ConfigStoreAPI,
    DuplicateDrainURL,
    StoreUnavailable,
    TooManyDrains,
    TooManyTokens,
)
from tests.natsd import NatsNode

TOKEN = re.compile(r"t\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
DRAIN_TOKEN = re.compile(r"d\.[0-9a-f-]{36}\Z")
KV_KEY = re.compile(r"[-/_=.A-Za-z0-9]+\Z")  # what nats-server accepts in a KV key
DEADLINE_S = 20.0


# -- keys and values -----------------------------------------------------------------------

channel_names = st.text(
    alphabet=string.ascii_letters + string.digits + "._:-", min_size=0, max_size=127
).map(lambda tail: "a" + tail)


@given(channel_names)
def test_every_channel_name_maps_to_one_valid_key_and_back(name: str) -> None:
    key = channel_key(name)
    assert KV_KEY.match(key)
    # One key token after the prefix: no empty tokens, no wildcard reach into other keys.
    assert key.count(".") == 1
    assert key.startswith("c.")
    assert channel_of_key(key) == name


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("web", "c.web"),
        ("web:app.v2", "c.web=3Aapp=2Ev2"),
        ("a..b", "c.a=2E=2Eb"),
        ("a.", "c.a=2E"),
        ("A_b-9", "c.A_b-9"),
    ],
)
def test_channel_key_examples(name: str, key: str) -> None:
    assert channel_key(name) == key
    assert channel_of_key(key) == name


@pytest.mark.parametrize(
    "key",
    [
        "web",  # no prefix
        "c.",  # empty name
        "c.a=3a",  # lower-case escape: not the canonical spelling
        "c.=41bc",  # an escaped character that needs no escape
        "c.a=3",  # a cut escape
        "c.a.b",  # two tokens
        "c._web",  # not a valid channel name (must start with a letter or digit)
        "c." + "a" * (CHANNEL_NAME_MAX_CHARS + 1),
        DRAIN_ID_KEY,
    ],
)
def test_keys_that_are_not_channel_keys(key: str) -> None:
    assert channel_of_key(key) is None


def test_channel_value_round_trips_and_garbage_is_refused_without_quoting_secrets() -> None:
    config = ChannelConfig(
        "web:app", {"b": "t.2", "a": "t.1"}, (DrainConfig(7, "d.x", "https://h/"),)
    )
    decoded = decode_channel("web:app", encode_channel(config))
    assert decoded == config
    assert list(decoded.tokens) == ["a", "b"]
    for garbage in [
        b"\xff",
        b"[]",
        b'{"v": 2, "channel": "web:app", "tokens": {}, "drains": []}',
        b'{"v": 1, "channel": "other", "tokens": {}, "drains": []}',
        b'{"v": 1, "channel": "web:app", "tokens": {"a": 1}, "drains": []}',
        b'{"v": 1, "channel": "web:app", "tokens": {}, "drains": [{"id": true}]}',
        b'{"v": 1, "channel": "web:app", "tokens": {"a": "t.SECRET"}, "drains": '
        b'[{"id": 1, "token": "d.1", "url": "u"}, {"id": 1, "token": "d.2", "url": "v"}]}',
    ]:
        with pytest.raises(ValueError, match=r"^(its|it|a drain|two drains) ") as caught:
            decode_channel("web:app", garbage)
        assert "SECRET" not in str(caught.value)


# -- routers on one NATS ---------------------------------------------------------------------


@dataclass
class RouterRecorder:
    """Stands where the router is: records every apply and remove, keeps what is applied."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    channels: dict[str, ChannelConfig] = field(default_factory=dict)

    def apply_channel(self, config: ChannelConfig) -> None:
        self.calls.append(("apply", config.name))
        self.channels[config.name] = config

    def remove_channel(self, name: str) -> None:
        self.calls.append(("remove", name))
        del self.channels[name]


@dataclass
class Member:
    bridge: NatsBridge
    store: KvConfigStore
    router: RouterRecorder
    scope: trio.CancelScope


async def start_member(
    nursery: trio.Nursery,
    node: NatsNode,
    *,
    store_factory: Callable[[NatsBridge, RouterRecorder], KvConfigStore] | None = None,
) -> Member:
    """A bridge and a running store in a cancel scope of their own (``member.scope``)."""
    bridge = NatsBridge(BridgeSettings(servers=(node.url,), name="logplex-test"))
    router = RouterRecorder()
    if store_factory is None:
        store = KvConfigStore(bridge, apply=router.apply_channel, remove=router.remove_channel)
    else:
        store = store_factory(bridge, router)
    scope = trio.CancelScope()

    async def member(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                await inner.start(bridge.run)
                await inner.start(store.run)
                task_status.started()

    await nursery.start(member)
    return Member(bridge, store, router, scope)


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(DEADLINE_S):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {DEADLINE_S} s: {what}")


async def test_a_write_on_one_router_is_applied_on_the_other(nats_node: NatsNode) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        b = await start_member(nursery, nats_node)
        config, created = await a.store.put_channel("web:app.v2", ["app", "worker"])
        assert created
        assert set(config.tokens) == {"app", "worker"}
        assert all(TOKEN.match(token) for token in config.tokens.values())
        await eventually(lambda: "web:app.v2" in b.router.channels, "B applies A's channel")
        assert b.router.channels["web:app.v2"] == config
        assert await b.store.get_channel("web:app.v2") == config
        assert await b.store.list_channel_names() == ["web:app.v2"]
        config, _ = await b.store.add_drain("web:app.v2", "https://h.example/", max_drains=3)
        await eventually(lambda: a.router.channels["web:app.v2"] == config, "A applies B's drain")
        assert a.router.calls == [("apply", "web:app.v2")] * 2
        nursery.cancel_scope.cancel()


async def test_every_write_is_applied_and_readable_when_it_returns(nats_node: NatsNode) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        assert a.store.applies_itself

        async def check(config: ChannelConfig) -> None:
            # Read-your-writes: no polling, the write returned after its revision applied.
            assert a.router.channels[config.name] == config
            assert await a.store.get_channel(config.name) == config

        config, _ = await a.store.put_channel("c", ["app"])
        await check(config)
        config, _ = await a.store.put_channel("c", ["app", "web"])
        await check(config)
        config, _, created = await a.store.add_token("c", "worker")
        assert created
        await check(config)
        config, first = await a.store.add_drain("c", "https://h.example/1", max_drains=6)
        await check(config)
        config, _ = await a.store.update_drain("c", first.id, "https://h.example/2")
        await check(config)
        config = await a.store.remove_drain("c", first.id)
        await check(config)
        assert config.drains == ()
        calls_before = len(a.router.calls)
        config, token, created = await a.store.add_token("c", "app")  # no change: no write
        assert not created
        assert token == config.tokens["app"]
        assert len(a.router.calls) == calls_before
        await a.store.delete_channel("c")
        assert "c" not in a.router.channels
        assert await a.store.get_channel("c") is None
        assert a.router.calls[-1] == ("remove", "c")
        with pytest.raises(ChannelNotFound, match="channel 'c' not found"):
            await a.store.delete_channel("c")
        nursery.cancel_scope.cancel()


async def test_concurrent_drains_from_two_routers_are_all_kept_with_distinct_ids(
    nats_node: NatsNode,
) -> None:
    per_router = 5
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        b = await start_member(nursery, nats_node)
        await a.store.put_channel("busy", [])
        await eventually(lambda: "busy" in b.router.channels, "B has the channel")
        added: list[DrainConfig] = []

        async def add(member: Member, name: str) -> None:
            for i in range(per_router):
                _, drain = await member.store.add_drain(
                    "busy", f"https://{name}.example/{i}", max_drains=100
                )
                added.append(drain)

        async with trio.open_nursery() as writers:
            # Two tasks per router as well: the store must be safe without the API's lock.
            writers.start_soon(add, a, "a1")
            writers.start_soon(add, a, "a2")
            writers.start_soon(add, b, "b1")
            writers.start_soon(add, b, "b2")
        assert len({drain.id for drain in added}) == len(added) == 4 * per_router
        assert all(DRAIN_TOKEN.match(drain.token) for drain in added)
        final = sorted(added, key=lambda drain: drain.id)
        await eventually(
            lambda: all(m.router.channels["busy"].drains == tuple(final) for m in (a, b)),
            "both routers hold every drain",
        )
        nursery.cancel_scope.cancel()


async def test_limits_per_channel_are_exact_across_routers(nats_node: NatsNode) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        b = await start_member(nursery, nats_node)
        await a.store.put_channel("limited", [])
        await eventually(lambda: "limited" in b.router.channels, "B has the channel")
        outcomes: list[str] = []

        async def add_drain(member: Member, url: str) -> None:
            try:
                await member.store.add_drain("limited", url, max_drains=3)
                outcomes.append("added")
            except TooManyDrains as error:
                outcomes.append("refused" if "maximum is 3 (--max-drains" in str(error) else "?")

        async def add_token(member: Member, name: str) -> None:
            try:
                await member.store.add_token("limited", name, max_tokens=2)
                outcomes.append("token")
            except TooManyTokens:
                outcomes.append("no token")

        async with trio.open_nursery() as writers:
            for i in range(4):
                writers.start_soon(add_drain, a, f"https://a.example/{i}")
                writers.start_soon(add_drain, b, f"https://b.example/{i}")
            for i in range(2):
                writers.start_soon(add_token, a, f"a{i}")
                writers.start_soon(add_token, b, f"b{i}")
        assert sorted(outcomes) == sorted(
            ["added"] * 3 + ["refused"] * 5 + ["token"] * 2 + ["no token"] * 2
        )
        config = await a.store.get_channel("limited")
        assert config is not None
        assert len(config.drains) == 3
        assert len(config.tokens) == 2

        # The same URL from both at once: one drain, one refusal.
        await a.store.put_channel("dup", [])
        await eventually(lambda: "dup" in b.router.channels, "B has the channel")
        results: list[str] = []

        async def same_url(member: Member) -> None:
            try:
                await member.store.add_drain("dup", "https://same.example/", max_drains=6)
                results.append("added")
            except DuplicateDrainURL:
                results.append("duplicate")

        async with trio.open_nursery() as writers:
            writers.start_soon(same_url, a)
            writers.start_soon(same_url, b)
        assert sorted(results) == ["added", "duplicate"]
        nursery.cancel_scope.cancel()


async def test_delete_on_one_router_removes_on_the_other(nats_node: NatsNode) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        b = await start_member(nursery, nats_node)
        await a.store.put_channel("gone", ["app"])
        await a.store.put_channel("kept", ["app"])
        await eventually(lambda: len(b.router.channels) == 2, "B has both channels")
        await a.store.delete_channel("gone")
        await eventually(lambda: "gone" not in b.router.channels, "B removes the channel")
        assert b.router.calls.count(("remove", "gone")) == 1
        assert await b.store.list_channel_names() == ["kept"]
        with pytest.raises(ChannelNotFound):
            await b.store.add_drain("gone", "https://h.example/", max_drains=6)
        # A deleted channel can be created again, on either router.
        config, created = await b.store.put_channel("gone", [])
        assert created
        await eventually(lambda: a.router.channels.get("gone") == config, "A applies it again")
        nursery.cancel_scope.cancel()


async def test_foreign_values_are_logged_once_and_ignored(
    nats_node: NatsNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="logplex.cluster.kvconfig")
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        good, _ = await a.store.put_channel("good", ["app"])
        bucket = names.CONFIG_BUCKET
        secret = b'{"v": 1, "channel": "bad", "tokens": {"app": "t.SECRET"}, "drains": 3}'
        await a.bridge.kv_put(bucket, channel_key("bad"), secret)
        await a.bridge.kv_put(bucket, channel_key("bad"), b"not json")
        await a.bridge.kv_put(bucket, channel_key("good"), b"\x00\x01")  # over a good one
        await a.bridge.kv_put(bucket, "stray.key", b"x")
        # A write after them: once it is applied, so is everything before it.
        await a.store.put_channel("after", [])
        assert await a.store.list_channel_names() == ["after", "good"]
        assert a.router.channels["good"] == good  # keeps what was last applied
        lines = [r.getMessage() for r in caplog.records]
        assert len([line for line in lines if "'c.bad'" in line]) == 1
        assert len([line for line in lines if "'c.good'" in line]) == 1
        assert len([line for line in lines if "'stray.key'" in line]) == 1
        assert not any("SECRET" in line for line in lines)
        # Writing such a channel is refused, saying what to do; deleting it works.
        with pytest.raises(ConfigError, match=r"unreadable.*delete the channel"):
            await a.store.add_token("good", "web")
        await a.store.delete_channel("good")
        assert "good" not in a.router.channels
        with pytest.raises(ConfigError, match="unreadable"):
            await a.store.put_channel("bad", ["x"])
        await a.store.delete_channel("bad")
        config, created = await a.store.put_channel("bad", ["x"])
        assert created
        assert a.router.channels["bad"] == config
        nursery.cancel_scope.cancel()


async def test_a_new_store_on_the_same_bucket_loads_everything(nats_node: NatsNode) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        first, _ = await a.store.put_channel("one", ["app"])
        second, _ = await a.store.put_channel("two:x", ["web", "worker"])
        second, drain = await a.store.add_drain("two:x", "https://h.example/", max_drains=6)
        await a.store.put_channel("three", [])
        await a.store.delete_channel("three")
        a.scope.cancel()

        b = await start_member(nursery, nats_node)
        assert await b.store.load_channels() == [first, second]
        # Applied before run reported started: the router has it all before serving.
        assert sorted(b.router.calls) == [("apply", "one"), ("apply", "two:x")]
        _, later = await b.store.add_drain("two:x", "https://h.example/2", max_drains=6)
        assert later.id > drain.id
        nursery.cancel_scope.cancel()


async def test_drain_ids_never_go_back_even_when_the_counter_is_lost(
    nats_node: NatsNode,
) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        await a.store.put_channel("c", [])
        _, one = await a.store.add_drain("c", "https://h.example/1", max_drains=6)
        _, two = await a.store.add_drain("c", "https://h.example/2", max_drains=6)
        await a.store.remove_drain("c", two.id)
        _, three = await a.store.add_drain("c", "https://h.example/3", max_drains=6)
        assert (one.id, two.id, three.id) == (1, 2, 3)
        await a.bridge.kv_delete(names.CONFIG_BUCKET, DRAIN_ID_KEY)
        _, four = await a.store.add_drain("c", "https://h.example/4", max_drains=6)
        assert four.id > three.id
        nursery.cancel_scope.cancel()


async def test_writes_need_a_running_store_and_values_are_bounded(nats_node: NatsNode) -> None:
    bridge = NatsBridge(BridgeSettings(servers=(nats_node.url,)))
    idle = KvConfigStore(bridge, apply=lambda config: None, remove=lambda name: None)
    with pytest.raises(StoreUnavailable, match="not watching NATS yet"):
        await idle.put_channel("c", [])
    async with trio.open_nursery() as nursery:
        small = await start_member(
            nursery,
            nats_node,
            store_factory=lambda bridge, router: KvConfigStore(
                bridge,
                apply=router.apply_channel,
                remove=router.remove_channel,
                max_value_bytes=600,
            ),
        )
        await small.store.put_channel("c", ["app"])
        with pytest.raises(ConfigError, match="more than the 600 a value"):
            await small.store.add_drain("c", "https://h.example/" + "x" * 600, max_drains=6)
        assert small.router.channels["c"].drains == ()
        await small.store.aclose()
        with pytest.raises(ConfigError, match="closed"):
            await small.store.put_channel("d", [])
        nursery.cancel_scope.cancel()


# -- the same answers as the SQLite store -----------------------------------------------------

Step = Callable[[ConfigStoreAPI], Awaitable[object]]

SCRIPT: list[tuple[str, Step]] = [
    ("create", lambda s: s.put_channel("web:app.v2", ["web", "app"], max_channels=2)),
    ("retoken", lambda s: s.put_channel("web:app.v2", ["app", "worker"], max_tokens=2)),
    ("same", lambda s: s.put_channel("web:app.v2", ["worker", "app"])),
    ("other", lambda s: s.put_channel("other", [], max_channels=2)),
    ("third", lambda s: s.put_channel("third", [], max_channels=2)),
    ("bad name", lambda s: s.put_channel("bad name", [])),
    ("bad token", lambda s: s.put_channel("x", ["has space"])),
    ("too many tokens", lambda s: s.put_channel("x", ["a", "b", "c"], max_tokens=2)),
    ("token again", lambda s: s.add_token("web:app.v2", "app")),
    ("token", lambda s: s.add_token("web:app.v2", "new", max_tokens=3)),
    ("token past limit", lambda s: s.add_token("web:app.v2", "more", max_tokens=3)),
    ("token nowhere", lambda s: s.add_token("nope", "a")),
    ("drain", lambda s: s.add_drain("web:app.v2", "https://a.example/1", max_drains=2)),
    ("dup drain", lambda s: s.add_drain("web:app.v2", "https://a.example/1", max_drains=2)),
    ("drain other", lambda s: s.add_drain("other", "https://b.example/", max_drains=2)),
    ("drain 2", lambda s: s.add_drain("web:app.v2", "https://a.example/2", max_drains=2)),
    ("drain past limit", lambda s: s.add_drain("web:app.v2", "https://a.example/3", max_drains=2)),
    ("drain nowhere", lambda s: s.add_drain("nope", "https://a.example/", max_drains=2)),
    ("update to dup", lambda s: s.update_drain("web:app.v2", 1, "https://a.example/2")),
    ("update", lambda s: s.update_drain("web:app.v2", 1, "https://a.example/9")),
    ("update missing", lambda s: s.update_drain("web:app.v2", 99, "https://a.example/")),
    ("remove", lambda s: s.remove_drain("web:app.v2", 3)),
    ("remove again", lambda s: s.remove_drain("web:app.v2", 3)),
    (
        "drain after remove",
        lambda s: s.add_drain("web:app.v2", "https://a.example/3", max_drains=2),
    ),
    ("delete", lambda s: s.delete_channel("other")),
    ("delete again", lambda s: s.delete_channel("other")),
    ("names", lambda s: s.list_channel_names()),
    ("get", lambda s: s.get_channel("web:app.v2")),
    ("get missing", lambda s: s.get_channel("other")),
    ("load", lambda s: s.load_channels()),
]


def _normalized(value: object) -> object:
    """Results with the random tokens replaced by their kind, so two stores compare."""
    if isinstance(value, ChannelConfig):
        assert all(TOKEN.match(token) for token in value.tokens.values())
        return ("channel", value.name, list(value.tokens), [_normalized(d) for d in value.drains])
    if isinstance(value, DrainConfig):
        assert DRAIN_TOKEN.match(value.token)
        return ("drain", value.id, value.url)
    if isinstance(value, str) and TOKEN.match(value):
        return "t.<uuid4>"
    if isinstance(value, (tuple, list)):
        return [_normalized(item) for item in value]
    return value


async def _run_script(store: ConfigStoreAPI) -> list[tuple[str, object]]:
    outcomes: list[tuple[str, object]] = []
    for label, step in SCRIPT:
        try:
            outcomes.append((label, _normalized(await step(store))))
        except ConfigError as error:
            outcomes.append((label, (type(error).__name__, str(error))))
    return outcomes


async def test_same_results_and_errors_as_the_sqlite_store(
    nats_node: NatsNode, tmp_path: Path
) -> None:
    sqlite = await ConfigStore.open(tmp_path / "config.sqlite3")
    try:
        expected = await _run_script(sqlite)
    finally:
        await sqlite.aclose()
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        assert await _run_script(a.store) == expected
        nursery.cancel_scope.cancel()
    # The script did meet every kind of refusal.
    kinds = {outcome[0] for _, outcome in expected if isinstance(outcome, tuple)}
    assert {
        "TooManyChannels",
        "InvalidName",
        "TooManyTokens",
        "ChannelNotFound",
        "DuplicateDrainURL",
        "TooManyDrains",
        "DrainNotFound",
    } <= kinds


async def test_nats_down_refuses_writes_and_the_watch_resumes_when_it_is_back(
    nats_node: NatsNode,
) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_member(nursery, nats_node)
        b = await start_member(nursery, nats_node)
        await a.store.put_channel("before", [])
        await eventually(lambda: "before" in b.router.channels, "B has the channel")
        nats_node.stop()
        with pytest.raises(StoreUnavailable, match="NATS"):
            await a.store.put_channel("during", [])
        assert await a.store.list_channel_names() == ["before"]  # reads go on from memory
        nats_node.start()
        with trio.fail_after(DEADLINE_S):
            while True:
                try:
                    config, _ = await a.store.put_channel("after", ["app"])
                    break
                except StoreUnavailable:
                    await trio.sleep(0.05)
        await eventually(lambda: b.router.channels.get("after") == config, "B applies it")
        # "during" may or may not exist now: its write's outcome was unknown, and said so.
        nursery.cancel_scope.cancel()
