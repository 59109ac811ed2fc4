"""Placement and naming (logplex.cluster.names) and the cluster flags of ``logplex serve``."""

from __future__ import annotations

import collections

import pytest

from logplex.cluster import names
from logplex.serve.settings import ServeConfigError, parse_nats_urls, resolve_settings


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Reference values of 32-bit FNV-1a (the offset basis for the empty input).
        (b"", 0x811C9DC5),
        (b"a", 0xE40C292C),
        (b"foobar", 0xBF9CF968),
    ],
)
def test_fnv1a32_matches_the_reference_values(data: bytes, expected: int) -> None:
    assert names.fnv1a32(data) == expected


def test_partitions_spread_channels_evenly() -> None:
    counts = collections.Counter(names.partition_of(f"app-{i}", 64) for i in range(64_000))
    assert set(counts) == set(range(64))
    assert max(counts.values()) < 1.2 * 1000
    assert min(counts.values()) > 0.8 * 1000


def test_rendezvous_moves_only_what_the_changed_member_wins_or_held() -> None:
    members = [f"m{i}" for i in range(5)]
    before = {p: names.rendezvous_owner(p, members) for p in range(256)}
    assert set(before.values()) == set(members)
    joined = {p: names.rendezvous_owner(p, [*members, "new"]) for p in range(256)}
    moved = {p for p in range(256) if joined[p] != before[p]}
    assert moved
    assert all(joined[p] == "new" for p in moved)
    left = {p: names.rendezvous_owner(p, members[1:]) for p in range(256)}
    assert {p for p in range(256) if left[p] != before[p]} == {
        p for p in range(256) if before[p] == "m0"
    }
    # The order members are listed in does not matter.
    assert names.rendezvous_owner(7, reversed(members)) == before[7]
    assert names.rendezvous_owner(7, []) is None


def test_names_keep_to_the_nats_charsets() -> None:
    assert names.stream_name(3) == "LOGPLEX-P3"
    assert names.log_subject(3) == "logplex.log.3"
    assert names.tail_subject(3) == "logplex.tail.3"
    assert names.owner_subject(3) == "logplex.owner.3"
    assert names.lease_key(3) == names.checkpoint_key(3) == "p.3"
    assert names.member_key("ab12") == "m.ab12"
    assert names.session_key("6f1c-22") == "s.6f1c22"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4222", ("nats://127.0.0.1:4222",)),
        ("nats://a:4222, tls://b:4222,", ("nats://a:4222", "tls://b:4222")),
    ],
)
def test_nats_urls(text: str, expected: tuple[str, ...]) -> None:
    assert parse_nats_urls(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("nats://user:secret@a:4222", "credentials do not belong"),
        ("http://a:4222", "starts with nats:// or tls://"),
        (" , ", "at least one"),
    ],
)
def test_bad_nats_urls_are_refused_without_echoing_secrets(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_nats_urls(text)
    assert "secret" not in str(caught.value)


def test_cluster_settings_resolve_from_flags_and_env() -> None:
    settings = resolve_settings(
        {"nats": "a:1,b:2,c:3", "nats-lease-ttl": "5"}, {"LOGPLEX_NATS_PARTITIONS": "16"}, {}
    )
    assert settings.nats == ("nats://a:1", "nats://b:2", "nats://c:3")
    assert settings.nats_partitions == 16
    assert settings.nats_lease_ttl == 5.0
    assert settings.nats_replicas is None
    assert settings.nats_stream_max_bytes == 256 << 20
    assert resolve_settings({"nats-stream-max-bytes": "10GiB"}, {}, {}).nats_stream_max_bytes == (
        10 << 30
    )
    assert resolve_settings({}, {}, {}).nats is None


def test_cluster_only_flags_need_nats() -> None:
    with pytest.raises(ServeConfigError, match="need --nats"):
        resolve_settings({"nats-creds": "/x"}, {}, {})
    with pytest.raises(ServeConfigError, match=r"lease TTL in \[1, 3600\] seconds"):
        resolve_settings({"nats": "a:1", "nats-lease-ttl": "0.5"}, {}, {})
    with pytest.raises(ServeConfigError, match="at most 1024"):
        resolve_settings({"nats": "a:1", "nats-partitions": "5000"}, {}, {})
