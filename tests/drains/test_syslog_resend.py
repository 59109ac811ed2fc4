"""Pure resend accounting of the syslog drain: which frames an acknowledged offset covers."""

from __future__ import annotations

import pytest

from drains._buffer import Taken
from drains.syslog import acknowledged_frames, split_taken

FRAMES = [b"aaaa", b"bb", b"cccccc"]  # ends at 4, 6, 12 from a start of 0


@pytest.mark.parametrize(
    ("start", "acked", "count"),
    [
        (0, 0, 0),
        (0, 3, 0),
        (0, 4, 1),
        (0, 5, 1),
        (0, 6, 2),
        (0, 11, 2),
        (0, 12, 3),
        (0, 99, 3),
        (100, 99, 0),  # written after the acknowledged point
        (100, 106, 2),
    ],
)
def test_acknowledged_frames(start: int, acked: int, count: int) -> None:
    assert acknowledged_frames(FRAMES, start, acked) == count


def taken(notice: bool) -> Taken:
    frames = [b"L10!", *FRAMES] if notice else list(FRAMES)
    return Taken(
        frames=frames,
        message_count=3,
        byte_count=sum(map(len, frames)),
        notice_count=7 if notice else 0,
        notice_since_us=5 if notice else 0,
    )


@pytest.mark.parametrize(
    ("notice", "acked_frames", "delivered", "delivered_bytes", "rest_frames", "rest_notice"),
    [
        (False, 0, 0, 0, FRAMES, 0),
        (False, 1, 1, 4, FRAMES[1:], 0),
        (False, 3, 3, 12, None, 0),
        (True, 0, 0, 0, [b"L10!", *FRAMES], 7),  # the notice was not delivered: keep it
        (True, 1, 0, 4, FRAMES, 0),  # only the notice went: its count is told
        (True, 2, 1, 8, FRAMES[1:], 0),
        (True, 4, 3, 16, None, 0),
    ],
)
def test_split_taken(
    notice: bool,
    acked_frames: int,
    delivered: int,
    delivered_bytes: int,
    rest_frames: list[bytes] | None,
    rest_notice: int,
) -> None:
    messages, byte_count, rest = split_taken(taken(notice), acked_frames)
    assert (messages, byte_count) == (delivered, delivered_bytes)
    if rest_frames is None:
        assert rest is None
        return
    assert rest is not None
    assert rest.frames == rest_frames
    assert rest.notice_count == rest_notice
    assert rest.message_count == 3 - delivered
    assert rest.byte_count == sum(map(len, rest_frames))
