"""``drains.http.response``: a drain's reading of HTTP/1.1 responses, judged by h11 and RFC 9112.

h11 writes the responses (Content-Length, chunked, or HTTP/1.0 until close; informational
responses first; arbitrary header values) and reads them as a client that sent a POST; our
reader must agree on the status, the headers, where the response ends and whether the
connection can be reused, however the bytes are cut into reads. Malformed responses and
the limits are table tests written from the RFC.
"""

from __future__ import annotations

import h11
import hypothesis
import hypothesis.strategies as st
import pytest

from drains.http.response import (
    Framing,
    ResponseError,
    ResponseReader,
    parse_response_head,
)

MAX_HEAD = 64 * 1024


def reader(max_body_bytes: int = 64 * 1024) -> ResponseReader:
    return ResponseReader(max_head_bytes=MAX_HEAD, max_body_bytes=max_body_bytes)


def feed_in_pieces(response: ResponseReader, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        response.feed(data[start:cut])
        start = cut


header_names = st.sampled_from(["Retry-After", "X-Trace", "Server", "Vary", "Cache-Control"])
header_values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
)


@st.composite
def h11_responses(draw: st.DrawFn) -> tuple[bytes, h11.Connection, int, list[tuple[str, str]]]:
    """(bytes h11 wrote, the h11 client that read them, status, extra headers)."""
    http10 = draw(st.booleans())
    status = draw(st.sampled_from([200, 202, 204, 304, 400, 404, 413, 429, 500, 503]))
    body = draw(st.binary(max_size=3000)) if status not in (204, 304) else b""
    chunked = not http10 and draw(st.booleans())
    close = draw(st.booleans())
    informational = not http10 and draw(st.booleans())
    extra = draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    server = h11.Connection(h11.SERVER)
    version = b"1.0" if http10 else b"1.1"
    server.receive_data(b"POST /logs HTTP/" + version + b"\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    server.next_event()
    server.next_event()
    wire = b""
    if informational:
        wire += server.send(h11.InformationalResponse(status_code=100, headers=[]))
    headers = list(extra)
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    elif not http10 and status not in (204, 304):
        headers.append(("Content-Length", str(len(body))))
    if close:
        headers.append(("Connection", "close"))
    wire += server.send(h11.Response(status_code=status, headers=headers))
    if body:
        if chunked:
            cut = draw(st.integers(0, len(body)))
            wire += server.send(h11.Data(data=body[:cut]))
            wire += server.send(h11.Data(data=body[cut:]))
        else:
            wire += server.send(h11.Data(data=body))
    wire += server.send(h11.EndOfMessage())
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/logs", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    if http10:
        client.receive_data(b"")  # an HTTP/1.0 body without length ends at the close
    return wire, client, status, extra


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(h11_responses(), st.lists(st.integers(0, 4000), max_size=6))
def test_reads_what_h11_reads(
    response: tuple[bytes, h11.Connection, int, list[tuple[str, str]]], cuts: list[int]
) -> None:
    wire, client, status, extra = response
    final = None
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            final = event
        if isinstance(event, h11.EndOfMessage):
            break
        assert not isinstance(event, h11.ConnectionClosed)
    assert final is not None
    ours = reader()
    feed_in_pieces(ours, wire, cuts)
    if not ours.done:
        ours.feed_eof()
    assert ours.done
    assert ours.head is not None
    assert ours.head.status == status == final.status_code
    expected: dict[str, str] = {}
    for name, value in final.headers:
        key = name.decode()
        expected[key] = f"{expected[key]}, {value.decode()}" if key in expected else value.decode()
    assert ours.head.headers == expected
    assert ours.reusable == (client.our_state is h11.DONE and client.their_state is h11.DONE)
    if extra:
        assert ours.head.headers[extra[0][0].lower()].startswith(extra[0][1])


@pytest.mark.parametrize(
    ("wire", "status", "framing", "reusable"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, Framing.NONE, True),
        (b"HTTP/1.1 204\r\n\r\n", 204, Framing.NONE, True),  # no reason phrase
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, Framing.LENGTH, True),
        (b"HTTP/1.1 200 OK\r\ncontent-length:  2 \r\n\r\nok", 200, Framing.LENGTH, True),
        (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
            200,
            Framing.LENGTH,
            False,
        ),
        (b"HTTP/1.0 204 No Content\r\n\r\n", 204, Framing.NONE, False),  # 1.0: no keep-alive
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 204 \r\n\r\n",
            204,
            Framing.NONE,
            True,
        ),
        (
            b"HTTP/1.1 500 x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: y\r\n\r\n",
            500,
            Framing.CHUNKED,
            True,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", 200, Framing.UNTIL_CLOSE, False),
        (b"HTTP/1.1 204 \r\n\r\nHTTP/1.1 204 \r\n\r\n", 204, Framing.NONE, False),  # unasked
    ],
)
def test_framing_and_reuse_per_rfc_9112(
    wire: bytes, status: int, framing: Framing, reusable: bool
) -> None:
    for cut in range(len(wire) + 1):  # every split of the bytes into two reads
        ours = reader()
        ours.feed(wire[:cut])
        ours.feed(wire[cut:])
        if not ours.done:
            ours.feed_eof()
        assert ours.head is not None
        assert (ours.head.status, ours.head.framing, ours.reusable) == (status, framing, reusable)


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"HTTP/2 200\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
        (b"ICY 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        # h11's limits (RFC 9112 section 6): an unknown coding, a 21-digit length, and two
        # framings at once are refused rather than guessed at.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 21 + b"\r\n\r\n", "20 digits"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 4301 + b"\r\n\r\n", "20 digits"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (b"HTTP/1.1 099 Low\r\n\r\n", "below 100"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "CRLF"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000, "too long"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n", "head over"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD, "head over"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "closed before"),
        (b"HTTP/1.1 204 No", "closed before"),
    ],
)
def test_malformed_responses_are_refused(wire: bytes, error: str) -> None:
    def read_to_the_close() -> None:
        ours = reader()
        ours.feed(wire)
        ours.feed_eof()

    with pytest.raises(ResponseError, match=error):
        read_to_the_close()


