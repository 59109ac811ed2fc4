"""RFC 3339 timestamps: the vector table, the output layout of DESIGN 5, the caches."""

from __future__ import annotations

from typing import Any

import pytest
from codec_vectors import iso_to_us, load

from logplex.codecs import timestamps
from logplex.codecs.errors import ProtocolError, TimestampError
from logplex.codecs.timestamps import MAX_TS_US, format_ts, parse_ts

CASES = load("timestamps.json")["cases"]


@pytest.mark.parametrize("case", CASES, ids=[case["input"] or "empty" for case in CASES])
@pytest.mark.parametrize("lenient", [False, True])
def test_vectors(case: dict[str, Any], lenient: bool) -> None:
    value = case["input"].encode()
    expected = case.get("lenient_utc", case["utc"]) if lenient else case["utc"]
    if expected is None:
        with pytest.raises(TimestampError) as err:
            parse_ts(value, lenient=lenient)
        assert isinstance(err.value, ProtocolError)
    else:
        assert parse_ts(value, lenient=lenient) == iso_to_us(expected)


@pytest.mark.parametrize(
    ("ts_us", "text"),
    [
        (1_795_811_973_123_456, b"2026-11-27T20:39:33.123456+00:00"),
        (0, b"1970-01-01T00:00:00.000000+00:00"),
        (1_795_811_973_000_007, b"2026-11-27T20:39:33.000007+00:00"),
        (951_782_400_999_999, b"2000-02-29T00:00:00.999999+00:00"),
        (MAX_TS_US - 1, b"9999-12-31T23:59:59.999999+00:00"),
    ],
)
def test_format_ts(ts_us: int, text: bytes) -> None:
    assert format_ts(ts_us) == text
    assert format_ts(ts_us) == text  # second call from the cache
    assert parse_ts(text) == ts_us


def test_caches_stay_bounded() -> None:
    for second in range(5000):
        format_ts(second * 1_000_000 + 5)
        parse_ts(format_ts(second * 1_000_000))
    assert len(timestamps._prefix_by_second) <= 4096
    assert len(timestamps._prefix_by_millisecond) <= 4096
    assert len(timestamps._second_by_head) <= 4096
