"""API request hygiene: Content-Type of JSON bodies (415), the request-body deadline (408),
the POST /logs body budget (503) and the block after too many failed authentications (429).

The decisions are table-tested as plain functions; the app is driven either over real
loopback sockets (``running_api``) or, where a deadline matters, straight through ASGI under
trio's virtual clock, so a body trickled at one byte per second costs no real time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from controlplane_helpers import ADMIN, AUTH_KEY, ApiHarness, basic, running_api
from prometheus_client import REGISTRY

from logplex.api.app import create_app
from logplex.api.auth_failures import AuthFailures
from logplex.api.base import ApiConfig, RefusalLog, json_content_type_problem
from logplex.api.body_budget import (
    BodyBudget,
    BudgetExhausted,
    blocking_limit,
    worst_case_bytes,
)
from logplex.api.logs import INFLATE_STEP_BYTES, GzipTooLarge, inflate_steps
from logplex.config.store import ConfigStore
from logplex.fanout.router import Router

JSON = {"Content-Type": "application/json"}
LOGPLEX1 = {"Content-Type": "application/logplex-1"}
MiB = 1 << 20


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def limit_refusals(limit: str) -> float:
    return sample("logplex_limit_refusals_total", limit=limit)


def body_deadline_closes() -> float:
    return sample("logplex_deadline_closes_total", listener="http", deadline="body")


def frames(texts: list[str], token: str) -> bytes:
    out = b""
    for text in texts:
        frame = f"<134>1 2026-12-03T00:00:00+00:00 host {token} web.1 - {text}".encode()
        out += b"%d %s" % (len(frame), frame)
    return out


async def channel_token(api: ApiHarness) -> str:
    body = await api.create_channel("c", ["app"])
    tokens = body["tokens"]
    assert isinstance(tokens, dict)
    return str(tokens["app"])


def configure(api: ApiHarness, **changes: object) -> None:
    """Change the running app's ApiConfig (and the state built from it)."""
    api.state.config = dataclasses.replace(api.state.config, **changes)  # type: ignore[arg-type]
    config = api.state.config
    api.state.auth_failures = AuthFailures(limit=config.auth_failure_limit)
    api.state.body_budget = BodyBudget(
        max_bytes=config.max_inflate_bytes, max_inflating=config.max_inflating_bodies
    )


# -- Content-Type of JSON bodies -----------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("Application/JSON", True),
        ("application/json; charset=utf-8", True),
        ('application/json;charset="UTF-8"', True),
        ("application/json; charset=utf8", True),
        ("application/json; foo=bar", True),
        ("application/json; charset=iso-8859-1", False),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/xml", False),
        ("text/json", False),
        ("application/jsonx", False),
        ("", False),
        (None, False),
    ],
)
def test_json_content_type_decision(content_type: str | None, accepted: bool) -> None:
    problem = json_content_type_problem(content_type)
    assert (problem is None) == accepted
    if problem is not None:
        assert "application/json" in problem


JSON_ENDPOINTS = [
    ("PUT", "/v3/channels/c", b'{"tokens": ["app"]}'),
    ("POST", "/v3/channels/c/tokens", b'{"name": "web"}'),
    ("POST", "/v3/channels/c/drains", b'{"url": "syslog://a.example"}'),
    ("PUT", "/v3/channels/c/drains/{drain_id}", b'{"url": "syslog://b.example"}'),
    ("POST", "/v3/sessions", b'{"channel_id": "c"}'),
]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=latin-1",
        None,
    ],
)
async def test_json_endpoints_answer_415_unless_the_body_is_application_json(
    tmp_path: Path, content_type: str | None
) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        drain = await api.client.post(
            "/v3/channels/c/drains", json={"url": "syslog://z.example"}, headers=ADMIN
        )
        drain_id = drain.json()["id"]
        before = await api.client.get("/v3/channels/c", headers=ADMIN)
        for method, path, body in JSON_ENDPOINTS:
            headers = dict(ADMIN)
            if content_type is not None:
                headers["Content-Type"] = content_type
            response = await api.client.request(
                method, path.format(drain_id=drain_id), content=body, headers=headers
            )
            assert response.status_code == 415, (method, path, response.text)
            assert "send Content-Type: application/json" in response.json()["error"] or (
                "UTF-8" in response.json()["error"]
            )
        # Nothing was applied.
        after = await api.client.get("/v3/channels/c", headers=ADMIN)
        assert after.json() == before.json()


