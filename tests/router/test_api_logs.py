"""API: ``POST /logs`` ingest and ``GET /v3/channels/{ch}/logs`` (DESIGN 3, 5.2, 5.6).

Bodies are written out by hand in Logplex's input layout ``LEN <PRI>1 TS HOST t.TOKEN PS - - MSG``
and the expected responses in the 5.2 layout, counted by hand.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import h11
import httpx
import pytest
import trio
from controlplane_helpers import ADMIN, AUTH_KEY, ApiHarness, basic, running_api
from prometheus_client import REGISTRY

from logplex.api.logs import count_matches

T0_US = int(datetime(2026, 11, 27, 20, 39, 33, tzinfo=UTC).timestamp()) * 1_000_000 + 123456
TS = "2026-11-27T20:39:33.123456+00:00"
LOGPLEX1 = {"Content-Type": "application/logplex-1"}


def frame(token: str, msg: str, *, pri: int = 190, ps: str = "web.1", ts: str = TS) -> bytes:
    payload = f"<{pri}>1 {ts} myhost {token} {ps} - - {msg}".encode()
    return b"%d %b" % (len(payload), payload)


def sample(name: str, protocol: str, reason: str | None = None) -> float:
    labels = {"protocol": protocol} if reason is None else {"protocol": protocol, "reason": reason}
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def channel_with_token(api: ApiHarness, source: str = "app") -> str:
    body = await api.create_channel("c", [source])
    tokens = body["tokens"]
    assert isinstance(tokens, dict)
    token: str = tokens[source]
    return token


async def test_post_logs_lands_in_history_under_the_tokens_source(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        before = sample("logplex_ingest_messages_total", "http")
        body = (
            frame("t.ignored-app-name", "hello")
            + frame(token, "two\nlines", pri=187, ps="worker.2")
            + frame(token, "last", ts="2026-11-27T20:39:34.5Z")
        )
        response = await api.client.post(
            "/logs",
            content=body,
            headers={**LOGPLEX1, **basic("token", token), "Logplex-Msg-Count": "3"},
        )
        assert response.status_code == 204
        assert response.content == b""
        assert api.router.history("c") == [
            (T0_US, 190, b"app", b"web.1", b"hello"),
            (T0_US, 187, b"app", b"worker.2", b"two"),
            (T0_US, 187, b"app", b"worker.2", b"lines"),
            (T0_US - 123456 + 1_500_000, 190, b"app", b"web.1", b"last"),
        ]
        assert sample("logplex_ingest_messages_total", "http") == before + 4


async def test_the_older_x_logplex_1_media_type_is_accepted(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        response = await api.client.post(
            "/logs",
            content=frame(token, "old shipper"),
            headers={"Content-Type": "application/x-logplex-1", **basic("token", token)},
        )
        assert response.status_code == 204
        assert [m[4] for m in api.router.history("c")] == [b"old shipper"]


async def test_gzip_body_is_accepted(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        body = gzip.compress(frame(token, "zipped") * 3)
        response = await api.client.post(
            "/logs",
            content=body,
            headers={**LOGPLEX1, **basic("token", token), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 204
        assert [m[4] for m in api.router.history("c")] == [b"zipped"] * 3


@pytest.mark.parametrize(
    "auth",
    [
        {},
        basic("token", "t.00000000-0000-4000-8000-000000000000"),
        basic("user", "TOKEN"),  # the right token under another user name
        {"Authorization": f"Bearer {AUTH_KEY}"},  # the admin key is not a log token
        {"Authorization": "Basic %%%"},
    ],
    ids=["none", "unknown-token", "wrong-user", "admin-key", "garbage"],
)
async def test_post_logs_without_a_valid_token_is_401(tmp_path: Path, auth: dict[str, str]) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        if auth.get("Authorization") == basic("user", "TOKEN")["Authorization"]:
            auth = basic("user", token)
        before = sample("logplex_ingest_errors_total", "http", "unauthorized")
        response = await api.client.post(
            "/logs", content=frame(token, "x"), headers={**LOGPLEX1, **auth}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Basic realm=Logplex"
        assert "token:t.<uuid>" in response.json()["error"]
        assert api.router.history("c") == []
        assert sample("logplex_ingest_errors_total", "http", "unauthorized") == before + 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {},
        {"Content-Type": "application/logplex-1", "Content-Encoding": "br"},
    ],
    ids=["json", "missing", "brotli"],
)
async def test_post_logs_with_the_wrong_media_type_is_415(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        response = await api.client.post(
            "/logs", content=frame(token, "x"), headers={**headers, **basic("token", token)}
        )
        assert response.status_code == 415
        assert "error" in response.json()
        assert api.router.history("c") == []


async def test_malformed_frame_rejects_the_whole_request_naming_the_frame(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        body = frame(token, "good") + b"10 <190>1 bad" + frame(token, "never")
        response = await api.client.post(
            "/logs", content=body, headers={**LOGPLEX1, **basic("token", token)}
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert "frame 2" in error
        assert "nothing was accepted" in error
        assert api.router.history("c") == []  # not even frame 1

        # A count that runs past the end of the body.
        body = frame(token, "good") + b"500 <190>1 " + TS.encode()
        response = await api.client.post(
            "/logs", content=body, headers={**LOGPLEX1, **basic("token", token)}
        )
        assert response.status_code == 400
        assert "frame 2" in response.json()["error"]

        # A frame over 10240 bytes is malformed (DESIGN 5.6).
        response = await api.client.post(
            "/logs",
            content=frame(token, "x" * 10300),
            headers={**LOGPLEX1, **basic("token", token)},
        )
        assert response.status_code == 400
        assert "frame 1" in response.json()["error"]
        assert "10240" in response.json()["error"]


async def test_message_count_mismatch_is_400(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        before = sample("logplex_ingest_errors_total", "http", "count_mismatch")
        response = await api.client.post(
            "/logs",
            content=frame(token, "a") + frame(token, "b"),
            headers={**LOGPLEX1, **basic("token", token), "Logplex-Msg-Count": "3"},
        )
        assert response.status_code == 400
        assert response.json() == {"error": "Logplex-Msg-Count says 3 but the body holds 2 frames"}
        assert api.router.history("c") == []
        assert sample("logplex_ingest_errors_total", "http", "count_mismatch") == before + 1


async def raw_post(
    base_url: str, path: str, headers: dict[str, str], chunks: list[bytes], *, chunked: bool
) -> tuple[int, bytes]:
    """POST over a raw socket, still sending while the server answers early and closes.

    httpx stops sending once an early answer arrives and warns about its abandoned body
    iterator; a raw client sends like a real log shipper would.
    """
    url = httpx.URL(base_url)
    assert url.port is not None
    conn = h11.Connection(h11.CLIENT)
    framing = (
        {"Transfer-Encoding": "chunked"}
        if chunked
        else {"Content-Length": str(sum(map(len, chunks)))}
    )
    request = h11.Request(
        method="POST",
        target=path,
        headers=[("Host", url.host), *headers.items(), *framing.items()],
    )
    stream = await trio.open_tcp_stream(url.host, url.port)
    status, body = 0, b""

    async def send_body() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(conn.send(request))
            for chunk in chunks:
                await stream.send_all(conn.send(h11.Data(data=chunk)))
            await stream.send_all(conn.send(h11.EndOfMessage()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_body)
        with trio.fail_after(30):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
        nursery.cancel_scope.cancel()
    await stream.aclose()
    return status, body


@pytest.mark.parametrize(
    ("declared", "count", "matches"),
    [
        ("2", 2, True),
        (" 2 ", 2, True),
        ("02", 2, True),
        ("3", 2, False),
        ("", 0, False),
        ("-0", 0, False),
        ("two", 2, False),
        ("²", 2, False),
    ],
)
def test_count_header_rule(declared: str, count: int, matches: bool) -> None:
    assert count_matches(declared, count) is matches


async def test_body_over_8_mib_is_413(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        one = frame(token, "y" * 9000)
        body = one * (8 * 1024 * 1024 // len(one) + 1)
        assert len(body) > 8 * 1024 * 1024
        chunks = [body[start : start + 65536] for start in range(0, len(body), 65536)]
        headers = {**LOGPLEX1, **basic("token", token)}
        for chunked in (False, True):  # declared up front, or counted as it comes
            status, answer = await raw_post(api.base_url, "/logs", headers, chunks, chunked=chunked)
            assert status == 413
            assert b"8388608" in answer
        assert api.router.history("c") == []


async def test_gzip_bomb_is_413_and_corrupt_gzip_400(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
        assert len(bomb) < 100_000
        headers = {**LOGPLEX1, **basic("token", token), "Content-Encoding": "gzip"}
        response = await api.client.post("/logs", content=bomb, headers=headers)
        assert response.status_code == 413
        assert "inflates to more than" in response.json()["error"]

        response = await api.client.post("/logs", content=b"\x1f\x8bnot gzip", headers=headers)
        assert response.status_code == 400
        truncated = gzip.compress(frame(token, "x"))[:-6]
        response = await api.client.post("/logs", content=truncated, headers=headers)
        assert response.status_code == 400
        assert "truncated" in response.json()["error"]
        assert api.router.history("c") == []


async def test_get_channel_logs_in_the_https_drain_layout(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", ["app"])
        api.router.publish(
            "c", [(T0_US + i, 190, b"app", b"web.1", b"hello %d" % i) for i in range(150)]
        )
        response = await api.client.get("/v3/channels/c/logs?num=2", headers=ADMIN)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/logplex-1"
        assert response.headers["logplex-msg-count"] == "2"
        # 5.2: LEN SP <PRI>1 SP TS SP host SP SOURCE SP PS SP - SP MSG LF; 67 bytes after LEN.
        assert response.content == (
            b"67 <190>1 2026-11-27T20:39:33.123604+00:00 host app web.1 - hello 148\n"
            b"67 <190>1 2026-11-27T20:39:33.123605+00:00 host app web.1 - hello 149\n"
        )
        response = await api.client.get("/v3/channels/c/logs", headers=ADMIN)
        assert response.headers["logplex-msg-count"] == "100"  # the default
        assert response.content.count(b"\n") == 100
        assert response.content.startswith(b"66 <190>1 2026-11-27T20:39:33.123506+00:00 ")

        response = await api.client.get("/v3/channels/c/logs?num=0", headers=ADMIN)
        assert (response.content, response.headers["logplex-msg-count"]) == (b"", "0")
        response = await api.client.get("/v3/channels/c/logs?num=x", headers=ADMIN)
        assert response.status_code == 400
        response = await api.client.get("/v3/channels/nope/logs", headers=ADMIN)
        assert response.status_code == 404
        assert response.json() == {"error": "channel 'nope' not found"}


DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def doc_section(title: str) -> str:
    """The text of docs/api.md under the ``### title`` heading, up to the next heading."""
    text = DOC.read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n#", start + 1)
    return text[start : end if end != -1 else len(text)]