def test_a_body_over_the_limit_stops_the_reading_and_the_reuse() -> None:
    ours = reader(max_body_bytes=100)
    ours.feed(b"HTTP/1.1 500 x\r\nContent-Length: 1000\r\n\r\n" + b"e" * 60)
    assert not ours.done
    ours.feed(b"e" * 60)
    assert ours.done
    assert ours.truncated
    assert not ours.reusable
    assert ours.head is not None
    assert ours.head.status == 500


def test_repeated_headers_are_joined_and_names_lowered() -> None:
    head = parse_response_head(
        b"HTTP/1.1 429 Slow Down\r\nRetry-After: 3\r\nVIA: a\r\nContent-Length: 0\r\nVia: b"
    )
    assert head.headers == {"retry-after": "3", "via": "a, b", "content-length": "0"}
    assert head.keep_alive
    # Without a length the body runs to the close: the connection cannot be reused.
    assert not parse_response_head(b"HTTP/1.1 429 Slow Down\r\nRetry-After: 3").keep_alive


# --- against h11 on arbitrary bytes ------------------------------------------------------

# What our reader refuses although h11 accepts it: RFC 9112 lets a client refuse both, and
# the module docstring names them. Any other disagreement fails the property below.
STRICTER_THAN_H11 = ("obsolete line folding", "both Content-Length and Transfer-Encoding")


def h11_accepts(wire: bytes) -> bool:
    """Does h11, as the client of a POST, read a complete response from ``wire`` + EOF?"""
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 30)
    client.send(h11.Request(method="POST", target="/logs", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    client.receive_data(b"")
    try:
        while True:
            event = client.next_event()
            if isinstance(event, h11.EndOfMessage):
                return True
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return False
    except h11.RemoteProtocolError:
        return False


def our_verdict(wire: bytes, cuts: list[int]) -> str | None:
    """None when our reader reads a complete response from ``wire`` + EOF, else why not."""
    ours = ResponseReader(max_head_bytes=1 << 30, max_body_bytes=1 << 30)
    try:
        feed_in_pieces(ours, wire, cuts)
        if not ours.done:
            ours.feed_eof()
    except ResponseError as exc:
        return str(exc)
    assert ours.done
    return None


_line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""])
_status_lines = st.one_of(
    st.sampled_from(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 204 No Content",
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 100 Continue",
            b"HTTP/1.1 101 Switching",
            b"HTTP/1.1 304",
            b"HTTP/2.0 500 x",
            b"HTTP/1.1 099 low",
            b"HTTP/1.1 200\t",
            b" HTTP/1.1 200 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 429 \x80\x7f",
        ]
    ),
    st.builds(lambda status: b"HTTP/1.1 %d x" % status, st.integers(0, 999)),
    st.binary(max_size=20),
)
_header_lines = st.one_of(
    st.sampled_from(
        [
            b"Content-Length: 0",
            b"Content-Length: 3",
            b"Content-Length: 3, 3",
            b"Content-Length: 3, 4",
            b"Content-Length: +3",
            b"Content-Length: " + b"9" * 20,
            b"Content-Length: " + b"9" * 21,
            b"Content-Length: " + b"9" * 4301,
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: CHUNKED",
            b"Transfer-Encoding: gzip",
            b"Transfer-Encoding: gzip, chunked",
            b"Transfer-Encoding:",
            b"Connection: close",
            b"Retry-After: 3",
            b"X-Control: a\x01b",
            b"X-Nul: a\x00b",
            b" folded",
            b"Bad Name: x",
            b"X:\t padded \t",
        ]
    ),
    st.binary(max_size=20),
)
_bodies = st.one_of(
    st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\n\r\n", b"0\r\nX: y\r\n\r\n"]),
    st.sampled_from([b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"5 ;x\r\nhello\r\n0\r\n\r\n"]),
    st.sampled_from([b"1\r\nab\r\n0\r\n\r\n", b"0\r\n folded\r\n\r\n", b"0\n\n", b"zz\r\n"]),
    st.binary(max_size=40),
)


@st.composite
def response_like_bytes(draw: st.DrawFn) -> bytes:
    """Bytes shaped like a response (so deep states are reached), or any bytes at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    wire = b""
    for _ in range(draw(st.integers(1, 2))):  # an informational response may come first
        wire += draw(_status_lines) + draw(_line_ends)
        for line in draw(st.lists(_header_lines, max_size=4)):
            wire += line + draw(_line_ends)
        wire += draw(_line_ends)
    return wire + draw(_bodies)


@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(response_like_bytes(), st.lists(st.integers(0, 400), max_size=4))
def test_accepts_and_refuses_what_h11_does(wire: bytes, cuts: list[int]) -> None:
    refused = our_verdict(wire, cuts)
    if h11_accepts(wire):
        assert refused is None or any(rule in refused for rule in STRICTER_THAN_H11), refused
    else:
        assert refused is not None
