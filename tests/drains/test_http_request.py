"""The drain's POST encoder (``drains.http.request.PostEncoder``) against RFC 9112 and h11.

Table tests give whole requests byte for byte as RFC 9112 section 3 lays them out (request
line, ``Name: value`` CRLF lines, an empty line, the body) with the header order of
DESIGN 5.2 as the drain sends it. The property test checks the encoder against the slow
path it replaced, h11 writing the same request, on any valid header values and body.
"""

from __future__ import annotations

import h11
import hypothesis
import hypothesis.strategies as st
import pytest

from drains.http.request import PostEncoder

FIXED = [
    ("Content-Type", "application/logplex-1"),
    ("Logplex-Drain-Token", "d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"),
    ("User-Agent", "Logplex/1.0"),
]
PER_POST = ("Logplex-Msg-Count", "Logplex-Frame-Id")
FRAME_ID = "0123456789ABCDEF0123456789ABCDEF"


def encoder(target: str = "/drain?x=1", fixed: list[tuple[str, str]] = FIXED) -> PostEncoder:
    return PostEncoder(
        target, host_header="logs.example.com:8443", fixed_headers=fixed, per_post_names=PER_POST
    )


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (
            [b"3 ab\n", b"2 c\n"],
            b"POST /drain?x=1 HTTP/1.1\r\n"
            b"Host: logs.example.com:8443\r\n"
            b"Content-Length: 9\r\n"
            b"Content-Type: application/logplex-1\r\n"
            b"Logplex-Drain-Token: d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc\r\n"
            b"User-Agent: Logplex/1.0\r\n"
            b"Logplex-Msg-Count: 2\r\n"
            b"Logplex-Frame-Id: 0123456789ABCDEF0123456789ABCDEF\r\n"
            b"\r\n"
            b"3 ab\n2 c\n",
        ),
        (
            [],
            b"POST /drain?x=1 HTTP/1.1\r\n"
            b"Host: logs.example.com:8443\r\n"
            b"Content-Length: 0\r\n"
            b"Content-Type: application/logplex-1\r\n"
            b"Logplex-Drain-Token: d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc\r\n"
            b"User-Agent: Logplex/1.0\r\n"
            b"Logplex-Msg-Count: 2\r\n"
            b"Logplex-Frame-Id: 0123456789ABCDEF0123456789ABCDEF\r\n"
            b"\r\n",
        ),
    ],
)
def test_request_bytes(frames: list[bytes], expected: bytes) -> None:
    post = encoder().encode(("2", FRAME_ID), frames, sum(map(len, frames)))
    assert post.wire == expected
    assert post.target == "/drain?x=1"
    assert post.body_bytes == sum(map(len, frames))


def test_a_header_value_with_inner_spaces_is_kept() -> None:
    post = encoder(fixed=[("Authorization", "Basic dTpw"), ("User-Agent", "A b/1")]).encode(
        ("1", FRAME_ID), [b"1 x"], 3
    )
    assert b"\r\nAuthorization: Basic dTpw\r\nUser-Agent: A b/1\r\n" in post.wire


@pytest.mark.parametrize(
    ("target", "fixed", "message"),
    [
        ("/a b", FIXED, "request target"),
        ("", FIXED, "request target"),
        ("/d", [("Bad Name", "v")], "header name"),
        ("/d", [("X", "a\r\nInjected: 1")], "control characters"),
        ("/d", [("X", " padded")], "whitespace"),
        ("/d", [("X", "nul\x00")], "control characters"),
    ],
)
def test_invalid_requests_are_refused_when_the_encoder_is_built(
    target: str, fixed: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encoder(target, fixed)


@pytest.mark.parametrize(
    ("values", "message"),
    [(("1",), "expected 2 per-post header values"), (("1", "a\nb"), "control characters")],
)
def test_invalid_per_post_values_are_refused(values: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encoder().encode(values, [], 0)


def test_an_empty_per_post_value_is_valid_http() -> None:
    # RFC 9110 section 5.5: a field value may be empty.
    assert b"\r\nLogplex-Frame-Id: \r\n\r\n" in encoder().encode(("1", ""), [], 0).wire


@pytest.mark.parametrize("body_bytes", [0, 3, 5])
def test_a_wrong_body_size_is_refused(body_bytes: int) -> None:
    with pytest.raises(ValueError, match="does not match the body parts' total size 4"):
        encoder().encode(("2", FRAME_ID), [b"1 a\n"], body_bytes)


def h11_request_bytes(target: str, host: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """The same request written by h11, the serializer the encoder replaced."""
    conn = h11.Connection(h11.CLIENT)
    request_headers = [("Host", host), ("Content-Length", str(len(body))), *headers]
    data = conn.send(h11.Request(method="POST", target=target, headers=request_headers))
    data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    return data


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# The encoder writes Host and Content-Length itself, and never Transfer-Encoding: names a
# drain's fixed headers cannot take (h11 refuses a second framing header).
FRAMING_HEADERS = {"host", "content-length", "transfer-encoding"}
header_names = st.text(TOKEN_CHARS, min_size=1, max_size=20).filter(
    lambda name: name.lower() not in FRAMING_HEADERS
)
inner = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
edge = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
header_values = st.one_of(
    st.just(""), edge, st.builds(lambda a, m, b: a + m + b, edge, inner, edge)
)
targets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@hypothesis.given(
    target=targets,
    fixed=st.lists(st.tuples(header_names, header_values), max_size=5),
    per_post_values=st.tuples(header_values, header_values),
    frames=st.lists(st.binary(max_size=50), max_size=8),
)
def test_encoder_writes_what_h11_writes(
    target: str,
    fixed: list[tuple[str, str]],
    per_post_values: tuple[str, str],
    frames: list[bytes],
) -> None:
    post = encoder(target, fixed).encode(per_post_values, frames, sum(map(len, frames)))
    headers = [*fixed, *zip(PER_POST, per_post_values, strict=True)]
    assert post.wire == h11_request_bytes(
        target, "logs.example.com:8443", headers, b"".join(frames)
    )