async def test_the_post_logs_example_of_the_docs_is_accepted_byte_for_byte(
    tmp_path: Path,
) -> None:
    section = doc_section("POST /logs")
    printf = re.search(r"^\$ printf '([^']*)' > body$", section, re.MULTILINE)
    assert printf is not None, "the POST /logs example writes its body with printf"
    body_text = printf.group(1)
    assert "%" not in body_text
    assert "\\" not in body_text
    headers = dict(re.findall(r"-H '([^:]+): ([^']*)'", section))
    assert headers.keys() >= {"Content-Type", "Logplex-Msg-Count"}
    expected_status = re.search(r"--data-binary @body \S+\nHTTP/1\.1 (\d+)", section)
    assert expected_status is not None
    async with running_api(tmp_path) as api:
        body = await api.create_channel("myapp", ["app"])
        tokens = body["tokens"]
        assert isinstance(tokens, dict)
        response = await api.client.post(
            "/logs",
            content=body_text.encode(),
            headers={**headers, **basic("token", tokens["app"])},
        )
        assert response.status_code == int(expected_status.group(1)), response.text

        # What the docs' GET /v3/channels/{ch}/logs example shows for that line.
        logs = doc_section("GET /v3/channels/{ch}/logs?num=N")
        shown = re.search(r"content-type: application/logplex-1\n\n(.+\n)```", logs)
        assert shown is not None
        response = await api.client.get("/v3/channels/myapp/logs?num=10", headers=ADMIN)
        assert response.status_code == 200
        assert response.content == shown.group(1).encode()


async def test_a_client_that_leaves_mid_body_costs_one_short_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_api(tmp_path) as api:
        token = await channel_with_token(api)
        url = httpx.URL(api.base_url)
        assert url.port is not None
        requests = [
            ("/logs", {**LOGPLEX1, **basic("token", token)}),
            ("/v3/channels/c/tokens", {**ADMIN, "Content-Type": "application/json"}),
        ]
        for path, headers in requests:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="POST",
                target=path,
                headers=[("Host", url.host), *headers.items(), ("Content-Length", "1000")],
            )
            stream = await trio.open_tcp_stream(url.host, url.port)
            await stream.send_all(conn.send(request) + conn.send(h11.Data(data=b"10 <190>1 x")))
            await stream.aclose()
            with trio.fail_after(10):
                while not any(path in r.getMessage() for r in caplog.records):
                    await trio.sleep(0.01)
        assert api.router.history("c") == []
    # running_api has checked that hypercorn logged no exception; here: one line each.
    api_lines = [r for r in caplog.records if r.name.startswith("logplex")]
    assert len(api_lines) == 2, [r.getMessage() for r in api_lines]
    for record in api_lines:
        assert record.exc_info is None
        assert "went away" in record.getMessage()
        assert len(record.getMessage()) < 200
