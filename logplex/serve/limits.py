"""File descriptors of the router process: the open-files limit and what ingest may use of it.

DESIGN sections 2 and 7. Every connection, drain socket, SQLite file and pipe takes a file
descriptor. Many systems start processes with a soft ``RLIMIT_NOFILE`` of 1024 under a far
higher hard limit, so at start the router raises its soft limit to the hard one
(``raise_open_files_limit``). The shim and syslog listeners then get connection caps that
fit in what is left after a reserve for everything else (``ingest_connection_cap``): past
its cap a listener refuses new connections (``logplex.ingest.accept``), so idle ingest
connections can never starve the HTTP API, ``/healthcheck``, drains or the config database
of descriptors.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

# Descriptors every router needs whatever its load: stdio, the SQLite database with its WAL
# and shared-memory files, the listening sockets, epoll, trio's wake-up pipe, DNS lookups.
BASE_RESERVED_FDS: Final = 64
# The HTTP API (admin calls, POST /logs, tails) and outbound drain connections share the rest
# with ingest: they keep at least a quarter of the limit, and never less than this.
API_AND_DRAINS_MIN_FDS: Final = 128
API_AND_DRAINS_SHARE: Final = 0.25
INGEST_LISTENERS: Final = 2  # shim and syslog
MAX_CONNECTIONS_PER_LISTENER: Final = 10_000
# Used when the hard limit is unlimited: Linux refuses RLIM_INFINITY for RLIMIT_NOFILE.
UNLIMITED_TARGET_FDS: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class OpenFilesLimit:
    """The soft ``RLIMIT_NOFILE`` before and after start-up, and the hard one."""

    soft_before: int
    soft: int
    hard: int


def ingest_connection_cap(open_files_limit: int) -> int:
    """Connections each ingest listener may serve under ``open_files_limit`` descriptors.

    What is left after the fixed reserve and the API-and-drains share is split evenly
    between the listeners, capped at ``MAX_CONNECTIONS_PER_LISTENER``; at least 1, so a
    router under a tiny limit still takes some ingest (and says so, see ``describe_caps``).
    """
    api_and_drains = max(API_AND_DRAINS_MIN_FDS, int(open_files_limit * API_AND_DRAINS_SHARE))
    for_ingest = open_files_limit - BASE_RESERVED_FDS - api_and_drains
    return max(1, min(MAX_CONNECTIONS_PER_LISTENER, for_ingest // INGEST_LISTENERS))


def raise_open_files_limit() -> OpenFilesLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the limits in force afterwards."""
    soft_raw, hard_raw = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = _finite(soft_raw), _finite(hard_raw)
    target = hard
    if soft >= target:
        return OpenFilesLimit(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard_raw))
    except (ValueError, OSError) as exc:
        log.warning(
            "cannot raise the open-files limit from %d to %d (%s); ingest connections are "
            "capped to fit %d descriptors",
            soft,
            target,
            exc,
            soft,
        )
        return OpenFilesLimit(soft, soft, hard)
    return OpenFilesLimit(soft, target, hard)


def _finite(limit: int) -> int:
    return UNLIMITED_TARGET_FDS if limit == resource.RLIM_INFINITY else limit


def describe_caps(limit: OpenFilesLimit, cap: int) -> str:
    """One log line: the limit in force and the connection cap of each ingest listener."""
    raised = f" (raised from {limit.soft_before})" if limit.soft != limit.soft_before else ""
    text = f"open-files limit {limit.soft}{raised}: at most {cap} connections per ingest listener"
    if cap < MAX_CONNECTIONS_PER_LISTENER:
        text += "; raise the hard limit (ulimit -Hn, LimitNOFILE=) to serve more"
    return text
