"""Every name the cluster mode gives a NATS object, and the pure placement rules.

DESIGN section 10. One place for the spelling of streams, subjects, buckets and keys, so a
router of one version finds what another wrote; and the two placement functions every router
must compute alike: the partition of a channel (``fnv1a32(channel) % P``) and the preferred
owner of a partition (rendezvous hashing over the live members).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

DEFAULT_PARTITIONS: Final = 64
MAX_PARTITIONS: Final = 1024

CONFIG_BUCKET: Final = "logplex-config"
SESSIONS_BUCKET: Final = "logplex-sessions"
MEMBERS_BUCKET: Final = "logplex-members"
LEASES_BUCKET: Final = "logplex-leases"
CURSORS_BUCKET: Final = "logplex-cursors"
CLUSTER_BUCKET: Final = "logplex-cluster"

PARTITIONS_KEY: Final = "partitions"

_FNV_OFFSET: Final = 0x811C9DC5
_FNV_PRIME: Final = 0x01000193


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a of ``data``."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def partition_of(channel: str, partitions: int) -> int:
    """The partition that carries ``channel``'s traffic."""
    return fnv1a32(channel.encode()) % partitions


def stream_name(partition: int) -> str:
    return f"LOGPLEX-P{partition}"


def log_subject(partition: int) -> str:
    return f"logplex.log.{partition}"


def tail_subject(partition: int) -> str:
    return f"logplex.tail.{partition}"


def owner_subject(partition: int) -> str:
    """Request/reply subject the owner of ``partition`` serves (history, drain statuses)."""
    return f"logplex.owner.{partition}"


def member_key(member_id: str) -> str:
    return f"m.{member_id}"


def lease_key(partition: int) -> str:
    return f"p.{partition}"


def checkpoint_key(partition: int) -> str:
    """KV key (in ``CURSORS_BUCKET``) of a partition owner's checkpoint."""
    return f"p.{partition}"


def session_key(session_id: str) -> str:
    return "s." + session_id.replace("-", "")


def _score(member_id: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{member_id}\0{partition}".encode(), digest_size=8).digest()


def rendezvous_owner(partition: int, members: Iterable[str]) -> str | None:
    """The member that should own ``partition``: the highest score of (member, partition).

    Any change to the member set moves only the partitions whose winner joined or left.
    """
    best: str | None = None
    best_score = b""
    for member in members:
        score = _score(member, partition)
        if best is None or score > best_score or (score == best_score and member > best):
            best, best_score = member, score
    return best
