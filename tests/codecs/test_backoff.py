"""The shared retry delays: exact values from the formula, caps, and bad attempts."""

from __future__ import annotations

import pytest

from logplex.codecs.backoff import (
    backoff_ceiling_s,
    equal_jitter_delay_s,
    full_jitter_delay_s,
)
from logplex.codecs.version import package_version


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (63, 30.0), (64, 30.0), (10**9, 30.0)],
)
def test_ceiling_doubles_up_to_the_cap(attempt: int, expected: float) -> None:
    assert backoff_ceiling_s(attempt, base_s=0.5, cap_s=30.0) == expected


def test_full_jitter_spans_zero_to_ceiling() -> None:
    assert full_jitter_delay_s(3, 0.0, base_s=1.0, cap_s=60.0) == 0.0
    assert full_jitter_delay_s(3, 0.5, base_s=1.0, cap_s=60.0) == 4.0


def test_equal_jitter_spans_half_to_whole_ceiling() -> None:
    assert equal_jitter_delay_s(3, 0.0, base_s=1.0, cap_s=60.0) == 4.0
    assert equal_jitter_delay_s(3, 0.5, base_s=1.0, cap_s=60.0) == 6.0


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        backoff_ceiling_s(-1, base_s=1.0, cap_s=2.0)


def test_version_is_the_installed_distributions() -> None:
    assert package_version()[0].isdigit()
