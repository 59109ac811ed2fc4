"""Accepting and closing connections: what the shim, syslog and HTTP listeners share.

- ``AcceptLoop.serve`` runs one accept loop per listening socket, each accepted connection a
  task of one nursery. As in trio's ``serve_listeners``, an accept that fails for lack of
  capacity (EMFILE, ENFILE, ENOMEM, ENOBUFS) backs off for 0.1 s and tries again; any other
  accept error is a bug or a closed socket and ends the listener with it.
- Two caps, both counted when a connection is accepted (so a burst cannot overshoot) and
  released when its handler ends: at most ``max_connections`` connections at once, and at
  most ``max_connections_per_ip`` from one source address (IPv4-mapped IPv6 addresses count
  as their IPv4 address). Past either, the listener's ``refuse`` runs instead of its handler
  with the ``Refusal`` (the limit's name and value: an ERROR frame for shims, a close for
  syslog, a 503 for HTTP), so memory and descriptors stay bounded whatever clients do, and
  one address cannot take a listener's whole budget. ``logplex.serve.limits`` derives
  ``max_connections`` from the process's open-files limit. Each refusal is counted in
  ``logplex_limit_refusals_total{limit=...}``; refusals are logged at most once per
  ``REFUSAL_LOG_INTERVAL_S`` with their counts, so a flood of connections does not flood
  the log too.
- ``close_within`` closes a stream gracefully if the peer allows it in time, else forcefully.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from logplex import metrics

log = logging.getLogger(__name__)

ACCEPT_RETRY_S = 0.1
REFUSAL_LOG_INTERVAL_S = 10.0
# The errnos trio's serve_listeners retries: out of descriptors or memory, for now.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

MAX_CONNECTIONS: Final = "max_connections"
MAX_CONNECTIONS_PER_IP: Final = "max_connections_per_ip"

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a new connection is not served: the limit's setting name and its value."""

    limit: str  # MAX_CONNECTIONS | MAX_CONNECTIONS_PER_IP
    maximum: int

    def describe(self, protocol: str) -> str:
        """A sentence for the refused peer: which limit, and what to do."""
        if self.limit == MAX_CONNECTIONS_PER_IP:
            return (
                f"this router serves at most {self.maximum} {protocol} connections per source "
                f"address (max_connections_per_ip); close some or retry later"
            )
        return (
            f"this router serves at most {self.maximum} {protocol} connections "
            f"(max_connections); retry later"
        )


Refuser = Callable[[trio.abc.Stream, Refusal], Awaitable[None]]


def refused_limit(
    open_connections: int,
    max_connections: int,
    open_from_source: int,
    max_connections_per_ip: int,
) -> str | None:
    """The limit a new connection would pass (its setting name), or None to serve it.

    The listener-wide cap is checked first: when both are reached, that is the one to name.
    """
    if open_connections >= max_connections:
        return MAX_CONNECTIONS
    if open_from_source >= max_connections_per_ip:
        return MAX_CONNECTIONS_PER_IP
    return None


def normalise_source(host: str) -> str:
    """One key per source address: ``::ffff:192.0.2.1`` is ``192.0.2.1``; a zone id is
    dropped; anything that is not an address is kept as it is."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def source_address(stream: trio.abc.Stream) -> str | None:
    """The normalised peer address of a TCP (or TLS over TCP) stream; None for others."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.SocketStream):
        return None
    try:
        peer = transport.socket.getpeername()
    except OSError:  # already reset by the peer
        return None
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return normalise_source(peer[0])
    return None


