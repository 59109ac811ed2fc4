"""A minimal HTTP/1.1 client for drain posts: one keep-alive connection over trio.

Why not ``httpx.AsyncClient``: measured on the same machine against the same receiver, a
100 KiB post costs httpx about 1.7-2.3 ms of CPU and this client 0.4-0.6 ms (perf/drains.py
and docs/drains.md). A drain spends that per batch of ~600 messages, so with httpx the HTTP
layer alone would cap one drain near 300,000 messages/s of CPU, before any formatting.
What a drain needs is small — POST a body, read a status, keep the connection — so this
module writes requests itself and reads responses with ``drains._response``.

- ``PostEncoder`` turns a post into its wire bytes once (``PreparedPost``): the header lines
  that never change are validated and encoded when the drain starts, each post only formats
  its own values, and the request is joined once. A retry sends the same object again.
  The header rules are h11's (the test suite compares the bytes with h11's).
- The response is read by ``drains._response.ResponseReader`` (status, headers, framing:
  Content-Length, chunked, or until close; 1xx skipped; head and body bounded). It
  replaced h11 there, whose per-event bookkeeping was ~100 µs of CPU per post.
- TLS is ``TlsOverSocket``: ``ssl.SSLObject`` driven straight over the socket, not
  ``trio.SSLStream``, whose per-call bookkeeping was a large share of a post's CPU.
- ``post`` opens the connection when there is none (TCP connect and TLS handshake under
  ``connect_timeout_s``), sends head and body in one write, reads the response head and at
  most ``max_response_bytes`` of body, and keeps the connection when both sides allow it.
- A post that fails on a reused keep-alive connection before any response byte arrived is
  sent once more on a fresh connection (the server may have closed it while idle).
- Any failure or cancellation closes the connection; the next post opens a new one.
- Errors are ``HttpTransportError`` with the cause chained (e.g. a certificate failure).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

import trio

from drains._response import ResponseError, ResponseReader
from drains._url import DrainError

MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024
# A drain's response is a status line and a few headers: 16 KiB reads (trio's TLS record
# read size) instead of allocating a 64 KiB buffer per read.
READ_BYTES: Final = 16 * 1024

# RFC 9110 section 5.6.2 token and section 5.5 field-value (no CR, LF, NUL or other controls,
# no leading or trailing whitespace); the same rules h11 applies when it writes a header.
_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
)
_REQUEST_TARGET: Final = re.compile(rb"[\x21-\x7e]+")


class HttpTransportError(DrainError):
    """The request could not be completed (connect, TLS, write, read or protocol error)."""


@dataclass(frozen=True, slots=True)
class PreparedPost:
    """One POST as it goes on the wire: ``wire`` is head and body, ``body_bytes`` the body's size.

    Built once per batch; every attempt (and the stale-connection resend) sends these bytes.
    """

    target: str
    wire: bytes
    body_bytes: int


def _header_line(name: str, value: str) -> bytes:
    """``Name: value`` CRLF, refusing what h11 would refuse (non-ASCII, controls, padding)."""
    name_bytes = name.encode("ascii")
    value_bytes = value.encode("ascii")
    if not _TOKEN.fullmatch(name_bytes):
        raise ValueError(f"invalid HTTP header name {name!r}: use letters, digits and -")
    if not _FIELD_VALUE.fullmatch(value_bytes):
        raise ValueError(
            f"invalid value for HTTP header {name}: no control characters (CR, LF, NUL) "
            "and no leading or trailing whitespace"
        )
    return b"%s: %s\r\n" % (name_bytes, value_bytes)


class TlsOverSocket(trio.abc.AsyncResource):
    """TLS (``ssl.SSLObject`` over memory BIOs) driven straight over a connected socket.

    What ``trio.SSLStream`` does for a drain or for ``logplex sink``, without its per-call
    bookkeeping (conflict detectors, the retry loop and a scheduler round trip per socket
    call): measured on a 100 KiB post, 400-500 µs of CPU instead of 550-770 µs on the
    client. Sufficient for one side that alternates reading a message with answering it,
    which is all ``Http11Client`` and the sink do; not a general stream (no concurrent send
    and receive, no ``send_eof``).

    ``server_side=True`` serves the handshake with the context's certificate (no host name);
    the caller bounds the handshake with a deadline, as for any read. ``read_bytes`` is the
    size of each socket read: a server reading 100 KiB bodies reads many TLS records per
    system call, a client reading short answers keeps it small.

    Errors are what the ``ssl`` module and the socket raise (``ssl.SSLError`` and other
    ``OSError``), certificate failures included; the peer closing without close_notify
    reads as ``ssl.SSLEOFError``, a clean close_notify as end of stream (``b""`` or 0).
    """

    def __init__(
        self,
        tcp: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        server_side: bool = False,
        read_bytes: int = READ_BYTES,
    ) -> None:
        if server_side == (server_hostname is not None):
            raise ValueError("a client needs server_hostname; a server takes none")
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._read_bytes = read_bytes
        # The socket leaves trio's wrapper (last, so nothing above can leak it): sends and
        # receives are plain non-blocking calls, waiting only when the kernel says so.
        self._socket = socket.socket(fileno=tcp.socket.detach())
        self._socket.setblocking(False)

    async def do_handshake(self) -> None:
        """The TLS handshake, certificate and host name verification included."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._send_outgoing()
                await self._receive_incoming()
                continue
            await self._send_outgoing()
            return

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = self._tls.write(view)
            view = view[written:]
        await self._send_outgoing()

    async def receive_some(self, max_bytes: int) -> bytes:
        while True:
            try:
                return self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._send_outgoing()  # e.g. the answer to a TLS 1.3 KeyUpdate
                await self._receive_incoming()
            except ssl.SSLZeroReturnError:
                return b""

    async def receive_into(self, buffer: memoryview) -> int:
        """Decrypt into ``buffer`` what has arrived (waiting only for the first byte).

        Returns how many bytes were written, 0 at a clean end of stream. Every TLS record
        already read from the socket is decrypted in this one call: a 100 KiB body arriving
        in one socket read costs one call, not one per 16 KiB record.
        """
        filled = 0
        size = len(buffer)
        while filled < size:
            try:
                # With a buffer, ``read`` returns the count written into it (not bytes).
                got = cast(int, self._tls.read(size - filled, buffer[filled:]))
            except ssl.SSLWantReadError:
                if filled:
                    return filled
                await self._send_outgoing()
                await self._receive_incoming()
                continue
            except ssl.SSLZeroReturnError:
                return filled
            if not got:
                return filled
            filled += got
        return filled

    async def aclose(self) -> None:
        if self._socket.fileno() != -1:
            trio.lowlevel.notify_closing(self._socket)
            self._socket.close()
        await trio.lowlevel.checkpoint()

    async def _send_outgoing(self) -> None:
        if not self._outgoing.pending:
            return
        view = memoryview(self._outgoing.read())
        while view:
            try:
                sent = self._socket.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._socket)
                continue
            view = view[sent:]

    async def _receive_incoming(self) -> None:
        while True:
            try:
                data = self._socket.recv(self._read_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._socket)
                continue
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            return


