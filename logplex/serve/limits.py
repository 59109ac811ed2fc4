"""The open-files budget and the connection caps of the listeners (DESIGN section 2).

Every connection and file costs a descriptor. At start-up the router raises its soft limit to
the hard one (``raise_open_files_limit``). Each listener then gets a connection cap that fits
in what is left after a reserve for everything else (``connection_caps``): the shim and
syslog listeners split the ingest share evenly, and the HTTP listener takes half of the share
kept for the API and the drains (the other half stays for outbound drain connections, the
config database and DNS). Past its cap a listener refuses new connections
(``logplex.ingest.accept``), so idle connections of one kind can never starve the others,
``/healthcheck``, drains or the config database of descriptors.

``--max-connections N`` lowers every listener's cap to N; it never raises a cap above what
the open-files limit fits (a larger N is logged and the fitted cap kept): past the limit,
accepts would fail with EMFILE for everyone, the API and drains included.
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


@dataclass(frozen=True, slots=True)
class ConnectionCaps:
    """Connections each listener serves at once."""

    shim: int
    syslog: int
    http: int


def http_connection_cap(open_files_limit: int) -> int:
    """Connections the HTTP listener may serve: half the API-and-drains share, at least 1."""
    api_and_drains = max(API_AND_DRAINS_MIN_FDS, int(open_files_limit * API_AND_DRAINS_SHARE))
    return max(1, min(MAX_CONNECTIONS_PER_LISTENER, api_and_drains // 2))


def connection_caps(open_files_limit: int, max_connections: int | None) -> ConnectionCaps:
    """Each listener's cap: fitted to ``open_files_limit``, lowered to ``max_connections``
    when given (never raised by it)."""
    ingest = ingest_connection_cap(open_files_limit)
    http = http_connection_cap(open_files_limit)
    if max_connections is not None:
        ingest = min(ingest, max_connections)
        http = min(http, max_connections)
    return ConnectionCaps(shim=ingest, syslog=ingest, http=http)


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


def describe_caps(
    limit: OpenFilesLimit,
    caps: ConnectionCaps,
    max_connections: int | None = None,
    max_connections_per_ip: int | None = None,
) -> str:
    """One log line: the limit in force and each listener's connection caps."""
    raised = f" (raised from {limit.soft_before})" if limit.soft != limit.soft_before else ""
    text = (
        f"open-files limit {limit.soft}{raised}: at most {caps.shim} shim, {caps.syslog} "
        f"syslog and {caps.http} HTTP connections"
    )
    if max_connections_per_ip is not None:
        text += f", {max_connections_per_ip} per source address on each"
    fitted = connection_caps(limit.soft, None)
    if max_connections is not None and max_connections > min(fitted.shim, fitted.http):
        text += (
            f"; --max-connections {max_connections} is more than the open-files limit fits "
            "for some listeners: their fitted caps are kept"
        )
    if caps.shim < MAX_CONNECTIONS_PER_LISTENER and (
        max_connections is None or caps.shim < max_connections
    ):
        text += "; raise the hard limit (ulimit -Hn, LimitNOFILE=) to serve more"
    return text
