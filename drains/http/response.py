"""The response side of an HTTPS drain: reading the answer to a POST (RFC 9112 sections 4-7).

Sans-IO: ``ResponseReader.feed`` takes the bytes as they arrive, ``feed_eof`` the end of
the stream, and ``done`` says when the response is complete. What a drain needs from a
response is its status, its headers (``Retry-After``) and where it ends, so that the
connection can carry the next post; the body is counted and dropped, never kept.

It accepts exactly what h11 accepts as the response to a POST, and holds h11's limits
(tests/drains/test_response.py fuzzes both on arbitrary bytes):

- a status line ``HTTP/d.d SP 3DIGIT [SP reason]`` (status 100 or more) and ``name: value``
  header lines (RFC 9110 tokens; values without NUL, CR or LF); lines end in CRLF or LF;
- informational (1xx) responses are skipped; ``101`` is refused (we never ask to switch);
- ``Content-Length``: 1 to 20 digits, every copy of it the same value;
- ``Transfer-Encoding``: one header, exactly ``chunked``; any other coding is refused;
- the body per RFC 9112 section 6.3: none after 204 and 304; chunked with
  ``Transfer-Encoding``; exactly ``Content-Length`` bytes; otherwise until the close;
- head at most ``max_head_bytes``; at most ``max_body_bytes`` of body: a longer one stops
  the reading (``truncated``) and costs the connection, not memory.

Two rules are stricter than h11, as RFC 9112 allows: a response with both
``Content-Length`` and ``Transfer-Encoding`` is refused (section 6.3: the two framings
disagree, a request-smuggling hazard), and so is obsolete line folding (section 5.2).

The connection is ``reusable`` only when the response is HTTP/1.1 or later, has no
``Connection: close``, ended by its own framing within the limit, and nothing followed it.
Malformed input raises ``ResponseError`` saying what was wrong.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from drains._errors import ResponseError

__all__ = ["Framing", "ResponseError", "ResponseHead", "ResponseReader", "parse_response_head"]

MAX_CHUNK_LINE_BYTES: Final = 1024
MAX_CONTENT_LENGTH_DIGITS: Final = 20  # h11's limit: up to 10**20 - 1 bytes

_STATUS_LINE: Final = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: [^\x00\n\r\x0b\x0c]*)?")
_HEADER_LINE: Final = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
_DIGITS: Final = re.compile(rb"[0-9]+")
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*")
_BLANK_LINE: Final = re.compile(rb"\n\r?\n")


class Framing(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until close"


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A final response's status, headers (lower-case names) and body framing."""

    status: int
    headers: dict[str, str]
    framing: Framing
    content_length: int
    keep_alive: bool


@dataclass(slots=True)
class _Fields:
    """The header lines of a head or a trailer, with the framing fields checked."""

    headers: dict[str, str]
    content_length: bytes | None = None
    chunked: bool = False
    close: bool = False


