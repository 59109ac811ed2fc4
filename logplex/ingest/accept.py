"""Accepting and closing ingest connections: what the shim and syslog listeners share.

- ``AcceptLoop.serve`` runs one accept loop per listening socket, each accepted connection a
  task of one nursery. As in trio's ``serve_listeners``, an accept that fails for lack of
  capacity (EMFILE, ENFILE, ENOMEM, ENOBUFS) backs off for 0.1 s and tries again; any other
  accept error is a bug or a closed socket and ends the listener with it.
- At most ``max_connections`` connections are served at once (counted when accepted, so a
  burst cannot overshoot): past that, the listener's ``refuse`` runs instead of its handler
  (an ERROR frame for shims, a plain close for syslog), so memory and descriptors stay
  bounded whatever clients do. ``logplex.serve.limits`` derives the cap from the process's
  open-files limit. Refusals are logged at most once per ``REFUSAL_LOG_INTERVAL_S`` with
  their count, so a flood of connections does not flood the log too.
- ``close_within`` closes a stream gracefully if the peer allows it in time, else forcefully.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

ACCEPT_RETRY_S = 0.1
REFUSAL_LOG_INTERVAL_S = 10.0
# The errnos trio's serve_listeners retries: out of descriptors or memory, for now.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class AcceptLoop:
    """Accepts connections for one ingest protocol and counts the ones being served."""

    def __init__(self, protocol: str, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.protocol = protocol
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused_connections = 0
        self._refusals_logged = 0
        self._refusal_logged_at_s = -math.inf

    async def serve(
        self,
        listeners: list[trio.SocketListener] | list[trio.abc.Listener[trio.abc.Stream]],
        handle: Handler,
        *,
        refuse: Handler,
        prepare: Callable[[trio.abc.Stream], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on every listener until cancelled; ``handle`` each connection, or ``refuse``
        it when ``max_connections`` are already open. ``prepare`` runs on every stream first."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept, listener, handle, refuse, prepare, nursery)
            task_status.started()

    async def _accept(
        self,
        listener: trio.abc.Listener[trio.abc.Stream],
        handle: Handler,
        refuse: Handler,
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
                if self.open_connections >= self.max_connections:
                    self._count_refusal()
                    nursery.start_soon(refuse, stream)
                else:
                    # Counted here, not when the task first runs: connections accepted in
                    # one burst would otherwise all pass the check above.
                    self.open_connections += 1
                    nursery.start_soon(self._counted, handle, stream)

    def _count_refusal(self) -> None:
        self.refused_connections += 1
        now_s = trio.current_time()
        if now_s - self._refusal_logged_at_s < REFUSAL_LOG_INTERVAL_S:
            return
        log.warning(
            "%s: %d new connection(s) refused since the last report: %d open, the limit",
            self.protocol,
            self.refused_connections - self._refusals_logged,
            self.open_connections,
        )
        self._refusals_logged = self.refused_connections
        self._refusal_logged_at_s = now_s

    async def _counted(self, handle: Handler, stream: trio.abc.Stream) -> None:
        try:
            await handle(stream)
        finally:
            self.open_connections -= 1


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
