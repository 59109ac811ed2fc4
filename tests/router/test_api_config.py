"""API: auth, channels, tokens, drains, healthcheck and metrics (DESIGN section 3), over loopback.

Expected bodies and codes come from the DESIGN 3 table; the router's in-memory index is
checked after each write so "changes take effect at once" is tested, not assumed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
from controlplane_helpers import ADMIN, AUTH_KEY, basic, running_api
from dataplane_helpers import RecordingDrainFactory, make_messages

from logplex.fanout.router import Router

TOKEN = re.compile(r"t\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
DRAIN_TOKEN = re.compile(r"d\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
ADMIN_ENDPOINTS = [
    ("GET", "/v3/channels"),
    ("PUT", "/v3/channels/c"),
    ("GET", "/v3/channels/c"),
    ("DELETE", "/v3/channels/c"),
    ("POST", "/v3/channels/c/tokens"),
    ("POST", "/v3/channels/c/drains"),
    ("GET", "/v3/channels/c/drains"),
    ("PUT", "/v3/channels/c/drains/1"),
    ("DELETE", "/v3/channels/c/drains/1"),
    ("GET", "/v3/channels/c/logs"),
    ("POST", "/v3/sessions"),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {AUTH_KEY}x"},
        basic("user", "wrong"),
        {"Authorization": "Basic !!notbase64"},
        {"Authorization": f"Token {AUTH_KEY}"},
    ],
    ids=["none", "wrong-bearer", "longer-bearer", "wrong-basic", "bad-basic", "other-scheme"],
)
async def test_every_admin_endpoint_refuses_a_missing_or_wrong_key(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async with running_api(tmp_path) as api:
        for method, path in ADMIN_ENDPOINTS:
            response = await api.client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"] == "Basic realm=Logplex"
            assert "API key" in response.json()["error"]
        assert await api.store.list_channel_names() == []


async def test_bearer_and_basic_with_the_key_as_password_are_accepted(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        for headers in (ADMIN, basic("", AUTH_KEY), basic("anyone", AUTH_KEY)):
            response = await api.client.get("/v3/channels", headers=headers)
            assert response.status_code == 200
            assert response.json() == []


async def test_put_channel_creates_201_then_updates_200(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        response = await api.client.put(
            "/v3/channels/app1", json={"tokens": ["app", "heroku"]}, headers=ADMIN
        )
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"channel", "tokens", "drains"}
        assert body["channel"] == "app1"
        assert body["drains"] == []
        assert set(body["tokens"]) == {"app", "heroku"}
        assert all(TOKEN.fullmatch(t) for t in body["tokens"].values())
        # The router writes with the new tokens at once.
        info = api.router.lookup_token(body["tokens"]["heroku"])
        assert info is not None
        assert (info.channel, info.source) == ("app1", b"heroku")

        response = await api.client.put(
            "/v3/channels/app1", json={"tokens": ["app"]}, headers=ADMIN
        )
        assert response.status_code == 200
        assert response.json()["tokens"] == {"app": body["tokens"]["app"]}
        assert api.router.lookup_token(body["tokens"]["heroku"]) is None  # revoked at once

        # An empty body means no tokens (Logplex).
        response = await api.client.put("/v3/channels/empty", headers=ADMIN)
        assert response.status_code == 201
        assert response.json() == {"channel": "empty", "tokens": {}, "drains": []}


@pytest.mark.parametrize(
    ("path", "content", "reason"),
    [
        ("/v3/channels/c", b"{not json", "not valid JSON"),
        ("/v3/channels/c", b"[1, 2]", "JSON object"),
        ("/v3/channels/c", b'{"tokens": "app"}', "list of token names"),
        ("/v3/channels/c", b'{"tokens": [1]}', "list of token names"),
        ("/v3/channels/c", b'{"tokens": ["has space"]}', "APP-NAME"),
        ("/v3/channels/c", b'{"tokens": ["' + b"x" * 49 + b'"]}', "APP-NAME"),
        ("/v3/channels/bad%20name", b'{"tokens": []}', "invalid channel name"),
        ("/v3/channels/-x", b'{"tokens": []}', "invalid channel name"),
    ],
)
async def test_put_channel_bad_payload_is_400_saying_why(
    tmp_path: Path, path: str, content: bytes, reason: str
) -> None:
    async with running_api(tmp_path) as api:
        response = await api.client.put(path, content=content, headers=ADMIN_JSON)
        assert response.status_code == 400
        assert reason in response.json()["error"]
        assert await api.store.list_channel_names() == []


async def test_oversize_json_body_is_413(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        big = b'{"tokens": ["app"], "pad": "' + b"x" * (64 * 1024) + b'"}'
        response = await api.client.put("/v3/channels/c", content=big, headers=ADMIN_JSON)
        assert response.status_code == 413
        assert "limit" in response.json()["error"]


async def test_get_list_and_delete_channel(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        created = await api.create_channel("b", ["app"])
        await api.create_channel("a", [])
        response = await api.client.get("/v3/channels/b", headers=ADMIN)
        assert response.status_code == 200
        assert response.json() == created
        assert (await api.client.get("/v3/channels", headers=ADMIN)).json() == ["a", "b"]

        response = await api.client.get("/v3/channels/nope", headers=ADMIN)
        assert response.status_code == 404
        assert response.json() == {"error": "channel 'nope' not found"}

        api.router.publish("b", [(1, 190, b"app", b"web.1", b"hello")])
        response = await api.client.delete("/v3/channels/b", headers=ADMIN)
        assert response.status_code == 204
        assert response.content == b""
        assert not api.router.has_channel("b")
        assert api.router.lookup_token(created["tokens"]["app"]) is None  # type: ignore[index]
        assert (await api.client.get("/v3/channels/b", headers=ADMIN)).status_code == 404
        assert (await api.client.delete("/v3/channels/b", headers=ADMIN)).status_code == 404
        # Re-created: its history went with the old channel.
        await api.create_channel("b", [])
        assert api.router.history("b") == []


async def test_post_token(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        response = await api.client.post(
            "/v3/channels/c/tokens", json={"name": "router"}, headers=ADMIN
        )
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"name", "token"}
        assert body["name"] == "router"
        assert TOKEN.fullmatch(body["token"])
        info = api.router.lookup_token(body["token"])
        assert info is not None
        assert (info.channel, info.source) == ("c", b"router")
        # Asking again for the same name returns the same token (200, nothing created).
        again = await api.client.post(
            "/v3/channels/c/tokens", json={"name": "router"}, headers=ADMIN
        )
        assert again.status_code == 200
        assert again.json() == body

        for payload, reason in (({}, "name the token"), ({"name": "a b"}, "APP-NAME")):
            response = await api.client.post("/v3/channels/c/tokens", json=payload, headers=ADMIN)
            assert response.status_code == 400
            assert reason in response.json()["error"]
        response = await api.client.post(
            "/v3/channels/nope/tokens", json={"name": "app"}, headers=ADMIN
        )
        assert response.status_code == 404


async def test_drains_add_list_update_remove(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", ["app"])
        response = await api.client.post(
            "/v3/channels/c/drains", json={"url": "syslog+tls://logs.example:6514"}, headers=ADMIN
        )
        assert response.status_code == 201
        drain = response.json()
        assert set(drain) == {"id", "token", "url"}
        assert isinstance(drain["id"], int)
        assert DRAIN_TOKEN.fullmatch(drain["token"])
        assert drain["url"] == "syslog+tls://logs.example:6514"
        assert response.headers["location"] == f"{api.base_url}/v3/channels/c/drains/{drain['id']}"

        channel = (await api.client.get("/v3/channels/c", headers=ADMIN)).json()
        assert channel["drains"] == [drain]

        response = await api.client.get("/v3/channels/c/drains", headers=ADMIN)
        assert response.status_code == 200
        (listed,) = response.json()
        assert {k: listed[k] for k in ("id", "token", "url")} == drain
        status = listed["status"]
        assert set(status) == {
            "state",
            "delivered",
            "dropped",
            "buffered",
            "last_error",
            "last_success_at",
        }
        assert status["state"] in {"pending", "up", "degraded", "down"}

        response = await api.client.put(
            f"/v3/channels/c/drains/{drain['id']}",
            json={"url": "https://user:p%3Ass@logs.example/in?x=1"},
            headers=ADMIN,
        )
        assert response.status_code == 200
        assert response.json() == {**drain, "url": "https://user:p%3Ass@logs.example/in?x=1"}

        response = await api.client.delete(f"/v3/channels/c/drains/{drain['id']}", headers=ADMIN)
        assert response.status_code == 204
        assert (await api.client.get("/v3/channels/c/drains", headers=ADMIN)).json() == []
        response = await api.client.delete(f"/v3/channels/c/drains/{drain['id']}", headers=ADMIN)
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"url": "ftp://x.example/"}, "ftp"),
        ({"url": "syslog://"}, ""),
        ({"url": ""}, "drain URL"),
        ({}, "drain URL"),
        ({"url": 5}, "drain URL"),
    ],
)
async def test_invalid_drain_url_is_400_naming_the_problem(
    tmp_path: Path, payload: dict[str, object], reason: str
) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        response = await api.client.post("/v3/channels/c/drains", json=payload, headers=ADMIN)
        assert response.status_code == 400
        error = response.json()["error"]
        assert reason in error
        assert len(error) > 10
        # The same rule guards updates.
        added = await api.client.post(
            "/v3/channels/c/drains", json={"url": "syslog://ok.example"}, headers=ADMIN
        )
        drain_id = added.json()["id"]
        response = await api.client.put(
            f"/v3/channels/c/drains/{drain_id}", json=payload, headers=ADMIN
        )
        assert response.status_code == 400


async def test_drain_error_rows_404_409_422(tmp_path: Path) -> None:
    async with running_api(tmp_path, max_drains_per_channel=2) as api:
        await api.create_channel("c", [])
        await api.create_channel("other", [])
        url = {"url": "syslog://a.example:601"}
        response = await api.client.post("/v3/channels/nope/drains", json=url, headers=ADMIN)
        assert response.status_code == 404
        first = (await api.client.post("/v3/channels/c/drains", json=url, headers=ADMIN)).json()
        response = await api.client.post("/v3/channels/c/drains", json=url, headers=ADMIN)
        assert response.status_code == 409
        assert "already has drain" in response.json()["error"]
        second = await api.client.post(
            "/v3/channels/c/drains", json={"url": "syslog://b.example"}, headers=ADMIN
        )
        assert second.status_code == 201
        response = await api.client.post(
            "/v3/channels/c/drains", json={"url": "syslog://c.example"}, headers=ADMIN
        )
        assert response.status_code == 422
        assert "maximum is 2" in response.json()["error"]

        # PUT: duplicate of another drain's URL is 409; unknown ids and channels 404.
        response = await api.client.put(
            f"/v3/channels/c/drains/{second.json()['id']}", json=url, headers=ADMIN
        )
        assert response.status_code == 409
        foreign = (
            await api.client.post(
                "/v3/channels/other/drains", json={"url": "syslog://o.example"}, headers=ADMIN
            )
        ).json()
        for path in (
            f"/v3/channels/c/drains/{foreign['id']}",
            "/v3/channels/c/drains/999999",
            "/v3/channels/c/drains/abc",
            f"/v3/channels/nope/drains/{first['id']}",
        ):
            response = await api.client.put(path, json={"url": "syslog://z.example"}, headers=ADMIN)
            assert response.status_code == 404, path
            assert (await api.client.delete(path, headers=ADMIN)).status_code == 404, path
        assert (await api.client.get("/v3/channels/nope/drains", headers=ADMIN)).status_code == 404


async def test_healthcheck_is_503_until_ready(tmp_path: Path) -> None:
    async with running_api(tmp_path, ready=False) as api:
        response = await api.client.get("/healthcheck")
        assert response.status_code == 503
        assert "error" in response.json()
        api.set_ready(True)
        response = await api.client.get("/healthcheck")
        assert response.status_code == 200
        assert response.text == "OK"
        assert response.headers["Logplex-Spool"] == "off"  # this router has no spool
        spool = await api.client.get("/healthcheck/spool")
        assert spool.json() == {"mode": "off"}


async def test_metrics_without_auth_in_prometheus_text(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        response = await api.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        assert "# TYPE logplex_ingest_messages_total counter" in response.text


async def test_unknown_paths_and_methods_answer_json_errors(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        response = await api.client.get("/v4/nothing", headers=ADMIN)
        assert response.status_code == 404
        assert "no such endpoint" in response.json()["error"]
        response = await api.client.post("/v3/channels", headers=ADMIN)
        assert response.status_code == 405
        assert "not allowed" in response.json()["error"]


async def test_drain_list_reports_the_running_drains_status(tmp_path: Path) -> None:
    factory = RecordingDrainFactory()
    async with running_api(tmp_path, router=Router(drain_factory=factory)) as api:
        await api.create_channel("c", ["app"])
        added = await api.client.post(
            "/v3/channels/c/drains", json={"url": "syslog://a.example"}, headers=ADMIN
        )
        drain_id = added.json()["id"]
        drain = factory.latest("c", drain_id)
        assert drain.context.url == "syslog://a.example"  # started at once by the API write
        api.router.publish("c", make_messages(3))
        with trio.fail_after(5):
            while len(drain.delivered) < 3:
                await trio.sleep(0.01)
        (listed,) = (await api.client.get("/v3/channels/c/drains", headers=ADMIN)).json()
        assert listed["status"]["state"] == "up"
        assert listed["status"]["delivered"] == 3

        # A URL change replaces the running drain; removal stops it.
        await api.client.put(
            f"/v3/channels/c/drains/{drain_id}", json={"url": "syslog://b.example"}, headers=ADMIN
        )
        assert factory.latest("c", drain_id).context.url == "syslog://b.example"
        await api.client.delete(f"/v3/channels/c/drains/{drain_id}", headers=ADMIN)
        assert api.router.drain_statuses("c") == {}


async def test_deeply_nested_json_is_400_not_a_crash(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        body = b"[" * 30000 + b"]" * 30000
        response = await api.client.put("/v3/channels/c", content=body, headers=ADMIN_JSON)
        assert response.status_code == 400
        assert "error" in response.json()
