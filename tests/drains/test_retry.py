"""Retry policy tables (DESIGN section 8): classification, backoff, Retry-After, window."""

from __future__ import annotations

import email.utils

import pytest

from drains._retry import (
    Outcome,
    backoff_delay_s,
    classify_status,
    next_retry_delay_s,
    parse_retry_after,
    reconnect_delay_s,
)

NOW = 1_795_000_000.0


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (301, Outcome.DROP),
        (400, Outcome.DROP),
        (401, Outcome.DROP),
        (403, Outcome.DROP),
        (404, Outcome.DROP),
        (408, Outcome.RETRY),
        (413, Outcome.DROP),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (599, Outcome.RETRY),
        (100, Outcome.DROP),
    ],
)
def test_classify_status(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (0, 0.0, 0.0),
        (0, 0.5, 0.25),
        (0, 0.999, 0.4995),
        (1, 1.0, 1.0),
        (3, 0.5, 2.0),
        (6, 1.0, 30.0),  # 0.5 * 64 = 32, capped at 30
        (10, 0.5, 15.0),
        (1000, 1.0, 30.0),  # no overflow for huge attempt numbers
    ],
)
def test_full_jitter_backoff(attempt: int, jitter: float, expected: float) -> None:
    assert backoff_delay_s(attempt, base_s=0.5, cap_s=30.0, jitter=jitter) == pytest.approx(
        expected
    )


def test_backoff_rejects_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay_s(-1, base_s=1, cap_s=2, jitter=0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("999999", 3600.0),  # capped at one hour
        ("-5", None),
        ("soon", None),
        ("1.5", None),  # RFC 9110: delay-seconds is an integer
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        ("Fri, 27 Nov 2026 99:00:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now_epoch_s=NOW) == (
        None if expected is None else pytest.approx(expected)
    )


@pytest.mark.parametrize(
    ("attempt", "elapsed_s", "retry_after_s", "jitter", "expected"),
    [
        (0, 0.0, None, 0.5, 0.25),
        (0, 0.0, 1.0, 0.5, 1.0),  # Retry-After replaces the backoff
        (5, 50.0, None, 1.0, None),  # 50 + 16 > 60: give up now
        (5, 44.0, None, 1.0, 16.0),  # 44 + 16 = 60: still inside the window
        (0, 59.0, 5.0, 0.0, None),  # Retry-After past the window: give up
        (2, 61.0, None, 0.0, None),  # already past the window
    ],
)
def test_next_retry_delay_respects_window(
    attempt: int,
    elapsed_s: float,
    retry_after_s: float | None,
    jitter: float,
    expected: float | None,
) -> None:
    got = next_retry_delay_s(
        attempt=attempt,
        elapsed_s=elapsed_s,
        retry_window_s=60.0,
        retry_after_s=retry_after_s,
        base_s=0.5,
        cap_s=30.0,
        jitter=jitter,
    )
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [
        (0, 0.0, 0.5),
        (0, 1.0, 1.0),
        (1, 0.0, 1.0),
        (2, 1.0, 4.0),
        (5, 1.0, 32.0),
        (6, 0.0, 30.0),  # 64 capped at 60, half of it
        (6, 1.0, 60.0),
        (500, 0.5, 45.0),
    ],
)
def test_reconnect_delay_starts_at_one_second_caps_at_sixty(
    failures: int, jitter: float, expected: float
) -> None:
    assert reconnect_delay_s(failures, jitter) == pytest.approx(expected)