async def test_json_endpoints_accept_application_json_with_parameters(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        headers = {**ADMIN, "Content-Type": "Application/JSON; charset=UTF-8"}
        response = await api.client.put(
            "/v3/channels/c", content=b'{"tokens": ["app"]}', headers=headers
        )
        assert response.status_code == 201, response.text
        response = await api.client.post(
            "/v3/channels/c/tokens", content=b'{"name": "web"}', headers=headers
        )
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
async def test_an_empty_body_needs_no_content_type(
    tmp_path: Path, content_type: str | None
) -> None:
    # `curl -X PUT URL` sends no body and no type; `curl -X PUT -d '' URL` a form type.
    async with running_api(tmp_path) as api:
        headers = dict(ADMIN)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await api.client.put("/v3/channels/c", content=b"", headers=headers)
        assert response.status_code == 201, response.text
        assert response.json()["tokens"] == {}


# -- the request-body deadline, in virtual time through ASGI ------------------------------


@dataclasses.dataclass
class AsgiAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def asgi_request(
    app: Callable[..., Awaitable[None]],
    method: str,
    path: str,
    headers: dict[str, str],
    parts: list[bytes],
    gap_s: float,
    client: str = "127.0.0.1",
) -> AsgiAnswer:
    """One request straight into the ASGI app; its body parts arrive ``gap_s`` apart, and
    after the last (if the app still reads) the client just stays silent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": (client, 40000),
        "server": ("127.0.0.1", 8001),
    }
    pending = list(parts)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        if not pending:
            await trio.sleep_forever()
        await trio.sleep(gap_s)
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    raw_headers = start["headers"]
    assert isinstance(raw_headers, list)
    body = b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]
    status = start["status"]
    assert isinstance(status, int)
    return AsgiAnswer(status, {k.decode(): v.decode() for k, v in raw_headers}, body)


async def test_a_json_body_trickled_one_byte_per_second_gets_408_at_the_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = await ConfigStore.open(tmp_path / "config.sqlite3")
    config = ApiConfig(auth_key=AUTH_KEY, public_url="http://x", http_body_timeout_s=7.0)
    app = create_app(store=store, router=Router(), config=config)
    body = b'{"tokens": ["app", "web", "worker", "other"]}'
    before = body_deadline_closes()
    started_s = trio.current_time()
    answer = await asgi_request(
        app,
        "PUT",
        "/v3/channels/c",
        {**ADMIN, **JSON, "Content-Length": str(len(body))},
        [bytes([b]) for b in body],
        gap_s=1.0,
    )
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert "did not arrive within 7 s" in answer.body.decode()
    assert trio.current_time() - started_s == pytest.approx(7.0)
    assert body_deadline_closes() == before + 1
    assert await store.list_channel_names() == []
    await store.aclose()


async def test_a_json_body_that_arrives_in_time_is_applied(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = await ConfigStore.open(tmp_path / "config.sqlite3")
    config = ApiConfig(auth_key=AUTH_KEY, public_url="http://x", http_body_timeout_s=30.0)
    router = Router()
    app = create_app(store=store, router=router, config=config)
    body = b'{"tokens": ["app"]}'
    before = body_deadline_closes()
    answer = await asgi_request(
        app,
        "PUT",
        "/v3/channels/c",
        {**ADMIN, **JSON, "Content-Length": str(len(body))},
        [bytes([b]) for b in body],
        gap_s=1.0,  # 19 bytes in 19 s: slow, but inside the deadline
    )
    assert answer.status == 201, answer.body
    assert body_deadline_closes() == before
    await store.aclose()


async def test_a_trickled_logs_body_gets_408_and_the_connection_is_closed(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_token(api)
        configure(api, http_body_timeout_s=0.5)
        url = httpx.URL(api.base_url)
        assert url.port is not None
        auth = basic("token", token)["Authorization"]
        before = body_deadline_closes()
        stream = await trio.open_tcp_stream(url.host, url.port)
        await stream.send_all(
            b"POST /logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/logplex-1\r\n"
            b"Authorization: %s\r\nContent-Length: 1000\r\n\r\n" % auth.encode()
        )

        async def trickle() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while True:  # one byte every 50 ms, more slowly than the deadline allows
                    await stream.send_all(b"x")
                    await trio.sleep(0.05)

        answer = b""
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                while chunk := await stream.receive_some():  # until the router closes
                    answer += chunk
                nursery.cancel_scope.cancel()
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"connection: close" in answer.lower()
        assert b"--http-body-timeout" in answer
        assert body_deadline_closes() == before + 1
        assert api.router.history("c") == []


# -- POST /logs: the body budget ------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "gzip_body", "expected"),
    [
        (1000, False, 2000),  # the pieces read, and their joined copy
        (1000, True, 1000 + 16 * MiB),  # the body, the inflated pieces and their joined copy
        (None, False, 16 * MiB),  # chunked: as large as it may be
        (None, True, 24 * MiB),
        (20 * MiB, False, 16 * MiB),  # refused at 413 before it could take more
    ],
)
def test_worst_case_bytes(declared: int | None, gzip_body: bool, expected: int) -> None:
    assert worst_case_bytes(declared, gzip=gzip_body, max_body_bytes=8 * MiB) == expected


@pytest.mark.parametrize(
    ("held", "inflating", "want", "inflate", "expected"),
    [
        (0, 0, 100, True, None),
        (0, 0, 100 * MiB, True, None),  # alone, anything fits
        (10 * MiB, 0, 54 * MiB, False, None),  # exactly full
        (10 * MiB, 0, 54 * MiB + 1, False, "max_inflate_bytes"),
        (1, 8, 1, True, "max_inflating_bodies"),
        (1, 8, 1, False, None),  # identity bodies take no inflation slot
        (60 * MiB, 8, 8 * MiB, True, "max_inflating_bodies"),
    ],
)
def test_blocking_limit(
    held: int, inflating: int, want: int, inflate: bool, expected: str | None
) -> None:
    assert (
        blocking_limit(
            held_bytes=held,
            inflating=inflating,
            want_bytes=want,
            inflate=inflate,
            max_bytes=64 * MiB,
            max_inflating=8,
        )
        == expected
    )


async def test_a_reservation_waits_for_room_then_gives_up_naming_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = BodyBudget(max_bytes=10 * MiB, max_inflating=1)
    got: list[str] = []

    async def hold(want: int, inflate: bool, for_s: float) -> None:
        async with budget.reserve(want, inflate=inflate, wait_s=1.0):
            got.append(f"in {want}")
            await trio.sleep(for_s)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, 6 * MiB, True, 0.5)
        await trio.sleep(0.1)
        # Waits for the first to leave (0.4 s), then takes its place.
        nursery.start_soon(hold, 5 * MiB, True, 5.0)
        await trio.sleep(0.6)
        assert got == [f"in {6 * MiB}", f"in {5 * MiB}"]
        assert (budget.held_bytes, budget.inflating) == (5 * MiB, 1)
        started_s = trio.current_time()
        with pytest.raises(BudgetExhausted) as slots:
            await hold(1, True, 0)
        assert slots.value.limit == "max_inflating_bodies"
        with pytest.raises(BudgetExhausted) as room:
            await hold(6 * MiB, False, 0)
        assert room.value.limit == "max_inflate_bytes"
        assert trio.current_time() - started_s == pytest.approx(2.0)
        await hold(5 * MiB, False, 0)  # fits beside it: no wait
        assert trio.current_time() - started_s == pytest.approx(2.0)
    assert (budget.held_bytes, budget.inflating) == (0, 0)


async def test_a_gzip_post_past_the_inflation_slots_gets_503_with_retry_after(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_token(api)
        configure(api, max_inflating_bodies=1)
        url = httpx.URL(api.base_url)
        assert url.port is not None
        headers = {**LOGPLEX1, **basic("token", token), "Content-Encoding": "gzip"}
        body = gzip.compress(frames(["one"], "app"))
        before = limit_refusals("max_inflating_bodies")
        # A gzip body whose sender is slow holds the only slot while it is read.
        holder = await trio.open_tcp_stream(url.host, url.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await holder.send_all(
            f"POST /logs HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        with trio.fail_after(10):
            while api.state.body_budget.inflating == 0:
                await trio.sleep(0.01)
        refused = await api.client.post("/logs", content=body, headers=headers)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "--max-inflating-bodies" in refused.json()["error"]
        assert limit_refusals("max_inflating_bodies") == before + 1
        await holder.send_all(body[5:])
        with trio.fail_after(10):
            assert (await holder.receive_some()).startswith(b"HTTP/1.1 204")
        await holder.aclose()
        accepted = await api.client.post("/logs", content=body, headers=headers)
        assert accepted.status_code == 204, accepted.text
        assert [m[4] for m in api.router.history("c")] == [b"one", b"one"]
        assert (api.state.body_budget.held_bytes, api.state.body_budget.inflating) == (0, 0)


async def test_a_body_larger_than_a_small_budget_is_413_naming_the_limit(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_token(api)
        configure(api, max_inflate_bytes=1 * MiB)
        headers = {**LOGPLEX1, **basic("token", token), "Content-Encoding": "gzip"}
        bomb = gzip.compress(b"\0" * (4 * MiB))
        response = await api.client.post("/logs", content=bomb, headers=headers)
        assert response.status_code == 413
        assert str(1 * MiB) in response.json()["error"]


async def test_a_gzip_body_that_inflates_in_several_steps_is_accepted_whole(
    tmp_path: Path,
) -> None:
    # The inflate takes several steps; the result must be the same messages.
    async with running_api(tmp_path) as api:
        token = await channel_token(api)
        texts = [f"line {n} " + "x" * 200 for n in range(6000)]
        body = frames(texts, "app")
        assert INFLATE_STEP_BYTES < len(body) < 8 * MiB
        response = await api.client.post(
            "/logs",
            content=gzip.compress(body),
            headers={**LOGPLEX1, **basic("token", token), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 204, response.text
        history = api.router.history("c")
        assert [m[4] for m in history[-3:]] == [t.encode() for t in texts[-3:]]


async def test_a_gzip_bomb_is_still_413(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_token(api)
        bomb = gzip.compress(b"\0" * (9 * MiB))
        response = await api.client.post(
            "/logs",
            content=bomb,
            headers={**LOGPLEX1, **basic("token", token), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 413
        assert "inflates to more than" in response.json()["error"]
        assert (api.state.body_budget.held_bytes, api.state.body_budget.inflating) == (0, 0)


# -- failed authentications per address -----------------------------------------------------


def test_an_address_is_blocked_at_the_limit_until_its_window_ends() -> None:
    failures = AuthFailures(limit=3, window_s=60.0)
    assert [failures.failed("a", t) for t in (10.0, 20.0)] == [False, False]
    assert failures.blocked_for_s("a", 21.0) is None
    assert failures.failed("a", 30.0) is True  # the third: blocked now
    assert failures.blocked_for_s("a", 30.0) == pytest.approx(40.0)  # window began at 10
    assert failures.blocked_for_s("a", 69.9) == pytest.approx(0.1)
    assert failures.blocked_for_s("b", 30.0) is None  # other addresses are unaffected
    assert failures.blocked_for_s("a", 70.0) is None  # the window is over
    assert len(failures) == 0
    assert failures.failed("a", 71.0) is False  # a fresh window
    assert failures.blocked_for_s("a", 72.0) is None


def test_failures_past_the_limit_report_the_block_only_once() -> None:
    failures = AuthFailures(limit=2)
    assert [failures.failed("a", float(t)) for t in range(5)] == [False, True, False, False, False]


def test_the_table_of_addresses_is_bounded_forgetting_the_oldest_window() -> None:
    failures = AuthFailures(limit=2, max_addresses=3)
    for number, address in enumerate(("a", "b", "c")):
        failures.failed(address, float(number))
        failures.failed(address, float(number))
    failures.failed("d", 5.0)  # evicts "a", whose window began first
    assert len(failures) == 3
    assert failures.blocked_for_s("a", 6.0) is None
    assert failures.blocked_for_s("b", 6.0) is not None
    assert failures.blocked_for_s("c", 6.0) is not None


def test_block_lines_are_capped_per_interval_for_all_addresses() -> None:
    refusals = RefusalLog(interval_s=60.0, max_block_lines=2)
    lines = [refusals.blocked(float(n), f"10.0.0.{n}", 20, 60.0) for n in range(4)]
    assert lines[0] is not None
    assert "10.0.0.0" in lines[0]
    assert lines[1] is not None
    assert lines[2:] == [None, None]
    after = refusals.blocked(61.0, "10.0.0.9", 20, 60.0)
    assert after is not None
    assert "2 more addresses blocked" in after


async def test_after_n_wrong_keys_an_address_gets_429_even_with_the_right_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_token(api)
        configure(api, auth_failure_limit=3)
        url = httpx.URL(api.base_url)
        before = limit_refusals("auth_failure_limit")
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=api.base_url, transport=transport) as attacker:
            wrong = {"Authorization": "Bearer wrong-guess"}
            statuses = [(await attacker.get("/v3/channels", headers=wrong)).status_code]
            statuses.append(
                (
                    await attacker.post(
                        "/logs", content=b"", headers={**LOGPLEX1, **basic("token", "t.nope")}
                    )
                ).status_code
            )
            statuses.append((await attacker.get("/v3/channels", headers=wrong)).status_code)
            assert statuses == [401, 401, 401]
            blocked = await attacker.get("/v3/channels", headers=ADMIN)
            assert blocked.status_code == 429, blocked.text
            retry_after = int(blocked.headers["retry-after"])
            assert 1 <= retry_after <= 60
            assert "--auth-failure-limit" in blocked.json()["error"]
            ingest = await attacker.post(
                "/logs", content=frames(["x"], "app"), headers={**LOGPLEX1, **basic("token", token)}
            )
            assert ingest.status_code == 429
        assert limit_refusals("auth_failure_limit") == before + 2
        # 127.0.0.1 is another address: unaffected.
        assert (await api.client.get("/v3/channels", headers=ADMIN)).status_code == 200
        assert url.host == "127.0.0.1"
    blocking = [r.getMessage() for r in caplog.records if "blocking" in r.getMessage()]
    assert len(blocking) == 1
    assert "127.0.0.2" in blocking[0]
    assert "wrong-guess" not in " ".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("step_bytes", [1, 7, 64, 1000, 4096, 10_000])
def test_inflating_in_steps_gives_the_whole_body_whatever_the_step(step_bytes: int) -> None:
    body = b"".join(b"line %d of the body\n" % n for n in range(200))
    pieces = list(inflate_steps(gzip.compress(body), len(body), step_bytes))
    assert b"".join(pieces) == body
    assert all(len(piece) <= step_bytes for piece in pieces)


@pytest.mark.parametrize(
    ("mangle", "max_bytes", "error", "message"),
    [
        (lambda z: z[:-4], 10_000, ValueError, "truncated"),
        (lambda z: z + b"junk", 10_000, ValueError, "bytes after its end"),
        (lambda z: b"not gzip at all", 10_000, ValueError, "corrupt"),
        (lambda z: z, 4000, GzipTooLarge, "more than 4000 bytes"),
    ],
)
def test_inflating_in_steps_refuses_bad_or_oversize_bodies(
    mangle: Callable[[bytes], bytes], max_bytes: int, error: type[Exception], message: str
) -> None:
    body = gzip.compress(b"x" * 5000)
    with pytest.raises(error, match=message):
        list(inflate_steps(mangle(body), max_bytes, 1000))