def _lines(block: bytes) -> list[bytes]:
    """The lines of a head or trailer block, each without its CRLF or LF."""
    lines = block.split(b"\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _parse_fields(lines: list[bytes]) -> _Fields:
    fields = _Fields(headers={})
    headers = fields.headers
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise ResponseError(
                f"bad header line {line[:60]!r}: obsolete line folding is not accepted"
            )
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise ResponseError(f"bad header line {line[:60]!r}")
        name = match[1].lower()
        value = match[2]
        if name == b"content-length":
            copies = {part.strip() for part in value.split(b",")}
            length = copies.pop()
            if copies or (fields.content_length not in (None, length)):
                raise ResponseError(f"conflicting Content-Length values {value[:60]!r}")
            if not _DIGITS.fullmatch(length) or len(length) > MAX_CONTENT_LENGTH_DIGITS:
                raise ResponseError(
                    f"bad Content-Length {value[:60]!r}: "
                    f"1 to {MAX_CONTENT_LENGTH_DIGITS} digits expected"
                )
            fields.content_length = length
        elif name == b"transfer-encoding":
            if fields.chunked:
                raise ResponseError("more than one Transfer-Encoding header")
            if value.lower() != b"chunked":
                raise ResponseError(
                    f"Transfer-Encoding {value[:60]!r} is not supported; only chunked is"
                )
            fields.chunked = True
        elif name == b"connection":
            fields.close = fields.close or b"close" in (
                part.strip().lower() for part in value.split(b",")
            )
        key = name.decode("ascii")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return fields


def parse_response_head(head: bytes) -> ResponseHead:
    """The status line and header lines of ``head`` (without its final empty line)."""
    status_line, *header_lines = _lines(head)
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ResponseError(f"bad status line {status_line[:60]!r}")
    version, status = match[1], int(match[2])
    if status < 100:
        raise ResponseError(f"bad status line {status_line[:60]!r}: status below 100")
    fields = _parse_fields(header_lines)
    if fields.chunked and fields.content_length is not None:
        raise ResponseError("both Content-Length and Transfer-Encoding: the framing is ambiguous")
    keep_alive = version >= b"1.1" and not fields.close
    content_length = 0
    if status in (204, 304) or status < 200:
        framing = Framing.NONE
    elif fields.chunked:
        framing = Framing.CHUNKED
    elif fields.content_length is not None:
        content_length = int(fields.content_length)
        framing = Framing.LENGTH
    else:
        framing = Framing.UNTIL_CLOSE
        keep_alive = False
    return ResponseHead(status, fields.headers, framing, content_length, keep_alive)


class _State(enum.Enum):
    HEAD = 1
    BODY = 2  # LENGTH, UNTIL_CLOSE, or a chunk's data
    CHUNK_SIZE = 3
    CHUNK_END = 4  # the CRLF after a chunk's data
    TRAILERS = 5
    DONE = 6


class ResponseReader:
    """One response, fed in pieces; see the module docstring."""

    def __init__(self, *, max_head_bytes: int, max_body_bytes: int) -> None:
        self._max_head_bytes = max_head_bytes
        self._max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        self._state = _State.HEAD
        self._body_left = 0  # of the body (LENGTH) or of the current chunk
        self.head: ResponseHead | None = None
        self.body_bytes = 0
        self.truncated = False

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def reusable(self) -> bool:
        """True when the connection may carry another request."""
        return (
            self.done
            and self.head is not None
            and self.head.keep_alive
            and not self.truncated
            and not self._buffer
        )

    def feed(self, data: bytes | bytearray) -> None:
        """Take the next bytes of the stream; raises ``ResponseError`` on malformed input."""
        self._buffer += data
        while self._state is not _State.DONE and self._step():
            pass

    def feed_eof(self) -> None:
        """The peer closed: complete for a body read until close, else an error."""
        head = self.head
        if self._state is _State.BODY and head is not None and head.framing is Framing.UNTIL_CLOSE:
            self._state = _State.DONE
            return
        if self._state is not _State.DONE:
            raise ResponseError("connection closed before the response ended")

    def _block(self, what: str) -> bytes | None:
        """Up to a blank line: a head or trailer block without it, None when incomplete."""
        buffer = self._buffer
        blank = _BLANK_LINE.search(buffer)
        if blank is None or blank.end() > self._max_head_bytes:
            if len(buffer) > self._max_head_bytes:
                raise ResponseError(f"{what} over {self._max_head_bytes} bytes")
            return None
        block = bytes(buffer[: blank.start()])
        del buffer[: blank.end()]
        return block

    def _step(self) -> bool:
        """Advance by one element; False when more bytes are needed."""
        state = self._state
        buffer = self._buffer
        if state is _State.HEAD:
            if buffer and buffer[0] < 0x21:  # a status line starts with "HTTP/"
                raise ResponseError(f"bad status line {bytes(buffer[:60])!r}")
            block = self._block("response head")
            if block is None:
                return False
            head = parse_response_head(block)
            if head.status < 200:
                if head.status == 101:
                    raise ResponseError("101 Switching Protocols to a POST")
                return True  # informational: the final response follows
            self.head = head
            if head.framing is Framing.NONE or (
                head.framing is Framing.LENGTH and head.content_length == 0
            ):
                self._state = _State.DONE
            elif head.framing is Framing.CHUNKED:
                self._state = _State.CHUNK_SIZE
            else:
                self._body_left = head.content_length
                self._state = _State.BODY
            return True
        if state is _State.BODY:
            assert self.head is not None
            if self.head.framing is Framing.UNTIL_CLOSE:
                taken = len(buffer)
            else:
                taken = min(len(buffer), self._body_left)
                self._body_left -= taken
            del buffer[:taken]
            self.body_bytes += taken
            if self.body_bytes > self._max_body_bytes:
                self.truncated = True
                self._state = _State.DONE
                return False
            if self.head.framing is Framing.UNTIL_CLOSE or self._body_left:
                return False
            self._state = _State.DONE if self.head.framing is Framing.LENGTH else _State.CHUNK_END
            return True
        if state is _State.CHUNK_SIZE:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_LINE_BYTES:
                    raise ResponseError("chunk size line too long")
                return False
            match = _CHUNK_SIZE.fullmatch(buffer, 0, end)
            if match is None:
                raise ResponseError(f"bad chunk size line {bytes(buffer[:end][:60])!r}")
            self._body_left = int(match[1], 16)  # before the del: match views the buffer
            del buffer[: end + 2]
            self._state = _State.BODY if self._body_left else _State.TRAILERS
            return True
        if state is _State.CHUNK_END:
            if buffer[:2] != b"\r\n"[: len(buffer)]:
                raise ResponseError("chunk data not followed by CRLF")
            if len(buffer) < 2:
                return False
            del buffer[:2]
            self._state = _State.CHUNK_SIZE
            return True
        # TRAILERS: header lines up to an empty line, checked as a head's are, then dropped.
        for blank in (b"\n", b"\r\n"):
            if buffer.startswith(blank):
                del buffer[: len(blank)]
                self._state = _State.DONE
                return True
        block = self._block("trailers")
        if block is None:
            return False
        _parse_fields(_lines(block))
        self._state = _State.DONE
        return True
