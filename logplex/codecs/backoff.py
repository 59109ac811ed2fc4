"""Retry delays shared by every reconnecting part: drains, their retries, and the shim.

Pure functions of an attempt number and a uniform random number in [0, 1) (the caller owns
the random source, so tables can test exact values):

- ``full_jitter_delay_s``: uniform in ``[0, ceiling]`` — for retrying one request, where many
  senders spreading out matters more than a minimum wait;
- ``equal_jitter_delay_s``: uniform in ``[ceiling / 2, ceiling]`` — for reconnecting, so a
  reconnect is never immediate yet a fleet that failed together does not return in lockstep.

``ceiling = min(cap_s, base_s * 2**attempt)``, attempt 0 being the first retry.
"""

from __future__ import annotations

_MAX_DOUBLINGS = 64


def backoff_ceiling_s(attempt: int, *, base_s: float, cap_s: float) -> float:
    """The capped exponential ceiling for retry number ``attempt`` (0 for the first)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if attempt >= _MAX_DOUBLINGS:
        return cap_s
    return min(cap_s, base_s * float(2**attempt))


def full_jitter_delay_s(attempt: int, jitter: float, *, base_s: float, cap_s: float) -> float:
    """Full jitter: ``ceiling * jitter``."""
    return backoff_ceiling_s(attempt, base_s=base_s, cap_s=cap_s) * jitter


def equal_jitter_delay_s(attempt: int, jitter: float, *, base_s: float, cap_s: float) -> float:
    """Equal jitter: half the ceiling fixed, half random."""
    ceiling = backoff_ceiling_s(attempt, base_s=base_s, cap_s=cap_s)
    return ceiling / 2 + ceiling / 2 * jitter