class AcceptLoop:
    """Accepts connections for one protocol and counts the ones being served, in all and per
    source address."""

    def __init__(
        self,
        protocol: str,
        max_connections: int,
        max_connections_per_ip: int | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if max_connections_per_ip is not None and max_connections_per_ip < 1:
            raise ValueError(
                f"max_connections_per_ip must be at least 1, not {max_connections_per_ip}"
            )
        self.protocol = protocol
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip or max_connections
        self.open_connections = 0
        self.refused_connections = 0
        # Only addresses with a connection open: at most max_connections entries.
        self.open_by_source: dict[str, int] = {}
        self._refusals_by_limit: Counter[str] = Counter()
        self._refusal_logged_at_s = -math.inf

    async def serve(
        self,
        listeners: list[trio.SocketListener] | list[trio.abc.Listener[trio.abc.Stream]],
        handle: Handler,
        *,
        refuse: Refuser,
        prepare: Callable[[trio.abc.Stream], None] | None = None,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on every listener until cancelled; ``handle`` each connection, or
        ``refuse`` it past a cap. ``prepare`` runs on every stream first. Connections are
        tasks of ``handler_nursery`` when given (so accepting can stop while they go on),
        else of the loop's own nursery."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    self._accept, listener, handle, refuse, prepare, handler_nursery or nursery
                )
            task_status.started()

    async def _accept(
        self,
        listener: trio.abc.Listener[trio.abc.Stream],
        handle: Handler,
        refuse: Refuser,
        prepare: Callable[[trio.abc.Stream], None] | None,
        nursery: trio.Nursery,
    ) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.warning(
                        "%s listener accept failed (%s); retrying in %.1f s",
                        self.protocol,
                        exc,
                        ACCEPT_RETRY_S,
                    )
                    await trio.sleep(ACCEPT_RETRY_S)
                    continue
                if prepare is not None:
                    prepare(stream)
                source = source_address(stream)
                limit = refused_limit(
                    self.open_connections,
                    self.max_connections,
                    self.open_by_source.get(source, 0) if source is not None else 0,
                    self.max_connections_per_ip,
                )
                if limit is not None:
                    maximum = (
                        self.max_connections
                        if limit == MAX_CONNECTIONS
                        else self.max_connections_per_ip
                    )
                    self._count_refusal(limit)
                    nursery.start_soon(refuse, stream, Refusal(limit, maximum))
                    continue
                # Counted here, not when the task first runs: connections accepted in one
                # burst would otherwise all pass the check above.
                self.open_connections += 1
                if source is not None:
                    self.open_by_source[source] = self.open_by_source.get(source, 0) + 1
                nursery.start_soon(self._counted, handle, stream, source)

    def _count_refusal(self, limit: str) -> None:
        self.refused_connections += 1
        self._refusals_by_limit[limit] += 1
        metrics.LIMIT_REFUSALS.labels(limit=limit).inc()
        now_s = trio.current_time()
        if now_s - self._refusal_logged_at_s < REFUSAL_LOG_INTERVAL_S:
            return
        counts = ", ".join(
            f"{count} by {name}" for name, count in sorted(self._refusals_by_limit.items())
        )
        log.warning(
            "%s: %d new connection(s) refused since the last report (%s): %d open, at most "
            "%d, and at most %d per source address",
            self.protocol,
            self._refusals_by_limit.total(),
            counts,
            self.open_connections,
            self.max_connections,
            self.max_connections_per_ip,
        )
        self._refusals_by_limit.clear()
        self._refusal_logged_at_s = now_s

    async def _counted(self, handle: Handler, stream: trio.abc.Stream, source: str | None) -> None:
        try:
            await handle(stream)
        finally:
            self.open_connections -= 1
            if source is not None:
                left = self.open_by_source[source] - 1
                if left:
                    self.open_by_source[source] = left
                else:
                    del self.open_by_source[source]


async def close_within(stream: trio.abc.Stream, timeout_s: float) -> None:
    """Close gracefully (TLS close_notify) if the peer allows it in time, else forcefully.

    Shielded: a connection cancelled at shutdown still releases its socket.
    """
    with trio.CancelScope(shield=True):
        with trio.move_on_after(timeout_s):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stream.aclose()
            return
        await trio.aclose_forcefully(stream)
