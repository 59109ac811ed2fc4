"""The errors of the drains layer, and the one place an exception becomes a reason text.

Every error a drain raises derives from ``DrainError``: ``InvalidDrainURL`` (a URL that
cannot be used, DESIGN 3), ``HttpTransportError`` (a post that could not be completed),
``ResponseError`` (a response that is not valid HTTP/1.1, RFC 9112) and
``DestinationRefused`` (a connect the destination policy refused, ``drains._policy``).
``describe_exception`` turns any failure into the one-line reason shown in a drain's
``last_error`` and log lines; ``certificate_error`` finds a certificate failure in a chain
(for L14, DESIGN 5.5).
"""

from __future__ import annotations

import ssl
from typing import Final

MAX_CHAIN: Final = 10


class DrainError(Exception):
    """Base of every error the drains raise."""


class InvalidDrainURL(DrainError, ValueError):
    """A drain URL that cannot be used; the message says what is wrong and what is accepted."""


class StatedFailure(DrainError):
    """A failure told by its message alone: ``describe_exception`` shows neither its type
    nor anything behind it (e.g. the one generic connect error under the policy)."""


class DestinationRefused(StatedFailure, PermissionError):
    """A connect the drain did not make: the destination policy or the own-listener rule
    refused it (``drains._policy``); the message is the reason shown in ``last_error``."""


class HttpTransportError(DrainError):
    """The request could not be completed (connect, TLS, write, read or protocol error)."""


class ResponseError(DrainError):
    """The response is not valid HTTP/1.1 (the message says what was wrong)."""


def certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc``, if that is what it is."""
    seen: BaseException | None = exc
    for _ in range(MAX_CHAIN):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def certificate_reason(certificate: ssl.SSLCertVerificationError) -> str:
    """Why the certificate was refused, e.g. ``Hostname mismatch, certificate is not valid``."""
    return certificate.verify_message or certificate.reason or str(certificate) or "invalid"


def _cause_shown(exc: BaseException) -> BaseException | None:
    """The exception a traceback would show behind ``exc`` (``raise … from None``: none)."""
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


def _stated(exc: BaseException, kind: type[StatedFailure]) -> StatedFailure | None:
    seen: BaseException | None = exc
    for _ in range(MAX_CHAIN):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = _cause_shown(seen)
    return None


def destination_refusal(exc: BaseException) -> StatedFailure | None:
    """The policy refusal behind ``exc``, if that is what it is."""
    return _stated(exc, DestinationRefused)


def describe_exception(exc: BaseException) -> str:
    """A one-line reason for a failed attempt, from the most specific error in the chain.

    A ``StatedFailure`` (a policy refusal) is told as its own text alone.
    """
    stated = _stated(exc, StatedFailure)
    if stated is not None:
        return str(stated)
    certificate = certificate_error(exc)
    if certificate is not None:
        return f"certificate validation failed: {certificate_reason(certificate)}"
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < MAX_CHAIN:
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]  # e.g. trio's "all attempts to connect failed"
            continue
        chain.append(seen)
        seen = _cause_shown(seen)
    for candidate in reversed(chain):
        text = str(candidate)
        if text and text != type(candidate).__name__:
            return f"{type(candidate).__name__}: {text}"
    return type(exc).__name__
