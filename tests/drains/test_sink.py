"""drains.sink in-process: plain HTTP, --blackhole counting, limits and the dedupe window."""

from __future__ import annotations

import io
import json

import httpx
import trio

from drains.sink import FrameIdWindow, Sink, parse_listen, serve_sink

BODY = b"63 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - hello\n"


def headers(frame_id: str, count: int = 1) -> dict[str, str]:
    return {
        "Content-Type": "application/logplex-1",
        "Logplex-Msg-Count": str(count),
        "Logplex-Frame-Id": frame_id,
        "Logplex-Drain-Token": "d.t",
    }


async def post_all(sink: Sink, requests: list[tuple[bytes, dict[str, str]]]) -> list[int]:
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_sink, sink, "127.0.0.1", 0)
        async with httpx.AsyncClient() as client:
            codes = [
                (await client.post(f"http://127.0.0.1:{port}/x", content=b, headers=h)).status_code
                for b, h in requests
            ]
        nursery.cancel_scope.cancel()
    return codes


async def test_jsonl_output_and_dedupe() -> None:
    out = io.BytesIO()
    sink = Sink(out)
    codes = await post_all(
        sink, [(BODY, headers("F1")), (BODY, headers("F1")), (BODY * 2, headers("F2", 2))]
    )
    assert codes == [204, 204, 204]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == [
        {
            "ts": "2026-11-27T20:39:33.123456+00:00",
            "pri": 190,
            "source": "app",
            "ps": "web.1",
            "msg": "hello",
            "drain_token": "d.t",
            "frame_id": frame_id,
        }
        for frame_id in ("F1", "F2", "F2")
    ]
    assert (sink.stats.requests, sink.stats.messages, sink.stats.duplicates) == (3, 3, 1)


async def test_blackhole_counts_and_still_checks() -> None:
    sink = Sink(None, blackhole=True)
    codes = await post_all(
        sink, [(BODY * 3, headers("A", 3)), (BODY, headers("B", 2)), (BODY, {"X": "y"})]
    )
    assert codes == [204, 400, 400]
    assert (sink.stats.messages, sink.stats.rejected) == (3, 2)


async def test_oversized_body_is_refused_from_its_content_length() -> None:
    sink = Sink(io.BytesIO())
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_sink, sink, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers("BIG").items())
        await stream.send_all(
            f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n{head}\r\n".encode()
        )
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                answer += chunk
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()


def test_frame_id_window_is_bounded() -> None:
    window = FrameIdWindow(capacity=2)
    assert not window.check_and_add("a")
    assert not window.check_and_add("b")
    assert window.check_and_add("a")
    assert not window.check_and_add("c")  # evicts "b", the least recently seen
    assert not window.check_and_add("b")


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert parse_listen(":9") == ("127.0.0.1", 9)
