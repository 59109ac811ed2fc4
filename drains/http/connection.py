"""The connection of an HTTPS drain: one keep-alive HTTP/1.1 connection (RFC 9112).

What a drain needs is small — POST a body, read a status, keep the connection — so
``Http11Client`` writes the request bytes ``drains.http.request`` prepared and reads the
answer with ``drains.http.response.ResponseReader`` (the reasons for a client of its own
rather than httpx or h11 are measured in perf/RESULTS.md, "Drains").

- The client talks to a ``ByteStream`` (``send_all`` / ``receive_some`` / ``aclose``, the
  network-backend idea of httpcore) that an ``OpenStream`` callable opens on demand:
  ``network_stream_opener`` gives TCP, or TLS over it (``drains._tls.TlsOverSocket``), to an
  address the destination policy checked (``drains._connect``: resolved once per connection,
  pinned, so DNS rebinding cannot pass; TLS verifies and sends the URL's host name);
  tests give a fake stream that replays hostile bytes without sockets.
- ``post`` opens the connection when there is none (under ``connect_timeout_s``), sends
  head and body in one write, reads the response head and at most ``max_response_bytes``
  of body, and keeps the connection when both sides allow it.
- A post that fails on a reused keep-alive connection before any response byte arrived is
  sent once more on a fresh connection (the server may have closed it while idle).
- Any failure or cancellation closes the connection; the next post opens a new one.
- ``post`` is the one boundary where failures are mapped: every exception but a
  cancellation leaves it as ``HttpTransportError`` with the cause chained (a certificate
  failure, a malformed response, or anything unforeseen), never as itself. With
  ``generic_connect_errors`` (``--deny-private-drains``) a failed or timed-out connect says
  only ``network error: could not connect``, so status texts cannot tell a closed port from
  a filtered one; a policy refusal and a certificate failure still say what they are.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import trio

from drains._connect import open_tcp_stream
from drains._errors import (
    HttpTransportError,
    ResponseError,
    StatedFailure,
    certificate_error,
    describe_exception,
    destination_refusal,
)
from drains._policy import NETWORK_ERROR, NO_POLICY, DestinationPolicy
from drains._tls import READ_BYTES, TlsOverSocket
from drains.http.request import PreparedPost
from drains.http.response import ResponseReader

MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024


class ByteStream(Protocol):
    """The byte stream a connection runs over: TCP, TLS, or a test's fake."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int) -> bytes | bytearray:
        """The next bytes (at most ``max_bytes``); empty at the end of the stream."""
        ...

    async def aclose(self) -> None: ...


OpenStream = Callable[[], Awaitable[ByteStream]]


def network_stream_opener(
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    policy: DestinationPolicy = NO_POLICY,
) -> OpenStream:
    """Opens TCP to ``host:port`` where ``policy`` allows, with a verified TLS handshake over
    it when ``tls`` is set."""

    async def open_stream() -> ByteStream:
        tcp = await open_tcp_stream(host, port, policy)
        if tls is None:
            return tcp
        stream = TlsOverSocket(tcp, tls, server_hostname=host)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    return open_stream


class Http11Client:
    """One keep-alive HTTP/1.1 connection, opened on demand by ``open_stream``."""

    def __init__(
        self,
        open_stream: OpenStream,
        *,
        connect_timeout_s: float,
        max_response_bytes: int = 64 * 1024,
        generic_connect_errors: bool = False,
    ) -> None:
        self._open_stream = open_stream
        self._connect_timeout_s = connect_timeout_s
        self._generic_connect_errors = generic_connect_errors
        self._max_response_bytes = max_response_bytes
        self._stream: ByteStream | None = None
        self.connects = 0
        self.last_connect_s = 0.0

    async def aclose(self) -> None:
        """Close the connection at once (the next post opens a new one)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope() as forceful:  # as trio.aclose_forcefully: never blocks
                forceful.cancel()
                await stream.aclose()

    async def post(self, post: PreparedPost) -> tuple[int, dict[str, str]]:
        """Send ``post``; the status and the response headers (lower-case names).

        Raises ``HttpTransportError`` for every failure (see the module docstring).
        """
        try:
            return await self._post_with_resend(post)
        except HttpTransportError:
            raise
        except Exception as exc:
            await self.aclose()
            raise HttpTransportError(f"unexpected failure: {describe_exception(exc)}") from exc

    async def _post_with_resend(self, post: PreparedPost) -> tuple[int, dict[str, str]]:
        reused = self._stream is not None
        try:
            return await self._post_once(post)
        except _StaleConnection as exc:
            await self.aclose()
            if not reused:
                raise HttpTransportError("connection closed before a response") from exc
        try:
            return await self._post_once(post)
        except _StaleConnection as exc:
            await self.aclose()
            raise HttpTransportError("connection closed before a response") from exc

    async def _connect(self) -> ByteStream:
        started = trio.current_time()
        try:
            with trio.fail_after(self._connect_timeout_s):
                stream = await self._open_stream()
        except trio.TooSlowError as exc:
            if self._generic_connect_errors:
                raise HttpTransportError(NETWORK_ERROR) from StatedFailure(NETWORK_ERROR)
            raise HttpTransportError(
                f"connect timed out after {self._connect_timeout_s:g} s"
            ) from exc
        except Exception as exc:
            refusal = destination_refusal(exc)
            if refusal is not None:
                raise HttpTransportError(str(refusal)) from refusal
            if self._generic_connect_errors and certificate_error(exc) is None:
                raise HttpTransportError(NETWORK_ERROR) from StatedFailure(NETWORK_ERROR)
            raise HttpTransportError("connect failed") from exc
        self._stream = stream
        self.connects += 1
        self.last_connect_s = trio.current_time() - started
        return stream

    async def _post_once(self, post: PreparedPost) -> tuple[int, dict[str, str]]:
        try:
            stream = self._stream if self._stream is not None else await self._connect()
            return await self._exchange(stream, post)
        except (_StaleConnection, HttpTransportError):
            raise
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
                raise HttpTransportError("connection failed") from exc
            if isinstance(exc, ResponseError):
                raise HttpTransportError(f"bad HTTP response: {exc}") from exc
            raise

    async def _exchange(self, stream: ByteStream, post: PreparedPost) -> tuple[int, dict[str, str]]:
        try:
            await stream.send_all(post.wire)
        except (trio.BrokenResourceError, OSError) as exc:
            raise _StaleConnection from exc
        reader = ResponseReader(
            max_head_bytes=MAX_RESPONSE_HEAD_BYTES, max_body_bytes=self._max_response_bytes
        )
        received_any = False
        while not reader.done:
            try:
                chunk = await stream.receive_some(READ_BYTES)
            except (trio.BrokenResourceError, OSError) as exc:
                if not received_any:
                    raise _StaleConnection from exc
                raise
            if not chunk:
                if not received_any:
                    raise _StaleConnection
                reader.feed_eof()
                break
            received_any = True
            reader.feed(chunk)
        assert reader.head is not None
        if not reader.reusable:
            await self.aclose()  # e.g. Connection: close, or a body over the limit
        return reader.head.status, reader.head.headers


class _StaleConnection(Exception):
    """The connection failed before any response byte: safe to try once more."""
