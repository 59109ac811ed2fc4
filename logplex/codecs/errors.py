"""Errors raised by the codecs: one base, ``ProtocolError``, and a subclass per codec.

A decoder in ``logplex.codecs`` returns values or raises a ``ProtocolError`` subclass, nothing
else. Each class carries ``code``, the shim-protocol ERROR code (DESIGN section 4) the router
answers with when the error ends a shim connection: ``bad_frame``, ``too_large`` or
``unsupported_version``. ``offset`` is the absolute byte offset in the input where the problem
was found, when the decoder knows it.

``EncodeError`` is the other kind: we were asked to *encode* something invalid (a header
field with a space in it, say). It is a ``ValueError``, not a ``ProtocolError``: no peer broke
the protocol, our caller did.
"""

from __future__ import annotations

from typing import ClassVar


class ProtocolError(Exception):
    """The peer's bytes break a wire format. ``code`` maps to the shim ERROR codes."""

    code: ClassVar[str] = "bad_frame"

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class FrameTooLarge(ProtocolError):
    """A frame declares (or reaches) more bytes than the configured maximum."""

    code: ClassVar[str] = "too_large"


class DecompressedTooLarge(ProtocolError):
    """A compressed body would decompress to more than the allowed number of bytes."""

    code: ClassVar[str] = "too_large"


class TooManyRecords(ProtocolError):
    """A batch holds more records than the configured maximum."""

    code: ClassVar[str] = "too_large"


class UnsupportedVersion(ProtocolError):
    """The peer speaks a protocol version we do not."""

    code: ClassVar[str] = "unsupported_version"


class TimestampError(ProtocolError):
    """An RFC 3339 / RFC 5424 TIMESTAMP is malformed or names an impossible date or time."""


class SyslogParseError(ProtocolError):
    """An RFC 5424 message does not follow the ABNF of RFC 5424 section 6."""


class OctetFramingError(ProtocolError):
    """An RFC 6587 octet-counted stream has garbage where a ``MSG-LEN SP`` prefix belongs."""


class Logplex1Error(ProtocolError):
    """A frame of an ``application/logplex-1`` body is malformed.

    ``frame_number`` is 1-based and is named in the message, so an HTTP 400 can say which
    frame of the body was wrong.
    """

    def __init__(self, message: str, *, frame_number: int, offset: int | None = None) -> None:
        super().__init__(f"frame {frame_number}: {message}", offset=offset)
        self.frame_number = frame_number


class ShimFrameError(ProtocolError):
    """A shim stream frame (DESIGN section 4) has a bad kind, shape or field type."""


class EncodeError(ValueError):
    """We were asked to encode a field that the output format cannot carry."""
