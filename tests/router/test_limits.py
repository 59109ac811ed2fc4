"""Limits on what a tenant can create or hold: history bytes, sessions per channel, clients
per session URL, channels per API key and tokens per channel (docs/operations.md, "Guards:
limits"). Unit tests: the ring and the registry as plain objects, the API in-process on a
loopback port (``running_api``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio
from controlplane_helpers import ADMIN, ApiHarness, StreamingGet, running_api
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from logplex.api.registry import RegistryFull, SessionLimitReached, SessionRegistry, SessionSpec
from logplex.codecs.records import Message
from logplex.config.records import ChannelConfig, TokenInfo
from logplex.fanout.history import HistoryRing
from logplex.fanout.router import Router
from logplex.spool.log import Spool


def limit_refusals(limit: str) -> float:
    value = REGISTRY.get_sample_value("logplex_limit_refusals_total", {"limit": limit})
    return value or 0.0


def sized(count: int, *, start: int, size: int | list[int], single: bool = False) -> list[Message]:
    """``count`` messages numbered from ``start`` whose text is ``size`` bytes long (one size
    or one per message); ``single`` makes every text identical (one shared column value)."""
    sizes = size if isinstance(size, list) else [size] * count
    out: list[Message] = []
    for n, length in zip(range(start, start + count), sizes, strict=True):
        text = b"x" * length if single else (b"%d:" % n).ljust(max(length, 0), b".")[:length]
        out.append((1_000_000 + n, 190, b"app", b"web.1", text))
    return out


def expected_history(everything: list[Message], max_lines: int, max_bytes: int) -> list[Message]:
    """The model: the longest run of newest messages within both bounds."""
    kept: list[Message] = []
    total = 0
    for message in reversed(everything[-max_lines:] if max_lines else []):
        if total + len(message[4]) > max_bytes:
            break
        total += len(message[4])
        kept.append(message)
    return kept[::-1]


# -- history bytes -------------------------------------------------------------------------


def test_history_keeps_at_most_max_bytes_of_text_dropping_the_oldest() -> None:
    ring = HistoryRing(1500, max_bytes=10_000)
    everything = sized(100, start=0, size=1000)  # 100 kB of text under a 10 kB bound
    ring.extend(everything)
    assert ring.messages() == everything[-10:]
    assert ring.text_bytes == 10_000
    assert ring.take_evicted_for_bytes() == 90
    assert ring.take_evicted_for_bytes() == 0  # taken


def test_history_line_bound_still_applies_with_small_lines() -> None:
    ring = HistoryRing(50, max_bytes=1 << 20)
    everything = sized(200, start=0, size=10)
    ring.extend(everything)
    assert ring.messages() == everything[-50:]
    assert ring.take_evicted_for_bytes() == 0  # the line bound did it


def test_a_message_larger_than_the_byte_bound_is_not_kept() -> None:
    ring = HistoryRing(100, max_bytes=2048)
    small = sized(3, start=0, size=100)
    ring.extend(small)
    ring.extend(sized(1, start=3, size=4096))
    assert ring.messages() == []
    assert ring.text_bytes == 0
    after = sized(2, start=4, size=100)
    ring.extend(after)
    assert ring.messages() == after


@given(
    max_lines=st.integers(min_value=1, max_value=200),
    max_bytes=st.integers(min_value=0, max_value=3000),
    single=st.booleans(),
    steps=st.lists(
        st.one_of(
            st.lists(st.integers(min_value=0, max_value=300), min_size=0, max_size=90),
            st.just("compact"),
        ),
        max_size=30,
    ),
)
def test_history_with_both_bounds_matches_a_plain_list_model(
    max_lines: int, max_bytes: int, single: bool, steps: list[list[int] | str]
) -> None:
    ring = HistoryRing(max_lines, max_bytes=max_bytes)
    everything: list[Message] = []
    for step in steps:
        if step == "compact":
            ring.compact()
        else:
            assert isinstance(step, list)
            sizes = [step[0]] * len(step) if single and step else step
            batch = sized(len(step), start=len(everything), size=sizes, single=single)
            everything.extend(batch)
            ring.extend(batch)
        expected = expected_history(everything, max_lines, max_bytes)
        assert ring.messages() == expected
        assert len(ring) == len(expected)
        assert ring.text_bytes == sum(len(m[4]) for m in expected)


async def test_restored_history_obeys_the_byte_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=64 << 20, sync_ms=50, history_lines=1500)
    spool.open()
    written = sized(200, start=0, size=1000)  # 200 kB of text
    spool.append("ch", written[:100])
    spool.append("ch", written[100:])
    await spool.commit()
    # As after a restart: a new spool over the same files, a router bounded to 20 kB.
    again = Spool(tmp_path / "spool", max_bytes=64 << 20, sync_ms=50, history_lines=1500)
    again.open()
    router = Router(history_lines=1500, history_max_bytes=20_000, spool=again)
    router.apply_channel(ChannelConfig("ch"))
    assert router.restore_history("ch") == 20
    assert router.history("ch") == written[-20:]


async def test_bytes_evicted_from_history_are_counted_in_metrics() -> None:
    router = Router(history_lines=1500, history_max_bytes=5_000)
    router.apply_channel(ChannelConfig("ch"))
    before = limit_refusals("history_max_bytes")
    router.publish("ch", sized(10, start=0, size=1000))
    router.publish("ch", sized(3, start=10, size=1000))
    await router.compact_histories()
    assert limit_refusals("history_max_bytes") - before == 8
    assert [m[0] for m in router.history("ch")] == [1_000_000 + n for n in range(8, 13)]


def test_adding_and_revoking_tokens_reindexes_only_what_changed() -> None:
    router = Router()
    router.apply_channel(ChannelConfig("ch", {"a": "t.1", "b": "t.2"}))
    router.apply_channel(ChannelConfig("ch", {"a": "t.1", "b": "t.2", "c": "t.3"}))
    assert router.lookup_token("t.3") == TokenInfo("ch", b"c")
    assert router.lookup_token("t.1") == TokenInfo("ch", b"a")
    router.apply_channel(ChannelConfig("ch", {"b": "t.2", "c": "t.9"}))  # a revoked, c rotated
    assert router.lookup_token("t.1") is None
    assert router.lookup_token("t.3") is None
    assert router.lookup_token("t.9") == TokenInfo("ch", b"c")
    assert router.counts().tokens == 2
    router.remove_channel("ch")
    assert router.lookup_token("t.2") is None
    assert router.counts().tokens == 0


# -- the session registry ------------------------------------------------------------------


def test_a_channel_at_its_session_limit_replaces_its_least_recently_used_idle_session() -> None:
    registry = SessionRegistry(ttl_s=360)
    first = registry.create(SessionSpec("ch"), 0.0, max_per_channel=2)
    second = registry.create(SessionSpec("ch"), 1.0, max_per_channel=2)
    other = registry.create(SessionSpec("other"), 1.0, max_per_channel=2)
    assert registry.begin_fetch(first, 2.0) is not None  # first is used: second is the LRU
    registry.end_fetch(first, 3.0)
    registry.create(SessionSpec("ch"), 4.0, max_per_channel=2)
    assert registry.begin_fetch(second, 5.0) is None
    assert registry.channel_sessions("ch") == 2
    assert registry.begin_fetch(other, 5.0) is not None  # other channels are not touched


def test_a_channel_whose_sessions_are_all_being_read_refuses_a_new_one() -> None:
    registry = SessionRegistry(ttl_s=360)
    sessions = [registry.create(SessionSpec("ch"), 0.0, max_per_channel=3) for _ in range(3)]
    for sid in sessions:
        assert registry.begin_fetch(sid, 1.0) is not None
    with pytest.raises(SessionLimitReached, match=r"--max-sessions-per-channel=3") as caught:
        registry.create(SessionSpec("ch"), 2.0, max_per_channel=3)
    assert caught.value.limit == "max_sessions_per_channel"
    registry.create(SessionSpec("elsewhere"), 2.0, max_per_channel=3)
    registry.end_fetch(sessions[0], 3.0)
    registry.create(SessionSpec("ch"), 4.0, max_per_channel=3)  # room again
    assert registry.channel_sessions("ch") == 3


def test_expired_sessions_of_the_channel_make_room_first() -> None:
    registry = SessionRegistry(ttl_s=10)
    old = registry.create(SessionSpec("ch"), 0.0, max_per_channel=2)
    busy = registry.create(SessionSpec("ch"), 5.0, max_per_channel=2)
    assert registry.begin_fetch(busy, 6.0) is not None
    registry.create(SessionSpec("ch"), 20.0, max_per_channel=2)
    assert registry.begin_fetch(old, 20.0) is None
    assert len(registry) == 2


def test_one_session_url_serves_at_most_max_clients_fetches_at_once() -> None:
    registry = SessionRegistry()
    sid = registry.create(SessionSpec("ch", tail=True), 0.0)
    for _ in range(4):
        assert registry.begin_fetch(sid, 1.0, max_clients=4) is not None
    with pytest.raises(SessionLimitReached, match=r"4 clients .*--max-clients-per-session=4"):
        registry.begin_fetch(sid, 1.0, max_clients=4)
    assert registry.fetches == 4
    registry.end_fetch(sid, 2.0)
    assert registry.begin_fetch(sid, 2.0, max_clients=4) is not None
    for _ in range(4):
        registry.end_fetch(sid, 3.0)
    registry.end_fetch(sid, 3.0)  # one end too many is ignored, never negative
    assert registry.fetches == 0


def test_the_router_wide_fetch_cap_holds_across_sessions_and_channels() -> None:
    registry = SessionRegistry(max_fetches=3)
    sessions = [registry.create(SessionSpec(f"ch{n}"), 0.0) for n in range(4)]
    for sid in sessions[:3]:
        assert registry.begin_fetch(sid, 1.0, max_clients=4) is not None
    with pytest.raises(RegistryFull, match="3 session fetches"):
        registry.begin_fetch(sessions[3], 1.0, max_clients=4)
    registry.end_fetch(sessions[0], 2.0)
    assert registry.begin_fetch(sessions[3], 2.0, max_clients=4) is not None


def test_the_registry_stays_bounded_across_many_channels() -> None:
    registry = SessionRegistry(max_sessions=100)
    for n in range(1000):
        registry.create(SessionSpec(f"ch{n}"), float(n), max_per_channel=50)
    assert len(registry) == 100
    assert sum(registry.channel_sessions(f"ch{n}") for n in range(1000)) == 100
    registry.forget_channel("ch999")
    assert registry.channel_sessions("ch999") == 0
    assert len(registry) == 99


# -- the API in-process --------------------------------------------------------------------


def set_limits(api: ApiHarness, **limits: int) -> None:
    api.state.config = dataclasses.replace(api.state.config, **limits)


async def test_put_of_a_new_channel_past_max_channels_is_422_naming_the_flag(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api:
        set_limits(api, max_channels=2)
        await api.create_channel("a", [])
        await api.create_channel("b", [])
        before = limit_refusals("max_channels")
        response = await api.client.put("/v3/channels/c", json={"tokens": ["app"]}, headers=ADMIN)
        assert response.status_code == 422
        assert response.json()["error"] == (
            "channel limit reached: 2 channels exist, the limit is 2 (--max-channels); "
            "delete a channel first"
        )
        assert limit_refusals("max_channels") - before == 1
        assert await api.store.list_channel_names() == ["a", "b"]  # nothing half-made
        assert not api.router.has_channel("c")
        # Updating an existing channel is no creation; deleting one makes room.
        again = await api.client.put("/v3/channels/a", json={"tokens": ["x"]}, headers=ADMIN)
        assert again.status_code == 200
        assert (await api.client.delete("/v3/channels/b", headers=ADMIN)).status_code == 204
        await api.create_channel("c", ["app"])


async def test_tokens_past_max_tokens_per_channel_are_422_by_put_and_by_post(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api:
        set_limits(api, max_tokens_per_channel=3)
        before = limit_refusals("max_tokens_per_channel")
        response = await api.client.put(
            "/v3/channels/c", json={"tokens": ["a", "b", "c", "d"]}, headers=ADMIN
        )
        assert response.status_code == 422
        assert (
            "would have 4 tokens, the limit is 3 (--max-tokens-per-channel)"
            in (response.json()["error"])
        )
        assert await api.store.list_channel_names() == []
        created = await api.create_channel("c", ["a", "b"])
        post = await api.client.post("/v3/channels/c/tokens", json={"name": "c"}, headers=ADMIN)
        assert post.status_code == 201
        post = await api.client.post("/v3/channels/c/tokens", json={"name": "d"}, headers=ADMIN)
        assert post.status_code == 422
        assert "would have 4 tokens, the limit is 3" in post.json()["error"]
        # An existing name is no new token: it is answered as before.
        same = await api.client.post("/v3/channels/c/tokens", json={"name": "a"}, headers=ADMIN)
        assert same.status_code == 200
        assert same.json()["token"] == created["tokens"]["a"]  # type: ignore[index]
        assert limit_refusals("max_tokens_per_channel") - before == 2
        config = await api.store.get_channel("c")
        assert config is not None
        assert sorted(config.tokens) == ["a", "b", "c"]
        assert all(api.router.lookup_token(t) is not None for t in config.tokens.values())


async def test_a_drain_past_the_limit_names_its_flag_and_is_counted(tmp_path: Path) -> None:
    async with running_api(tmp_path, max_drains_per_channel=1) as api:
        await api.create_channel("c", ["app"])
        url = "/v3/channels/c/drains"
        first = await api.client.post(url, json={"url": "https://a.example/"}, headers=ADMIN)
        assert first.status_code == 201
        before = limit_refusals("max_drains_per_channel")
        second = await api.client.post(url, json={"url": "https://b.example/"}, headers=ADMIN)
        assert second.status_code == 422
        assert "(--max-drains-per-channel)" in second.json()["error"]
        assert limit_refusals("max_drains_per_channel") - before == 1


async def new_session(api: ApiHarness, **body: object) -> str:
    response = await api.client.post("/v3/sessions", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    url: str = response.json()["url"]
    return url


async def test_sessions_past_the_channel_limit_are_429_while_all_are_being_read(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api:
        set_limits(api, max_sessions_per_channel=2)
        await api.create_channel("c", ["app"])
        readers = [
            await StreamingGet.open(await new_session(api, channel_id="c", num=0, tail=True))
            for _ in range(2)
        ]
        assert [reader.status for reader in readers] == [200, 200]
        before = limit_refusals("max_sessions_per_channel")
        response = await api.client.post("/v3/sessions", json={"channel_id": "c"}, headers=ADMIN)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "5"
        assert "--max-sessions-per-channel=2" in response.json()["error"]
        assert limit_refusals("max_sessions_per_channel") - before == 1
        await readers[0].aclose()
        with trio.fail_after(10):
            while api.state.sessions.fetches > 1:
                await trio.sleep(0.01)
        await new_session(api, channel_id="c")  # an idle one is replaced: room again
        await readers[1].aclose()


async def test_one_session_url_serves_max_clients_and_the_next_is_429(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        set_limits(api, max_clients_per_session=3)
        await api.create_channel("c", ["app"])
        url = await new_session(api, channel_id="c", num=0, tail=True)
        readers = [await StreamingGet.open(url) for _ in range(3)]
        assert [reader.status for reader in readers] == [200, 200, 200]
        before = limit_refusals("max_clients_per_session")
        refused = await api.client.get(url)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"] == (
            "client limit reached: 3 clients are reading this session URL "
            "(--max-clients-per-session=3); close one or create another session"
        )
        assert limit_refusals("max_clients_per_session") - before == 1
        assert api.router.counts().sessions == 3  # the refused one opened no tail
        api.router.publish("c", [(1, 190, b"app", b"web.1", b"still flowing")])
        for reader in readers:
            with trio.fail_after(10):
                while b"still flowing" not in reader.received:
                    await reader.read_more()
        await readers[0].aclose()
        with trio.fail_after(10):
            while api.state.sessions.fetches > 2:
                await trio.sleep(0.01)
        replacement = await StreamingGet.open(url)
        assert replacement.status == 200
        for reader in [*readers[1:], replacement]:
            await reader.aclose()


def test_older_batches_are_compacted_on_extend_while_the_byte_bound_trims() -> None:
    ring = HistoryRing(1500, max_bytes=50_000)
    everything: list[Message] = []
    for n in range(30):
        batch = sized(100, start=n * 100, size=100)
        everything.extend(batch)
        ring.extend(batch)
    assert ring.messages() == expected_history(everything, 1500, 50_000)
    # Only the newest batch is still held as tuples: the older ones were compacted on the
    # way, as without a byte bound.
    assert ring.fresh_lines == 100
