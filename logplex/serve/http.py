"""The HTTP listener: our accept loop, hypercorn's HTTP/1.1 per connection (DESIGN 2, 3, 8).

``HttpServer.serve`` accepts on the bound API socket with the same ``AcceptLoop`` as the
ingest listeners, so ``max_connections`` and ``max_connections_per_ip`` apply to HTTP too:
past either a new connection gets a minimal ``503`` naming the limit, with
``Connection: close`` and ``Retry-After``, and is closed. Each accepted connection is served
by hypercorn's trio ``TCPServer`` (the ASGI app wrapped as ``hypercorn.trio.serve`` does;
the app has no lifespan, so none is run).

Deadlines (``logplex_deadline_closes_total{listener="http"}``):

- ``idle_timeout_s`` is hypercorn's ``keep_alive_timeout``: its timer runs from the accept,
  and again after each response, until a whole request head is parsed; bytes that do not
  complete a head do not restart it. So it bounds both an idle keep-alive connection
  (``idle``) and a head trickled byte by byte (``head``: bytes of a head were held).
  hypercorn's ``read_timeout`` (restarted by every byte, and fatal to idle tails) stays off.
- ``send_timeout_s``: a response write that does not complete in time (a client that stopped
  reading a big response or a tail) closes the connection (``send``). hypercorn shields its
  writes from cancellation; the deadline is set inside that shield, on our stream. The
  kernel's ``TCP_USER_TIMEOUT`` on the socket (``drop_connections_that_stop_reading``) is the
  second line.
- Request bodies are bounded inside the app (``read_body_limited``).
- Once the peer is gone, the keep-alive timer is stopped: hypercorn would keep a closed
  connection's task (and so its place under the caps) until the timer fired.

HTTP/1.1 only (RFC 9113 3.1, RFC 9110 7.8): cleartext HTTP/2 is not served. ``Upgrade: h2c``
is ignored and the request answered in HTTP/1.1 (a server may ignore Upgrade); the
prior-knowledge preface ``PRI * HTTP/2.0`` gets ``505`` and a close. Both are hypercorn's
``H11Protocol._check_protocol``; each connection's protocol is made an ``Http11Only``
(a subclass overriding only that method) as hypercorn hands it to the ``TCPServer``.
tests/router/test_http_server.py fails if an upgrade of hypercorn brings h2c back.

Graceful stop as hypercorn's ``worker_serve`` does it: stop accepting, set the worker
context's ``terminated`` (idle keep-alive connections close, no connection is recycled),
cancel what is left after ``graceful_timeout_s`` (tail sessions never end by themselves).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from functools import partial
from typing import Final

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app

from logplex import metrics
from logplex.ingest.accept import AcceptLoop, Refusal, close_within

log = logging.getLogger(__name__)

PROTOCOL: Final = "HTTP"
LISTENER: Final = "http"
SEND_TIMEOUT_S: Final = 60.0  # DESIGN 8: a client that reads nothing for 60 s is dropped
GRACEFUL_TIMEOUT_S: Final = 1.0
REFUSAL_RETRY_AFTER_S: Final = 5
REFUSAL_TIMEOUT_S: Final = 1.0  # all a refused connection may take of the router
REFUSAL_DRAIN_BYTES: Final = 64 * 1024
# The HTTP/2 connection preface (RFC 9113 3.4), as h11 reads its first line.
PRIOR_KNOWLEDGE_METHOD: Final = b"PRI"

_SEND_DEADLINE = metrics.DEADLINE_CLOSES.labels(listener=LISTENER, deadline="send")
_IDLE_DEADLINE = metrics.DEADLINE_CLOSES.labels(listener=LISTENER, deadline="idle")
_HEAD_DEADLINE = metrics.DEADLINE_CLOSES.labels(listener=LISTENER, deadline="head")


@dataclass(frozen=True, slots=True)
class HttpServerSettings:
    idle_timeout_s: float = 5.0
    send_timeout_s: float = SEND_TIMEOUT_S
    graceful_timeout_s: float = GRACEFUL_TIMEOUT_S
    max_connections: int = 10_000
    max_connections_per_ip: int = 1000


class PriorKnowledgeRefused(Exception):
    """The HTTP/2 preface arrived: answered 505; ends the connection."""


def is_http2_preface(request: h11.Request) -> bool:
    """``PRI * HTTP/2.0``: the start of the HTTP/2 connection preface, parsed by h11."""
    return (
        request.method == PRIOR_KNOWLEDGE_METHOD
        and request.target == b"*"
        and request.http_version == b"2.0"
    )


class Http11Only(H11Protocol):
    """hypercorn's HTTP/1.1 protocol without its two ways into cleartext HTTP/2."""

    async def _check_protocol(self, event: h11.Request) -> None:
        # ``Upgrade: h2c`` is ignored: the request is served in HTTP/1.1 (the 200 tells h11
        # the switch was denied). Nothing else here may switch protocols.
        if is_http2_preface(event):
            await self._send_error_response(505)
            raise PriorKnowledgeRefused


