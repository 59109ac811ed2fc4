"""TLS for the drains layer: the client context, and a TLS pump straight over a socket.

``client_tls_context`` is what every TLS drain verifies with (DESIGN 8 and docs/drains.md):
the system CAs plus ``DrainSettings.ca_file``, host name checked, verification off only for
a URL ending in ``#insecure``. ``TlsOverSocket`` is the TLS stream of the HTTPS drain's
connection (``drains.http.connection``) and of ``logplex sink`` (``drains.sink``).
"""

from __future__ import annotations

import functools
import socket
import ssl
from typing import Final, cast

import trio

from drains._url import DrainURL

# A drain's response is a status line and a few headers: 16 KiB reads (trio's TLS record
# read size) instead of allocating a 64 KiB buffer per read.
READ_BYTES: Final = 16 * 1024


def client_tls_context(url: DrainURL, ca_file: str | None) -> ssl.SSLContext:
    """System CAs plus ``ca_file``, host name checked; verification off only for ``#insecure``.

    Contexts are shared between drains: building one loads the system CA store, about
    50 ms of CPU, which a router with hundreds of TLS drains must not pay per drain.
    """
    return _shared_tls_context(ca_file, url.insecure)


@functools.lru_cache(maxsize=16)
def _shared_tls_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class TlsOverSocket(trio.abc.AsyncResource):
    """TLS (``ssl.SSLObject`` over memory BIOs) driven straight over a connected socket.

    What ``trio.SSLStream`` does for a drain or for ``logplex sink``, without its per-call
    bookkeeping (conflict detectors, the retry loop and a scheduler round trip per socket
    call), a large share of a post's CPU (perf/RESULTS.md, "Drains"). Sufficient for one
    side that alternates reading a message with answering it, which is all
    ``drains.http.connection.Http11Client`` and the sink do; not a general stream (no
    concurrent send and receive, no ``send_eof``).

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
