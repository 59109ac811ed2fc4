"""``drains.http.connection.Http11Client`` over a fake byte stream: hostile bytes, no sockets.

The fake stream answers each request with scripted bytes (or an exception), the way a
hostile or broken receiver would; the client must map every failure to
``HttpTransportError``, close the connection, and carry the next post on a fresh one.
"""

from __future__ import annotations

import pytest
import trio

from drains._errors import HttpTransportError
from drains.http.connection import ByteStream, Http11Client
from drains.http.request import PostEncoder, PreparedPost

Answer = bytes | BaseException


class ScriptedStream:
    """A byte stream that answers each request it is sent with the next scripted answer."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []
        self.closed = False
        self._pending: bytes | BaseException | None = None

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(bytes(data))
        self._pending = self.answers.pop(0) if self.answers else b""

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        pending, self._pending = self._pending, b""
        if isinstance(pending, BaseException):
            raise pending
        assert pending is not None
        assert len(pending) <= max_bytes
        return pending

    async def aclose(self) -> None:
        self.closed = True


class Opener:
    """Hands out one scripted stream per connection, recording them."""

    def __init__(self, *scripts: list[Answer]) -> None:
        self.scripts = list(scripts)
        self.streams: list[ScriptedStream] = []

    async def __call__(self) -> ByteStream:
        await trio.lowlevel.checkpoint()
        stream = ScriptedStream(self.scripts.pop(0))
        self.streams.append(stream)
        return stream


def a_post() -> PreparedPost:
    encoder = PostEncoder(
        "/logs", host_header="sink", fixed_headers=[], per_post_names=("Logplex-Msg-Count",)
    )
    return encoder.encode(("1",), [b"5 hello"], 7)


OK = b"HTTP/1.1 204 No Content\r\n\r\n"
HUGE_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 4301 + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (HUGE_LENGTH, "Content-Length"),  # int() of it raised ValueError through the client
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 21 + b"\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br\r\n\r\n", "Transfer-Encoding"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Content-Length and Transfer-Encoding",
        ),
        (b"\x16\x03\x01\x02\x00", "bad status line"),  # a TLS record to a plain client
        (RuntimeError("a bug in some layer below"), "unexpected failure"),
        (ValueError("invalid literal"), "unexpected failure"),
    ],
)
async def test_every_failure_leaves_the_client_as_a_transport_error(
    answer: Answer, reason: str
) -> None:
    opener = Opener([answer], [OK])
    client = Http11Client(opener, connect_timeout_s=3.0)
    with pytest.raises(HttpTransportError) as caught:
        await client.post(a_post())
    chain = f"{caught.value} {caught.value.__cause__}"
    assert reason in chain
    assert opener.streams[0].closed
    # The client is not wedged: the next post goes out on a fresh connection.
    assert await client.post(a_post()) == (204, {})
    assert len(opener.streams) == 2


async def test_a_stale_keep_alive_connection_is_retried_once_on_a_new_one() -> None:
    opener = Opener([OK, b""], [OK])  # the second post finds the connection closed
    client = Http11Client(opener, connect_timeout_s=3.0)
    assert await client.post(a_post()) == (204, {})
    assert await client.post(a_post()) == (204, {})
    assert [len(stream.sent) for stream in opener.streams] == [2, 1]
    assert opener.streams[1].sent[0] == opener.streams[0].sent[1]  # the same bytes


async def test_an_opener_failing_unexpectedly_is_a_connect_failure() -> None:
    async def broken_opener() -> ByteStream:
        raise KeyError("resolver state")

    client = Http11Client(broken_opener, connect_timeout_s=3.0)
    with pytest.raises(HttpTransportError, match="connect failed"):
        await client.post(a_post())


async def test_a_connect_that_never_finishes_times_out(autojump_clock: trio.abc.Clock) -> None:
    async def hanging_opener() -> ByteStream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    client = Http11Client(hanging_opener, connect_timeout_s=3.0)
    with pytest.raises(HttpTransportError, match="connect timed out after 3 s"):
        await client.post(a_post())
