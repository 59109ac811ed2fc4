"""The request side of an HTTPS drain: a POST encoded once into its wire bytes (DESIGN 5.2).

``PostEncoder`` turns a post into its wire bytes once (``PreparedPost``): the header lines
that never change are validated and encoded when the drain starts, each post only formats
its own values, and the request is joined once. A retry sends the same object again, so a
retried batch is byte-identical (DESIGN 8). The header rules are h11's, RFC 9110 section
5.5 and 5.6.2 (tests/drains/test_http11_encoder.py compares the bytes with h11's).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# RFC 9110 section 5.6.2 token and section 5.5 field-value (no CR, LF, NUL or other controls,
# no leading or trailing whitespace); the same rules h11 applies when it writes a header.
_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
)
_REQUEST_TARGET: Final = re.compile(rb"[\x21-\x7e]+")


def basic_auth_header(username: str, password: str) -> str:
    """``Basic base64(user ":" password)`` over UTF-8, as RFC 7617 with charset UTF-8."""
    credentials = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


@dataclass(frozen=True, slots=True)
class PreparedPost:
    """One POST as it goes on the wire: ``wire`` is head and body, ``body_bytes`` the body's size.

    Built once per batch; every attempt (and the stale-connection resend) sends these bytes.
    """

    target: str
    wire: bytes
    body_bytes: int


def _header_line(name: str, value: str) -> bytes:
    """``Name: value`` CRLF, refusing what h11 would refuse (non-ASCII, controls, padding)."""
    name_bytes = name.encode("ascii")
    value_bytes = value.encode("ascii")
    if not _TOKEN.fullmatch(name_bytes):
        raise ValueError(f"invalid HTTP header name {name!r}: use letters, digits and -")
    if not _FIELD_VALUE.fullmatch(value_bytes):
        raise ValueError(
            f"invalid value for HTTP header {name}: no control characters (CR, LF, NUL) "
            "and no leading or trailing whitespace"
        )
    return b"%s: %s\r\n" % (name_bytes, value_bytes)


class PostEncoder:
    """Encodes the POSTs of one drain: ``Host`` and ``Content-Length`` first, then
    ``fixed_headers`` (the same on every post, validated here once), then one value per name
    of ``per_post_names``, in that order, as HTTP/1.1 with ``Name: value`` lines.

    Raises ``ValueError`` when the target or a fixed header is not valid HTTP.
    """

    def __init__(
        self,
        target: str,
        *,
        host_header: str,
        fixed_headers: Sequence[tuple[str, str]],
        per_post_names: Sequence[str],
    ) -> None:
        target_bytes = target.encode("ascii")
        if not _REQUEST_TARGET.fullmatch(target_bytes):
            raise ValueError(f"invalid request target {target!r}: it must be printable ASCII")
        self._target = target
        self._start = b"POST %s HTTP/1.1\r\n%sContent-Length: " % (
            target_bytes,
            _header_line("Host", host_header),
        )
        self._fixed = b"\r\n" + b"".join(_header_line(n, v) for n, v in fixed_headers)
        for name in per_post_names:
            _header_line(name, "x")
        self._per_post_names = tuple(per_post_names)

    def encode(
        self, per_post_values: Sequence[str], body_parts: Sequence[bytes], body_bytes: int
    ) -> PreparedPost:
        """The post with these header values (one per ``per_post_names``) and body.

        ``body_bytes`` is the total size of ``body_parts``, which the caller already knows
        (a drain's ``Taken.byte_count``): with it the request is built in one join, where
        summing a thousand lengths in Python would cost as much as the join itself. A wrong
        size raises ``ValueError`` rather than sending a malformed request.
        """
        if len(per_post_values) != len(self._per_post_names):
            raise ValueError(
                f"expected {len(self._per_post_names)} per-post header values, "
                f"got {len(per_post_values)}"
            )
        wire = [self._start, b"%d" % body_bytes, self._fixed]
        wire.extend(map(_header_line, self._per_post_names, per_post_values))
        wire.append(b"\r\n")
        head_bytes = sum(map(len, wire))
        wire.extend(body_parts)
        joined = b"".join(wire)
        if len(joined) != head_bytes + body_bytes:
            raise ValueError(
                f"body_bytes {body_bytes} does not match the body parts' total size "
                f"{len(joined) - head_bytes}"
            )
        return PreparedPost(self._target, joined, body_bytes)
