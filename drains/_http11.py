"""A minimal HTTP/1.1 client for drain posts: one keep-alive connection, h11 over trio.

Why not ``httpx.AsyncClient``: measured on the same machine against the same receiver, a
100 KiB post costs httpx about 1.7-2.3 ms of CPU and this client 0.4-0.6 ms (perf/drains.py
and docs/drains.md). A drain spends that per batch of ~600 messages, so with httpx the HTTP
layer alone would cap one drain near 300,000 messages/s of CPU, before any formatting.
What a drain needs is small — POST a body, read a status, keep the connection — so the
protocol work is h11's (the sans-IO state machine httpx itself builds on) and this module
only moves bytes.

- ``post`` opens the connection when there is none (TCP connect and TLS handshake under
  ``connect_timeout_s``), sends head and body in one write, reads the response head and at
  most ``max_response_bytes`` of body, and keeps the connection when both sides allow it.
- A post that fails on a reused keep-alive connection before any response byte arrived is
  sent once more on a fresh connection (the server may have closed it while idle).
- Any failure or cancellation closes the connection; the next post opens a new one.
- Errors are ``HttpTransportError`` with the cause chained (e.g. a certificate failure).
"""

from __future__ import annotations

import ssl
from typing import Final

import h11
import trio

from drains._url import DrainError

MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024
READ_BYTES: Final = 64 * 1024


class HttpTransportError(DrainError):
    """The request could not be completed (connect, TLS, write, read or protocol error)."""


class Http11Client:
    """One keep-alive HTTP/1.1 connection to ``host:port``, opened on demand."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        host_header: str,
        connect_timeout_s: float,
        max_response_bytes: int = 64 * 1024,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._host_header = host_header
        self._connect_timeout_s = connect_timeout_s
        self._max_response_bytes = max_response_bytes
        self._stream: trio.abc.Stream | None = None
        self._conn: h11.Connection | None = None
        self.connects = 0
        self.last_connect_s = 0.0

    async def aclose(self) -> None:
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _connect(self) -> None:
        started = trio.current_time()
        try:
            with trio.fail_after(self._connect_timeout_s):
                tcp = await trio.open_tcp_stream(self._host, self._port)
                stream: trio.abc.Stream = tcp
                if self._tls is not None:
                    tls_stream = trio.SSLStream(tcp, self._tls, server_hostname=self._host)
                    try:
                        await tls_stream.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(tcp)
                        raise
                    stream = tls_stream
        except trio.TooSlowError as exc:
            raise HttpTransportError(
                f"connect timed out after {self._connect_timeout_s:g} s"
            ) from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise HttpTransportError("connect failed") from exc
        self._stream = stream
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)
        self.connects += 1
        self.last_connect_s = trio.current_time() - started

    async def post(
        self, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, dict[str, str]]:
        """POST ``body``; returns the status and the response headers (lower-case names)."""
        reused = self._stream is not None
        try:
            return await self._post_once(target, headers, body)
        except _StaleConnection as exc:
            await self.aclose()
            if not reused:
                raise HttpTransportError("connection closed before a response") from exc
        try:
            return await self._post_once(target, headers, body)
        except _StaleConnection as exc:
            await self.aclose()
            raise HttpTransportError("connection closed before a response") from exc

    async def _post_once(
        self, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, dict[str, str]]:
        try:
            if self._stream is None:
                await self._connect()
            assert self._stream is not None
            assert self._conn is not None
            return await self._exchange(self._stream, self._conn, target, headers, body)
        except _StaleConnection:
            raise
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
                raise HttpTransportError("connection failed") from exc
            if isinstance(exc, h11.ProtocolError):
                raise HttpTransportError(f"bad HTTP response: {exc}") from exc
            raise

    async def _exchange(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> tuple[int, dict[str, str]]:
        request_headers = [
            ("Host", self._host_header),
            ("Content-Length", str(len(body))),
            *headers,
        ]
        data = conn.send(h11.Request(method="POST", target=target, headers=request_headers))
        data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        received_any = False
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            raise _StaleConnection from exc
        response: h11.Response | None = None
        body_bytes = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = await stream.receive_some(READ_BYTES)
                except (trio.BrokenResourceError, OSError) as exc:
                    if not received_any:
                        raise _StaleConnection from exc
                    raise
                if not chunk and not received_any:
                    raise _StaleConnection
                received_any = True
                conn.receive_data(bytes(chunk))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
                if body_bytes > self._max_response_bytes:
                    break  # do not read an unbounded answer: drop the connection instead
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed before the end of the response
                raise HttpTransportError("connection closed before the response ended")
        assert response is not None
        status = response.status_code
        response_headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in response.headers
        }
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.aclose()
        return status, response_headers


class _StaleConnection(Exception):
    """The connection failed before any response byte: safe to try once more."""
