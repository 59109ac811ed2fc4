"""Reading the HTTP/1.1 response to a drain's POST (RFC 9112 sections 4-7 and 9.3).

Sans-IO: ``ResponseReader.feed`` takes the bytes as they arrive, ``feed_eof`` the end of
the stream, and ``done`` says when the response is complete. What a drain needs from a
response is its status, its headers (``Retry-After``) and where it ends, so that the
connection can carry the next post; the body is counted and dropped, never kept.

It replaced h11 on the drain's response path: h11's per-event bookkeeping (an event
object, state-machine transitions and header validation for the request it was told about,
three ``next_event`` calls per response) cost about 100 µs of CPU per post, a sixth of a
post's client-side work. It reads what h11 reads for a response to a POST:

- a status line ``HTTP/1.x SP 3DIGIT [SP reason]`` and ``name: value`` header lines
  (RFC 9110 tokens; no obsolete line folding), the head bounded by ``max_head_bytes``;
- informational (1xx) responses are skipped; ``101`` is refused (we never ask to switch);
- the body per RFC 9112 section 6.3: none after 204 and 304; chunked when the last transfer
  coding is ``chunked``; otherwise until the connection closes when there is a
  ``Transfer-Encoding`` or no ``Content-Length``; else exactly ``Content-Length`` bytes;
- at most ``max_body_bytes`` of body: a longer one stops the reading (``truncated``) and
  costs the connection, not memory.

The connection is ``reusable`` only when the response is HTTP/1.1, has no ``Connection:
close``, ended by its own framing within the limit, and nothing followed it. Malformed
input raises ``HttpTransportError`` ("bad HTTP response: ...").
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from drains._url import DrainError

MAX_CHUNK_LINE_BYTES: Final = 1024

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_HEADER_LINE: Final = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?)"
)
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")


class ResponseError(DrainError):
    """The response is not valid HTTP/1.1 (the message says what was wrong)."""


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


def parse_response_head(head: bytes) -> ResponseHead:
    """The status line and header lines of ``head`` (without its final empty line)."""
    lines = head.split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise ResponseError(f"bad status line {lines[0][:60]!r}")
    minor, status = int(status_line[1]), int(status_line[2])
    headers: dict[str, str] = {}
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    connection: list[bytes] = []
    for line in lines[1:]:
        match = _HEADER_LINE.fullmatch(line.rstrip(b" \t"))
        if match is None:
            raise ResponseError(f"bad header line {line[:60]!r}")
        name = match[1].lower()
        value = match[2]
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
        elif name == b"connection":
            connection.extend(c.strip().lower() for c in value.split(b","))
        key = name.decode("ascii")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    keep_alive = minor == 1 and b"close" not in connection
    content_length = 0
    if status in (204, 304) or 100 <= status < 200:
        framing = Framing.NONE
    elif codings:
        framing = Framing.CHUNKED if codings[-1] == b"chunked" else Framing.UNTIL_CLOSE
    elif lengths:
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            raise ResponseError(f"bad Content-Length {headers['content-length'][:60]!r}")
        content_length = int(next(iter(lengths)))
        framing = Framing.LENGTH
    else:
        framing = Framing.UNTIL_CLOSE
    if framing is Framing.UNTIL_CLOSE:
        keep_alive = False
    return ResponseHead(status, headers, framing, content_length, keep_alive)


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

    def feed(self, data: bytes) -> None:
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

    def _step(self) -> bool:
        """Advance by one element; False when more bytes are needed."""
        state = self._state
        buffer = self._buffer
        if state is _State.HEAD:
            end = buffer.find(b"\r\n\r\n")
            if end < 0 or end + 4 > self._max_head_bytes:
                if len(buffer) > self._max_head_bytes:
                    raise ResponseError(f"response head over {self._max_head_bytes} bytes")
                return False
            head = parse_response_head(bytes(buffer[:end]))
            del buffer[: end + 4]
            if 100 <= head.status < 200:
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
            match = _CHUNK_SIZE.fullmatch(bytes(buffer[:end]))
            if match is None:
                raise ResponseError(f"bad chunk size line {bytes(buffer[:end][:60])!r}")
            del buffer[: end + 2]
            self._body_left = int(match[1], 16)
            self._state = _State.BODY if self._body_left else _State.TRAILERS
            return True
        if state is _State.CHUNK_END:
            if len(buffer) < 2:
                return False
            if buffer[:2] != b"\r\n":
                raise ResponseError("chunk data not followed by CRLF")
            del buffer[:2]
            self._state = _State.CHUNK_SIZE
            return True
        # TRAILERS: header lines (ignored) up to an empty line.
        if buffer[:2] == b"\r\n":
            del buffer[:2]
            self._state = _State.DONE
            return True
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self._max_head_bytes:
                raise ResponseError(f"trailers over {self._max_head_bytes} bytes")
            return False
        del buffer[: end + 4]
        self._state = _State.DONE
        return True
