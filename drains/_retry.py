"""Retry policy of the drains, as pure functions (DESIGN section 8, "Router → drains").

- ``classify_status``: 2xx delivered; 408, 429 and 5xx retried; any other status dropped.
  Network errors (connect, read, write, timeouts, resets) are always retried.
- ``backoff_delay_s``: capped exponential backoff with full jitter (the delay is uniform in
  ``[0, min(cap, base * 2**attempt)]``), the scheme of AWS's "Exponential Backoff and
  Jitter" that Vector's ``retries.rs`` also uses in spirit.
- ``parse_retry_after``: ``Retry-After`` as delay-seconds or an HTTP-date (RFC 9110 10.2.3).
- ``next_retry_delay_s``: the delay before the next attempt, or None when the retry window
  (``DrainSettings.retry_window_s``, 60 s by default) would be exceeded and the batch must
  be dropped and counted into L10.

Nothing here reads a clock or a random source: both are arguments.
"""

from __future__ import annotations

import email.utils
import enum
import math
from typing import Final

from logplex.codecs.backoff import equal_jitter_delay_s, full_jitter_delay_s


class Outcome(enum.Enum):
    """What to do with a batch after one attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DROP = "drop"


RETRYABLE_4XX: Final = frozenset({408, 429})
MAX_RETRY_AFTER_S: Final = 3600.0


def classify_status(status_code: int) -> Outcome:
    """The outcome of an HTTP response status (DESIGN section 8)."""
    if 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code in RETRYABLE_4XX or 500 <= status_code < 600:
        return Outcome.RETRY
    return Outcome.DROP


def backoff_delay_s(attempt: int, *, base_s: float, cap_s: float, jitter: float) -> float:
    """Full-jitter delay for retry number ``attempt`` (0 for the first retry).

    ``jitter`` is a uniform random number in [0, 1).
    """
    return full_jitter_delay_s(attempt, jitter, base_s=base_s, cap_s=cap_s)


def parse_retry_after(value: str | None, *, now_epoch_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None when absent or unreadable.

    Accepts delay-seconds (``120``) and an HTTP-date (``Fri, 27 Nov 2026 23:00:00 GMT``);
    a date in the past gives 0. The result is capped at one hour.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(int(text)), MAX_RETRY_AFTER_S)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    delay_s = moment.timestamp() - now_epoch_s
    if not math.isfinite(delay_s):
        return None
    return min(max(delay_s, 0.0), MAX_RETRY_AFTER_S)


def next_retry_delay_s(
    *,
    attempt: int,
    elapsed_s: float,
    retry_window_s: float,
    retry_after_s: float | None,
    base_s: float,
    cap_s: float,
    jitter: float,
) -> float | None:
    """The wait before the next attempt of a failing batch, or None to drop it.

    ``elapsed_s`` is the time since the batch's first attempt started. A server's
    ``Retry-After`` replaces the jittered backoff (it knows best when it can take more).
    The batch is dropped when the next attempt would start after the retry window.
    """
    if retry_after_s is not None:
        delay_s = retry_after_s
    else:
        delay_s = backoff_delay_s(attempt, base_s=base_s, cap_s=cap_s, jitter=jitter)
    if elapsed_s + delay_s > retry_window_s:
        return None
    return delay_s


def reconnect_delay_s(
    failures: int, jitter: float, *, base_s: float = 1.0, cap_s: float = 60.0
) -> float:
    """Wait before reconnecting after ``failures`` failed connections in a row (0 = first).

    Capped exponential with "equal jitter": uniform in ``[ceiling / 2, ceiling]`` where
    ``ceiling = min(cap, base * 2**failures)``, so a reconnect is never immediate yet many
    drains failing at once spread out.
    """
    return equal_jitter_delay_s(failures, jitter, base_s=base_s, cap_s=cap_s)
