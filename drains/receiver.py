"""Parse and verify an ``application/logplex-1`` POST the way strict receivers do (DESIGN 5.4).

For drain subscribers and for ``logplex sink``. A post is accepted only when:

- ``Logplex-Msg-Count``, ``Logplex-Frame-Id`` and ``Logplex-Drain-Token`` are present (the
  three headers Vector's ``heroku_logs`` source requires) and well-formed;
- ``Content-Type``, when given, is ``application/logplex-1`` (else 415);
- the body fits ``max_body_bytes`` (else 413);
- the body has exactly ``Logplex-Msg-Count`` lines — the check a line-splitting receiver
  such as Vector applies, which also catches a raw LF inside a message;
- the frames read byte-exactly by their octet counts (``logplex.codecs.logplex1``) are in the
  DESIGN 5.2 layout and there are exactly ``Logplex-Msg-Count`` of them.

Anything else raises ``ReceiverError`` with the HTTP status to answer and a reason naming
what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from drains._url import DrainError
from logplex.codecs.errors import ProtocolError
from logplex.codecs.logplex1 import DrainFrame, parse_drain_body

CONTENT_TYPE: Final = "application/logplex-1"
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
MAX_FRAME_ID_CHARS: Final = 128
_FRAME_ID: Final = re.compile(r"[!-~]{1,128}")  # visible ASCII, no spaces
_COUNT: Final = re.compile(r"[0-9]{1,9}")


class ReceiverError(DrainError):
    """A post that must be refused: ``status`` to answer, message saying why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PostHeaders:
    """The Logplex headers of a post, checked."""

    msg_count: int
    frame_id: str
    drain_token: str


@dataclass(frozen=True, slots=True)
class LogplexPost:
    """A verified post: its headers and its frames in order."""

    frame_id: str
    drain_token: str
    frames: list[DrainFrame]


def check_headers(headers: Mapping[str, str], body_length: int | None = None) -> PostHeaders:
    """Check the Logplex headers (``headers`` keyed by lower-case names)."""
    content_type = headers.get("content-type")
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != CONTENT_TYPE:
            raise ReceiverError(
                415, f"Content-Type is {content_type!r}; send {CONTENT_TYPE} (DESIGN 5.2)"
            )
    if body_length is not None and body_length > MAX_BODY_BYTES:
        raise ReceiverError(413, f"body of {body_length} bytes is over {MAX_BODY_BYTES}")
    missing = [
        name
        for name in ("Logplex-Msg-Count", "Logplex-Frame-Id", "Logplex-Drain-Token")
        if name.lower() not in headers
    ]
    if missing:
        raise ReceiverError(400, f"missing header {', '.join(missing)}")
    count_text = headers["logplex-msg-count"].strip()
    if not _COUNT.fullmatch(count_text):
        raise ReceiverError(400, f"Logplex-Msg-Count {count_text[:40]!r} is not a count")
    frame_id = headers["logplex-frame-id"].strip()
    if not _FRAME_ID.fullmatch(frame_id):
        raise ReceiverError(
            400, f"Logplex-Frame-Id must be 1..{MAX_FRAME_ID_CHARS} visible ASCII characters"
        )
    drain_token = headers["logplex-drain-token"].strip()
    if not drain_token:
        raise ReceiverError(400, "Logplex-Drain-Token is empty")
    return PostHeaders(int(count_text), frame_id, drain_token)


def check_line_count(body: bytes | bytearray, msg_count: int) -> None:
    """The line-splitting receiver's check: one LF-terminated line per message."""
    lines = body.count(b"\n")
    if body and not body.endswith(b"\n"):
        lines += 1
    if lines != msg_count:
        raise ReceiverError(400, f"body has {lines} lines but Logplex-Msg-Count says {msg_count}")


def verify_post(headers: Mapping[str, str], body: bytes) -> LogplexPost:
    """Verify one logplex-1 POST; raises ``ReceiverError`` (400/413/415) with the reason."""
    checked = check_headers(headers, len(body))
    check_line_count(body, checked.msg_count)
    try:
        frames = parse_drain_body(body)
    except ProtocolError as exc:
        raise ReceiverError(400, f"malformed body: {exc}") from None
    if len(frames) != checked.msg_count:
        raise ReceiverError(
            400,
            f"body has {len(frames)} frames but Logplex-Msg-Count says {checked.msg_count}",
        )
    return LogplexPost(checked.frame_id, checked.drain_token, frames)