# A connection of the client: plain TCP, or TLS over it.
Transport = trio.SocketStream | TlsOverSocket


class PostEncoder:
    """Encodes the POSTs of one drain: ``Host`` and ``Content-Length`` first, then
    ``fixed_headers`` (the same on every post, validated here once), then one value per name
    of ``per_post_names``, in that order, as HTTP/1.1 with ``Name: value`` lines.

    Raises ``ValueError`` when the target or a fixed header is not valid HTTP.
    """

    def __init__(
        self,
        target: str,
        *,
        host_header: str,
        fixed_headers: Sequence[tuple[str, str]],
        per_post_names: Sequence[str],
    ) -> None:
        target_bytes = target.encode("ascii")
        if not _REQUEST_TARGET.fullmatch(target_bytes):
            raise ValueError(f"invalid request target {target!r}: it must be printable ASCII")
        self._target = target
        self._start = b"POST %s HTTP/1.1\r\n%sContent-Length: " % (
            target_bytes,
            _header_line("Host", host_header),
        )
        self._fixed = b"\r\n" + b"".join(_header_line(n, v) for n, v in fixed_headers)
        for name in per_post_names:
            _header_line(name, "x")
        self._per_post_names = tuple(per_post_names)

    def encode(
        self, per_post_values: Sequence[str], body_parts: Sequence[bytes], body_bytes: int
    ) -> PreparedPost:
        """The post with these header values (one per ``per_post_names``) and body.

        ``body_bytes`` is the total size of ``body_parts``, which the caller already knows
        (a drain's ``Taken.byte_count``): with it the request is built in one join, where
        summing a thousand lengths in Python would cost as much as the join itself. A wrong
        size raises ``ValueError`` rather than sending a malformed request.
        """
        if len(per_post_values) != len(self._per_post_names):
            raise ValueError(
                f"expected {len(self._per_post_names)} per-post header values, "
                f"got {len(per_post_values)}"
            )
        wire = [self._start, b"%d" % body_bytes, self._fixed]
        wire.extend(map(_header_line, self._per_post_names, per_post_values))
        wire.append(b"\r\n")
        head_bytes = sum(map(len, wire))
        wire.extend(body_parts)
        joined = b"".join(wire)
        if len(joined) != head_bytes + body_bytes:
            raise ValueError(
                f"body_bytes {body_bytes} does not match the body parts' total size "
                f"{len(joined) - head_bytes}"
            )
        return PreparedPost(self._target, joined, body_bytes)


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
        self._stream: Transport | None = None
        self.connects = 0
        self.last_connect_s = 0.0

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _connect(self) -> None:
        started = trio.current_time()
        try:
            with trio.fail_after(self._connect_timeout_s):
                tcp = await trio.open_tcp_stream(self._host, self._port)
                stream: Transport = tcp
                if self._tls is not None:
                    tls_stream = TlsOverSocket(tcp, self._tls, server_hostname=self._host)
                    try:
                        await tls_stream.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(tls_stream)
                        raise
                    stream = tls_stream
        except trio.TooSlowError as exc:
            raise HttpTransportError(
                f"connect timed out after {self._connect_timeout_s:g} s"
            ) from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise HttpTransportError("connect failed") from exc
        self._stream = stream
        self.connects += 1
        self.last_connect_s = trio.current_time() - started

    async def post(self, post: PreparedPost) -> tuple[int, dict[str, str]]:
        """Send ``post``; returns the status and the response headers (lower-case names)."""
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

    async def _post_once(self, post: PreparedPost) -> tuple[int, dict[str, str]]:
        try:
            if self._stream is None:
                await self._connect()
            assert self._stream is not None
            return await self._exchange(self._stream, post)
        except _StaleConnection:
            raise
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
                raise HttpTransportError("connection failed") from exc
            if isinstance(exc, ResponseError):
                raise HttpTransportError(f"bad HTTP response: {exc}") from exc
            raise

    async def _exchange(self, stream: Transport, post: PreparedPost) -> tuple[int, dict[str, str]]:
        # ``post.wire`` is the whole request; ``drains._response`` reads the answer.
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
