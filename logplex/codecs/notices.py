"""Human-readable lines the system writes itself (DESIGN sections 5.3, 5.5 and 6).

- ``tail_line``: one message as ``heroku logs`` prints it, ``TS SP SOURCE[PS]: SP MSG LF``.
- L10..L14: the in-band loss notices of DESIGN 5.5, exact texts, built from a count and the
  time the losses started (``since_us``, microseconds since the epoch). L10, L11 and L14 are
  router notices: ``router_notice`` wraps a text into a message with PRI 172, source
  ``heroku``, ps ``logplex``. L12 and L13 are sent by the shim as kind-3 records.
- The shim's lifecycle notices of DESIGN section 6, Heroku's wording.

Every text is a single line: no function here returns bytes containing LF or CR.
"""

from __future__ import annotations

from logplex.codecs.records import (
    PRI_ROUTER_NOTICE,
    ROUTER_NOTICE_PS,
    ROUTER_NOTICE_SOURCE,
    Message,
)
from logplex.codecs.timestamps import format_ts

__all__ = [
    "exit_timeout_r12",
    "l10_overflow",
    "l11_tail_overflow",
    "l12_local_overflow",
    "l13_local_delivery",
    "l14_certificate",
    "process_exited",
    "router_notice",
    "starting_process",
    "stopping_all_processes",
    "stopping_sigkill",
    "stopping_sigterm",
    "tail_line",
]


def tail_line(m: Message) -> bytes:
    """``2026-11-27T20:39:33.123456+00:00 app[web.1]: hello\\n`` (DESIGN 5.3)."""
    return b"".join((format_ts(m[0]), b" ", m[2], b"[", m[3], b"]: ", m[4], b"\n"))


def l10_overflow(count: int, since_us: int) -> bytes:
    """Drain buffer overflow, at the head of the next batch to that drain."""
    return b"Error L10 (output buffer overflow): %d messages dropped since %b." % (
        count,
        format_ts(since_us),
    )


def l11_tail_overflow(count: int, since_us: int) -> bytes:
    """Tail session buffer overflow, the next line that session reads."""
    return (
        b"Error L11 (Tail buffer overflow) -> This tail session dropped %d messages since %b."
        % (count, format_ts(since_us))
    )


def l12_local_overflow(count: int, since_us: int) -> bytes:
    """The shim's own buffer overflowed (a kind-3 record)."""
    return b"Error L12 (Local buffer overflow): %d messages dropped since %b." % (
        count,
        format_ts(since_us),
    )


def l13_local_delivery(count: int, since_us: int) -> bytes:
    """The router refused batches for good (a kind-3 record on the next connection)."""
    return b"Error L13 (Local delivery error): %d messages lost since %b." % (
        count,
        format_ts(since_us),
    )


def _one_line(text: str) -> bytes:
    return " ".join(text.splitlines()).encode("utf-8", "backslashreplace")


def l14_certificate(error: str, uri: str) -> bytes:
    """A syslog+tls drain's certificate failed validation (into history and tails).

    ``uri`` must be the drain URL without credentials; line breaks in either text are
    folded to spaces so the notice stays one message.
    """
    return b'Error L14 (certificate validation): error="%b" uri="%b"' % (
        _one_line(error),
        _one_line(uri),
    )


def router_notice(ts_us: int, text: bytes) -> Message:
    """A router notice message: PRI 172 (local5.warning), source ``heroku``, ps ``logplex``."""
    return (ts_us, PRI_ROUTER_NOTICE, ROUTER_NOTICE_SOURCE, ROUTER_NOTICE_PS, text)


def starting_process(argv: list[str]) -> bytes:
    """``Starting process with command `CMD ARGS``` (arguments joined by single spaces)."""
    command = " ".join(argv).encode("utf-8", "surrogateescape")
    return b"Starting process with command `%b`" % b" ".join(command.splitlines())


def process_exited(status: int) -> bytes:
    """``Process exited with status N``."""
    return b"Process exited with status %d" % status


def stopping_all_processes(signal_name: bytes) -> bytes:
    """``Stopping all processes with SIGNAME``, naming the signal the app was sent."""
    return b"Stopping all processes with %b" % signal_name


def stopping_sigterm() -> bytes:
    """``Stopping all processes with SIGTERM``."""
    return stopping_all_processes(b"SIGTERM")


def _seconds(value: float) -> bytes:
    if value == int(value):
        return b"%d" % int(value)
    return repr(float(value)).encode()


def exit_timeout_r12(grace_s: float, signal_name: bytes = b"SIGTERM") -> bytes:
    """``Error R12 (Exit timeout) -> At least one process failed to exit within N seconds of
    SIGTERM``, N without a trailing ``.0`` when it is a whole number; ``signal_name`` is the
    signal that started the grace period."""
    return (
        b"Error R12 (Exit timeout) -> At least one process failed to exit within %b seconds "
        b"of %b" % (_seconds(grace_s), signal_name)
    )


def stopping_sigkill() -> bytes:
    """``Stopping remaining processes with SIGKILL``."""
    return b"Stopping remaining processes with SIGKILL"
