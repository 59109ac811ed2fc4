"""Notice texts (DESIGN 5.3, 5.5, 6), byte-exact as the design writes them."""

from __future__ import annotations

import pytest

from logplex.codecs import notices

SINCE_US = 1_795_811_973_123_456
SINCE = b"2026-11-27T20:39:33.123456+00:00"


def test_tail_line() -> None:
    assert notices.tail_line((SINCE_US, 190, b"app", b"web.1", b"hello")) == (
        SINCE + b" app[web.1]: hello\n"
    )


def test_loss_notices() -> None:
    assert notices.l10_overflow(12, SINCE_US) == (
        b"Error L10 (output buffer overflow): 12 messages dropped since " + SINCE + b"."
    )
    assert notices.l11_tail_overflow(3, SINCE_US) == (
        b"Error L11 (Tail buffer overflow) -> This tail session dropped 3 messages since "
        + SINCE
        + b"."
    )
    assert notices.l12_local_overflow(1, SINCE_US) == (
        b"Error L12 (Local buffer overflow): 1 messages dropped since " + SINCE + b"."
    )
    assert notices.l13_local_delivery(7, SINCE_US) == (
        b"Error L13 (Local delivery error): 7 messages lost since " + SINCE + b"."
    )


def test_certificate_notice_is_one_line() -> None:
    assert notices.l14_certificate("certificate has expired", "syslog+tls://h:6514") == (
        b'Error L14 (certificate validation): error="certificate has expired" '
        b'uri="syslog+tls://h:6514"'
    )
    assert b"\n" not in notices.l14_certificate("a\nb\r\nc", "syslog+tls://h:1")


def test_router_notice() -> None:
    assert notices.router_notice(5, b"text") == (5, 172, b"heroku", b"logplex", b"text")


def test_lifecycle_notices() -> None:
    assert notices.starting_process(["bundle", "exec", "rackup", "-p", "5000"]) == (
        b"Starting process with command `bundle exec rackup -p 5000`"
    )
    assert notices.starting_process(["sh", "-c", "echo a\necho b"]) == (
        b"Starting process with command `sh -c echo a echo b`"
    )
    assert notices.process_exited(0) == b"Process exited with status 0"
    assert notices.process_exited(137) == b"Process exited with status 137"
    assert notices.stopping_sigterm() == b"Stopping all processes with SIGTERM"
    assert notices.stopping_sigkill() == b"Stopping remaining processes with SIGKILL"


@pytest.mark.parametrize(
    ("grace_s", "text"), [(25, b"25"), (25.0, b"25"), (2.5, b"2.5"), (0.25, b"0.25")]
)
def test_exit_timeout(grace_s: float, text: bytes) -> None:
    assert notices.exit_timeout_r12(grace_s) == (
        b"Error R12 (Exit timeout) -> At least one process failed to exit within "
        + text
        + b" seconds of SIGTERM"
    )
