"""Session request parsing and the session registry's expiry and bounds (DESIGN section 3)."""

from __future__ import annotations

import re

import pytest

from logplex.api.registry import (
    RegistryFull,
    SessionRegistry,
    SessionRequestError,
    SessionSpec,
    parse_session_request,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"channel_id": "app"}, SessionSpec("app", 100, None, None, False)),
        ({"channel_id": 42}, SessionSpec("42", 100, None, None, False)),
        ({"channel_id": "a", "num": "5"}, SessionSpec("a", 5, None, None, False)),
        ({"channel_id": "a", "num": 0}, SessionSpec("a", 0, None, None, False)),
        (
            {"channel_id": "a", "ps": "web", "source": "app", "tail": True},
            SessionSpec("a", 100, b"web", b"app", True),
        ),
        ({"channel_id": "a", "tail": False}, SessionSpec("a", 100, None, None, False)),
        # "any present tail that is not false starts a live tail"
        ({"channel_id": "a", "tail": "true"}, SessionSpec("a", 100, None, None, True)),
        ({"channel_id": "a", "tail": 1}, SessionSpec("a", 100, None, None, True)),
        ({"channel_id": "a", "tail": None}, SessionSpec("a", 100, None, None, True)),
        ({"channel_id": "a", "ps": "", "source": None}, SessionSpec("a", 100, None, None, False)),
    ],
)
def test_session_request_accepted(body: object, expected: SessionSpec) -> None:
    assert parse_session_request(body) == expected


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "JSON object"),
        ({}, "channel_id is required"),
        ({"channel_id": ""}, "channel_id is required"),
        ({"channel_id": True}, "channel_id is required"),
        ({"channel_id": "a", "num": "-1"}, "non-negative"),
        ({"channel_id": "a", "num": -1}, "must not be negative"),
        ({"channel_id": "a", "num": "ten"}, "non-negative whole number"),
        ({"channel_id": "a", "num": 1.5}, "non-negative whole number"),
        ({"channel_id": "a", "num": True}, "not a boolean"),
        ({"channel_id": "a", "ps": 3}, "ps must be a string"),
        ({"channel_id": "a", "source": "é"}, "source must be ASCII"),
        ({"channel_id": "a", "ps": "x" * 129}, "at most 128"),
    ],
)
def test_session_request_refused_with_reason(body: object, reason: str) -> None:
    with pytest.raises(SessionRequestError, match=reason):
        parse_session_request(body)


def test_session_ids_are_uuid4_and_fetchable_again_until_idle_for_ttl() -> None:
    registry = SessionRegistry(ttl_s=360)
    spec = SessionSpec("a")
    sid = registry.create(spec, now_s=0.0)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", sid)
    assert registry.begin_fetch(sid, now_s=100.0) == spec
    registry.end_fetch(sid, now_s=150.0)
    assert registry.begin_fetch(sid, now_s=500.0) == spec  # 350 s after its last use
    registry.end_fetch(sid, now_s=500.0)
    assert registry.begin_fetch(sid, now_s=860.0) is None  # 360 s idle: gone
    assert len(registry) == 0
    assert registry.begin_fetch("not-a-session", now_s=0.0) is None


def test_a_session_being_streamed_never_expires() -> None:
    registry = SessionRegistry(ttl_s=360)
    sid = registry.create(SessionSpec("a", tail=True), now_s=0.0)
    assert registry.begin_fetch(sid, now_s=1.0) is not None
    assert registry.expire(now_s=10_000.0) == 0
    assert registry.streaming_count() == 1
    registry.end_fetch(sid, now_s=10_000.0)
    assert registry.expire(now_s=10_359.0) == 0
    assert registry.expire(now_s=10_360.0) == 1


def test_full_registry_evicts_expired_then_least_recently_used_idle() -> None:
    registry = SessionRegistry(ttl_s=360, max_sessions=3)
    old = registry.create(SessionSpec("old"), now_s=0.0)
    busy = registry.create(SessionSpec("busy"), now_s=400.0)
    idle = registry.create(SessionSpec("idle"), now_s=401.0)
    assert registry.begin_fetch(busy, now_s=402.0) is not None
    newer = registry.create(SessionSpec("n1"), now_s=403.0)  # "old" expired: it goes
    assert registry.begin_fetch(old, now_s=403.0) is None
    registry.create(SessionSpec("n2"), now_s=404.0)  # none expired: LRU idle ("idle") goes
    assert registry.begin_fetch(idle, now_s=404.0) is None
    assert registry.begin_fetch(newer, now_s=404.0) is not None
    # "busy" and "n1" stream; "n2" is idle and goes; then all three stream.
    n3 = registry.create(SessionSpec("n3"), now_s=405.0)
    assert registry.begin_fetch(n3, now_s=405.0) is not None
    with pytest.raises(RegistryFull, match="streaming"):
        registry.create(SessionSpec("n4"), now_s=406.0)
    assert len(registry) == 3


def test_forget_channel_drops_idle_sessions_only() -> None:
    registry = SessionRegistry()
    idle = registry.create(SessionSpec("gone"), now_s=0.0)
    streaming = registry.create(SessionSpec("gone"), now_s=0.0)
    kept = registry.create(SessionSpec("kept"), now_s=0.0)
    assert registry.begin_fetch(streaming, now_s=1.0) is not None
    registry.forget_channel("gone")
    assert registry.begin_fetch(idle, now_s=2.0) is None
    assert registry.begin_fetch(kept, now_s=2.0) is not None
    registry.end_fetch(streaming, now_s=3.0)
    assert len(registry) == 2