class _Http11Server(TCPServer):
    """hypercorn's ``TCPServer`` whose protocol is ``Http11Only``, counting deadline closes."""

    _peer_gone = False

    @property
    def protocol(self) -> ProtocolWrapper:
        return self._protocol_wrapper

    @protocol.setter
    def protocol(self, wrapper: ProtocolWrapper) -> None:
        # Set once per connection, right after hypercorn builds it and before any byte is
        # read; without TLS (ALPN) hypercorn always starts in H11Protocol.
        if type(wrapper.protocol) is H11Protocol:
            wrapper.protocol.__class__ = Http11Only
        self._protocol_wrapper = wrapper

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            # The peer is gone (EOF, reset, or closed by a deadline): hypercorn would leave
            # (or start again) the keep-alive timer, and the connection counted (and its
            # task alive) until it fires.
            self._peer_gone = True
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and self._peer_gone:
            return
        await super().protocol_send(event)

    async def _initiate_server_close(self) -> None:
        # Only the keep-alive timer calls this: at its deadline, or at shutdown.
        if not self.context.terminated.is_set():
            held = _head_bytes_held(self._protocol_wrapper)
            (_HEAD_DEADLINE if held else _IDLE_DEADLINE).inc()
        await super()._initiate_server_close()


def _head_bytes_held(wrapper: ProtocolWrapper) -> bool:
    connection = getattr(wrapper.protocol, "connection", None)
    if not isinstance(connection, h11.Connection):
        return False
    return bool(connection.trailing_data[0])


class DeadlineStream(trio.abc.HalfCloseableStream):
    """A TCP stream whose every ``send_all`` must complete within ``send_timeout_s``; past
    that the socket is closed and the write fails as a peer gone away.

    hypercorn reads ``socket`` for the peer's address; without ``do_handshake`` it takes the
    stream for cleartext.
    """

    def __init__(self, stream: trio.SocketStream, send_timeout_s: float) -> None:
        self._stream = stream
        self.send_timeout_s = send_timeout_s
        self._send_lock = trio.Lock()

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self.send_timeout_s):
            async with self._send_lock:
                await self._stream.send_all(data)
            return
        _SEND_DEADLINE.inc()
        log.info("HTTP connection closed: the client read nothing for %.0f s", self.send_timeout_s)
        await trio.aclose_forcefully(self._stream)
        raise trio.BrokenResourceError("the client stopped reading")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        # hypercorn half-closes when the peer's side ends, outside its send lock: meeting a
        # response still being written (a 408 to a client that closed meanwhile), trio would
        # raise BusyResourceError out of one of them. Writes and the half-close take turns;
        # a half-close during a write is skipped, as the close that follows ends the write.
        if self._send_lock.locked():
            return
        async with self._send_lock:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def hypercorn_config(settings: HttpServerSettings, errorlog: logging.Logger) -> HypercornConfig:
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = errorlog
    config.keep_alive_timeout = settings.idle_timeout_s
    config.read_timeout = None  # per read: it would end idle tails
    config.graceful_timeout = settings.graceful_timeout_s
    return config


