"""drains.receiver: what a strict logplex-1 receiver accepts and refuses (DESIGN 5.2, 5.4)."""

from __future__ import annotations

import pytest

from drains.receiver import ReceiverError, verify_post

FRAME = b"63 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - hello\n"
FRAME2 = b"64 <187>1 2026-11-27T20:39:33.123457+00:00 host app web.2 - hello2\n"
BODY = FRAME + FRAME2
HEADERS = {
    "content-type": "application/logplex-1",
    "logplex-msg-count": "2",
    "logplex-frame-id": "0123456789ABCDEF0123456789ABCDEF",
    "logplex-drain-token": "d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc",
}


def with_headers(**changes: str | None) -> dict[str, str]:
    headers = dict(HEADERS)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return headers


def test_accepts_a_design_5_2_post() -> None:
    post = verify_post(HEADERS, FRAME + FRAME2)
    assert post.frame_id == HEADERS["logplex-frame-id"]
    assert post.drain_token == HEADERS["logplex-drain-token"]
    assert [(f.pri, f.source, f.ps, f.msg) for f in post.frames] == [
        (190, b"app", b"web.1", b"hello"),
        (187, b"app", b"web.2", b"hello2"),
    ]


def test_content_type_may_be_absent_or_carry_parameters() -> None:
    assert len(verify_post(with_headers(content_type=None), FRAME + FRAME2).frames) == 2
    ctype = "Application/Logplex-1; charset=utf-8"
    assert len(verify_post(with_headers(content_type=ctype), FRAME + FRAME2).frames) == 2


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        (
            with_headers(logplex_msg_count=None),
            FRAME + FRAME2,
            400,
            "missing header Logplex-Msg-Count",
        ),
        (
            with_headers(logplex_frame_id=None),
            FRAME + FRAME2,
            400,
            "missing header Logplex-Frame-Id",
        ),
        (
            with_headers(logplex_drain_token=None, logplex_frame_id=None),
            FRAME + FRAME2,
            400,
            "missing header Logplex-Frame-Id, Logplex-Drain-Token",
        ),
        (with_headers(logplex_msg_count="two"), BODY, 400, "is not a count"),
        (with_headers(logplex_msg_count="-1"), BODY, 400, "is not a count"),
        (with_headers(logplex_frame_id="has space"), BODY, 400, "Logplex-Frame-Id"),
        (
            with_headers(logplex_drain_token=" "),
            FRAME + FRAME2,
            400,
            "Logplex-Drain-Token is empty",
        ),
        (with_headers(content_type="text/plain"), BODY, 415, "application/logplex-1"),
        (
            with_headers(logplex_msg_count="3"),
            FRAME + FRAME2,
            400,
            "2 lines but Logplex-Msg-Count says 3",
        ),
        (
            with_headers(logplex_msg_count="1"),
            FRAME + FRAME2,
            400,
            "2 lines but Logplex-Msg-Count says 1",
        ),
        # An LF inside a message: byte counts are right, the line count is not.
        (
            with_headers(logplex_msg_count="1"),
            b"68 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - hello\nworld\n",
            400,
            "2 lines but Logplex-Msg-Count says 1",
        ),
        # Count one byte short: the frames no longer line up.
        (HEADERS, FRAME[:-1].replace(b"63 ", b"62 ") + b"\n" + FRAME2, 400, "malformed body"),
        (with_headers(logplex_msg_count="1"), b"63 <190>1 garbage\n", 400, "malformed body"),
    ],
)
def test_refusals_name_the_problem(
    headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    with pytest.raises(ReceiverError) as info:
        verify_post(headers, body)
    assert info.value.status == status
    assert reason in info.value.reason


def test_oversized_body_is_413() -> None:
    with pytest.raises(ReceiverError) as info:
        verify_post(HEADERS, b"x" * (8 * 1024 * 1024 + 1))
    assert info.value.status == 413
