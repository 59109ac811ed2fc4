"""Sessions shared through NATS KV (KvSessions), and the API of two routers on one NATS.

The first tests need no NATS (the spec's JSON form, the registry's adopt/discard); the
others run real nats-server processes (tests/natsd.py). The API tests serve the real app with
a real ``Router`` on hypercorn over loopback, with ``KvConfigStore`` and ``KvSessions`` in
place of the SQLite store and the router-local sessions, as cluster mode has them.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypothesis import given
from hypothesis import strategies as st

from logplex.api.app import create_app
from logplex.api.base import ApiConfig, ApiState
from logplex.api.registry import (
    MAX_FILTER_CHARS,
    SESSION_TTL_S,
    SessionLimitReached,
    SessionRegistry,
    SessionSpec,
    parse_session_request,
    session_spec_json,
)
from logplex.cluster import names
from logplex.cluster.bridge import BridgeSettings, NatsBridge
from logplex.cluster.kvconfig import KvConfigStore
from logplex.cluster.sessions import KvSessions
from logplex.codecs.records import Message
from logplex.fanout.router import Router
from tests.natsd import NatsNode

DEADLINE_S = 20.0
AUTH_KEY = "cluster-test-admin-key-0123"
ADMIN = {"Authorization": f"Bearer {AUTH_KEY}"}

filters = st.none() | st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126),
    min_size=1,
    max_size=MAX_FILTER_CHARS,
).map(str.encode)
specs = st.builds(
    SessionSpec,
    channel=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True),
    num=st.integers(min_value=0, max_value=10**6),
    ps=filters,
    source=filters,
    tail=st.booleans(),
)


# -- without NATS ----------------------------------------------------------------------------


@given(specs)
def test_a_spec_survives_its_json_form(spec: SessionSpec) -> None:
    assert parse_session_request(session_spec_json(spec)) == spec


def test_adopt_registers_under_the_given_id_with_the_same_bounds() -> None:
    registry = SessionRegistry(ttl_s=360)
    spec = SessionSpec("c", num=5)
    foreign = str(uuid.uuid4())
    registry.adopt(foreign, spec, 0.0, max_per_channel=2)
    assert registry.begin_fetch(foreign, 1.0) == spec
    registry.adopt(foreign, SessionSpec("other"), 2.0)  # known already: left as it is
    assert len(registry) == 1
    # The per-channel bound holds for adopted sessions: the one being read is not evicted.
    registry.create(spec, 3.0, max_per_channel=2)
    with pytest.raises(SessionLimitReached):
        registry.adopt(str(uuid.uuid4()), spec, 4.0, max_per_channel=1)
    registry.discard(foreign)  # being read: kept
    assert registry.begin_fetch(foreign, 5.0) == spec
    registry.end_fetch(foreign, 6.0)
    registry.end_fetch(foreign, 6.0)
    registry.discard(foreign)
    assert registry.begin_fetch(foreign, 7.0) is None


# -- KvSessions on one NATS --------------------------------------------------------------------


def kv_sessions(bridge: NatsBridge, ttl_s: float = SESSION_TTL_S) -> KvSessions[SessionSpec]:
    return KvSessions(
        bridge, ttl_s=ttl_s, to_json=session_spec_json, from_json=parse_session_request
    )


async def start_sessions(
    nursery: trio.Nursery, node: NatsNode, ttl_s: float = SESSION_TTL_S
) -> tuple[NatsBridge, KvSessions[SessionSpec]]:
    bridge = NatsBridge(BridgeSettings(servers=(node.url,)))
    await nursery.start(bridge.run)
    sessions = kv_sessions(bridge, ttl_s)
    await nursery.start(sessions.run)
    return bridge, sessions


async def test_a_session_put_on_one_router_is_found_on_another(
    nats_node: NatsNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="logplex.cluster.sessions")
    async with trio.open_nursery() as nursery:
        bridge_a, a = await start_sessions(nursery, nats_node)
        _, b = await start_sessions(nursery, nats_node)
        spec = SessionSpec("web:app", num=7, ps=b"web.1", source=None, tail=True)
        session_id = str(uuid.uuid4())
        await a.put(session_id, spec)
        assert await b.get(session_id) == spec
        assert await b.get(str(uuid.uuid4())) is None
        # Ids that are not canonical uuids never reach NATS (no key could be made of them).
        for odd in ["*", ">", "a.b", session_id.upper(), session_id + " ", ""]:
            assert await b.get(odd) is None
        with pytest.raises(ValueError, match="canonical uuid"):
            await a.put("a.>", spec)
        # A value that is not a session reads as missing, logged once per key.
        foreign = str(uuid.uuid4())
        await bridge_a.kv_put(names.SESSIONS_BUCKET, names.session_key(foreign), b'{"num": 1}')
        assert await b.get(foreign) is None
        assert await b.get(foreign) is None
        assert len([r for r in caplog.records if names.session_key(foreign) in r.getMessage()]) == 1
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_session_expires_after_the_bucket_ttl(nats_node: NatsNode) -> None:
    async with trio.open_nursery() as nursery:
        _, a = await start_sessions(nursery, nats_node, ttl_s=1.0)
        session_id = str(uuid.uuid4())
        await a.put(session_id, SessionSpec("c"))
        assert await a.get(session_id) == SessionSpec("c")
        with trio.fail_after(DEADLINE_S):
            while await a.get(session_id) is not None:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


# -- two routers' APIs on one NATS -------------------------------------------------------------


@dataclass
class ClusterRouter:
    router: Router
    store: KvConfigStore
    state: ApiState
    client: httpx.AsyncClient
    base_url: str


@asynccontextmanager
async def cluster_router(node: NatsNode) -> AsyncIterator[ClusterRouter]:
    """One router of a cluster as serve would wire it: the KV store applies to the router,
    the API writes through it and shares sessions through KvSessions."""
    async with trio.open_nursery() as nursery:
        bridge = NatsBridge(BridgeSettings(servers=(node.url,)))
        await nursery.start(bridge.run)
        router = Router()
        await nursery.start(router.run)
        store = KvConfigStore(bridge, apply=router.apply_channel, remove=router.remove_channel)
        await nursery.start(store.run)
        sessions = kv_sessions(bridge)
        await nursery.start(sessions.run)
        config = ApiConfig(auth_key=AUTH_KEY, public_url="http://placeholder")
        app = create_app(store=store, router=router, config=config)  # type: ignore[arg-type]
        state: ApiState = app.state.api
        state.session_directory = sessions
        listener = socket.create_server(("127.0.0.1", 0))
        hyper = HypercornConfig()
        hyper.bind = [f"fd://{listener.detach()}"]
        hyper.accesslog = None
        hyper.graceful_timeout = 0.1
        binds: list[str] = await nursery.start(serve, app, hyper)
        state.config = dataclasses.replace(config, public_url=binds[0])
        app.state.ready = True
        async with httpx.AsyncClient(base_url=binds[0], timeout=30) as client:
            yield ClusterRouter(router, store, state, client, binds[0])
        nursery.cancel_scope.cancel()


def msg(i: int) -> Message:
    return (1_800_000_000_000_000 + i, 190, b"app", b"web.1", b"line %d" % i)


async def eventually_has_channel(member: ClusterRouter, name: str, present: bool) -> None:
    with trio.fail_after(DEADLINE_S):
        while member.router.has_channel(name) != present:
            await trio.sleep(0.01)


async def test_api_writes_and_sessions_work_on_any_router(nats_node: NatsNode) -> None:
    async with cluster_router(nats_node) as a, cluster_router(nats_node) as b:
        response = await a.client.put(
            "/v3/channels/web:app", json={"tokens": ["app"]}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        assert a.router.has_channel("web:app")  # applied before the answer
        await eventually_has_channel(b, "web:app", True)
        response = await b.client.get("/v3/channels/web:app", headers=ADMIN)
        assert response.json()["tokens"].keys() == {"app"}

        response = await b.client.post(
            "/v3/channels/web:app/drains", json={"url": "https://h.example/"}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        drain_id = response.json()["id"]
        response = await a.client.get("/v3/channels/web:app/drains", headers=ADMIN)
        drains = response.json()
        with trio.fail_after(DEADLINE_S):
            while not drains:
                await trio.sleep(0.01)
                drains = (await a.client.get("/v3/channels/web:app/drains", headers=ADMIN)).json()
        assert [d["id"] for d in drains] == [drain_id]

        # A session made on A is fetched on B, which knew nothing of it.
        response = await a.client.post(
            "/v3/sessions", json={"channel_id": "web:app", "num": 2}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        path = httpx.URL(response.json()["url"]).path
        b.router.publish("web:app", [msg(i) for i in range(3)])
        response = await b.client.get(path)
        assert response.status_code == 200
        lines = response.content.splitlines()
        assert len(lines) == 2  # num=2 of B's history
        assert lines[0].endswith(b" app[web.1]: line 1")
        assert lines[1].endswith(b" app[web.1]: line 2")
        assert len(b.state.sessions) == 1  # adopted: fetched again without NATS
        assert (await b.client.get(path)).status_code == 200
        unknown = f"/sessions/{uuid.uuid4()}"
        assert (await b.client.get(unknown)).status_code == 404

        # A delete on B is applied on A by A's watcher (the handler on B applies nothing).
        response = await b.client.delete("/v3/channels/web:app", headers=ADMIN)
        assert response.status_code == 204
        assert not b.router.has_channel("web:app")
        await eventually_has_channel(a, "web:app", False)
        assert (await a.client.get("/v3/channels", headers=ADMIN)).json() == []


async def test_api_answers_503_while_nats_is_down(nats_node: NatsNode) -> None:
    async with cluster_router(nats_node) as a:
        response = await a.client.put("/v3/channels/c", json={"tokens": []}, headers=ADMIN)
        assert response.status_code == 201, response.text
        nats_node.stop()
        response = await a.client.put("/v3/channels/d", json={"tokens": []}, headers=ADMIN)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "NATS" in response.json()["error"]
        response = await a.client.post("/v3/sessions", json={"channel_id": "c"}, headers=ADMIN)
        assert response.status_code == 503
        assert len(a.state.sessions) == 0  # not half-made: gone from this router too
        response = await a.client.get(f"/sessions/{uuid.uuid4()}")
        assert response.status_code == 503  # unknown here, and NATS cannot say
        # Reads are served from memory meanwhile.
        response = await a.client.get("/v3/channels", headers=ADMIN)
        assert response.json() == ["c"]
        nats_node.start()