class HttpServer:
    """Serves an ASGI app on listening sockets, HTTP/1.1 only, with caps and deadlines."""

    def __init__(
        self,
        app: ASGIFramework,
        settings: HttpServerSettings | None = None,
        *,
        errorlog: logging.Logger | None = None,
    ) -> None:
        self.settings = settings or HttpServerSettings()
        self.config = hypercorn_config(self.settings, errorlog or logging.getLogger(__name__))
        self.app = wrap_app(app, self.config.wsgi_max_body_size, "asgi")
        self.context = WorkerContext(None)
        self._accept_loop = AcceptLoop(
            LISTENER, self.settings.max_connections, self.settings.max_connections_per_ip
        )

    @property
    def open_connections(self) -> int:
        return self._accept_loop.open_connections

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until ``stop`` is set, then stop gracefully (see the module docstring)."""
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                await accepting.start(
                    partial(
                        self._accept_loop.serve,
                        listeners,
                        self.serve_connection,
                        refuse=self.refuse_connection,
                        handler_nursery=connections,
                    )
                )
                task_status.started()
                await stop.wait()
                accepting.cancel_scope.cancel()
            await self.context.terminated.set()
            connections.cancel_scope.deadline = (
                trio.current_time() + self.settings.graceful_timeout_s
            )

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        """One connection, to its end; never raises (one client never affects another)."""
        if not isinstance(stream, trio.SocketStream):  # listeners_of gives only TCP ones
            log.error("HTTP listener got a %s, not a TCP stream; closed", type(stream).__name__)
            await close_within(stream, REFUSAL_TIMEOUT_S)
            return
        server = _Http11Server(
            self.app,
            self.config,
            self.context,
            {},
            DeadlineStream(stream, self.settings.send_timeout_s),  # type: ignore[arg-type]
        )
        try:
            await server.run()
        except Exception as error:  # an ExceptionGroup from hypercorn's task group too
            rest = (
                error.split(PriorKnowledgeRefused)[1]
                if isinstance(error, ExceptionGroup)
                else error
            )
            if rest is not None and not isinstance(rest, PriorKnowledgeRefused):
                log.error("HTTP connection failed unexpectedly; closed", exc_info=rest)
        finally:
            await close_within(stream, REFUSAL_TIMEOUT_S)

    async def refuse_connection(self, stream: trio.abc.Stream, refusal: Refusal) -> None:
        """``503`` naming the limit, ``Connection: close``, ``Retry-After``; then close.

        The request is not read, but what the client sent is drained briefly after the
        response: closing with unread bytes would reset the connection, and a reset can
        reach the client before it has read the 503.
        """
        with trio.move_on_after(REFUSAL_TIMEOUT_S):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stream.send_all(refusal_response(refusal))
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                drained = 0
                while drained < REFUSAL_DRAIN_BYTES:
                    data = await stream.receive_some(REFUSAL_DRAIN_BYTES)
                    if not data:
                        break
                    drained += len(data)
        await close_within(stream, REFUSAL_TIMEOUT_S)


def refusal_response(refusal: Refusal) -> bytes:
    """The whole HTTP/1.1 503 sent to a connection past a cap."""
    body = (refusal.describe(PROTOCOL) + "\n").encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n"
        b"Retry-After: %d\r\n"
        b"\r\n%b" % (len(body), REFUSAL_RETRY_AFTER_S, body)
    )


def listeners_of(sock: socket.socket) -> list[trio.SocketListener]:
    """trio listeners over a bound, listening stdlib socket (which they then own)."""
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
