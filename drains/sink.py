"""``logplex sink``: a receiver for HTTPS drain subscribers (DESIGN 2 and 5.4).

``logplex sink --listen HOST:PORT [--tls-cert FILE --tls-key FILE] [--jsonl FILE]
[--blackhole]`` serves HTTP, or HTTPS with a certificate, on trio with h11 (one small
server: no framework between the socket and the checks). Every POST is verified by
``drains.receiver`` (400/413/415 with ``{"error": reason}``), answered 204, de-duplicated by
``Logplex-Frame-Id`` over the last ``DEDUPE_WINDOW`` ids, and each message is written as one
JSON object per line — ``{"ts", "pri", "source", "ps", "msg", "drain_token", "frame_id"}`` —
to ``--jsonl`` or stdout. ``--blackhole`` checks the headers and the line count only and
counts, for benchmarks.

The bound address is printed first as ``listening http=HOST:PORT`` (flushed), so scripts
can use port 0. TLS is ``drains._tls.TlsOverSocket`` on the server side; h11 parses each
request head and a ``Content-Length`` body is read straight into one buffer (the cost per
100 KiB post matters: a benchmark's sink must not be the bottleneck). Every connection has a
handshake deadline, an idle timeout and a deadline per request; heads and bodies are bounded.
SIGINT/SIGTERM stop it with exit code 0 and a one-line summary on stderr.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import re
import signal
import ssl
import sys
from dataclasses import dataclass
from typing import BinaryIO, Final

import h11
import trio

from drains._tls import TlsOverSocket
from drains.receiver import (
    MAX_BODY_BYTES,
    ReceiverError,
    check_headers,
    check_line_count,
    verify_post,
)
from logplex.codecs.timestamps import format_ts

DEDUPE_WINDOW: Final = 10_000
IDLE_TIMEOUT_S: Final = 60.0  # for the next request on a connection to begin
REQUEST_TIMEOUT_S: Final = 60.0  # for a begun request to arrive whole and be answered
HANDSHAKE_TIMEOUT_S: Final = 10.0
MAX_HEAD_BYTES: Final = 64 * 1024
READ_BYTES: Final = 256 * 1024
_HEAD_END: Final = re.compile(rb"\n\r?\n")


class FrameIdWindow:
    """The last ``capacity`` Frame-Ids seen: a retried post is recognised and not rewritten."""

    def __init__(self, capacity: int = DEDUPE_WINDOW) -> None:
        self._capacity = capacity
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    def check_and_add(self, frame_id: str) -> bool:
        """True when ``frame_id`` was already seen (a duplicate)."""
        if frame_id in self._seen:
            self._seen.move_to_end(frame_id)
            return True
        self._seen[frame_id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return False


@dataclass
class SinkStats:
    requests: int = 0
    messages: int = 0
    duplicates: int = 0
    rejected: int = 0

    def summary(self) -> str:
        return (
            f"sink: requests={self.requests} messages={self.messages} "
            f"duplicates={self.duplicates} rejected={self.rejected}"
        )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class Sink:
    """The request handling of ``logplex sink``; ``serve`` runs it on listeners."""

    def __init__(self, output: BinaryIO | None, *, blackhole: bool = False) -> None:
        self.output = output
        self.blackhole = blackhole
        self.stats = SinkStats()
        self.window = FrameIdWindow()

    def accept(self, headers: dict[str, str], body: bytes | bytearray) -> None:
        """Verify, de-duplicate and write one post; raises ``ReceiverError`` to refuse it."""
        if self.blackhole:
            checked = check_headers(headers, len(body))
            check_line_count(body, checked.msg_count)
            self._count(checked.frame_id, checked.msg_count)
            return
        post = verify_post(headers, bytes(body))
        if not self._count(post.frame_id, len(post.frames)) or self.output is None:
            return
        lines = [
            json.dumps(
                {
                    "ts": format_ts(frame.ts_us).decode(),
                    "pri": frame.pri,
                    "source": _text(frame.source),
                    "ps": _text(frame.ps),
                    "msg": _text(frame.msg),
                    "drain_token": post.drain_token,
                    "frame_id": post.frame_id,
                },
                ensure_ascii=False,
            ).encode()
            + b"\n"
            for frame in post.frames
        ]
        self.output.write(b"".join(lines))
        self.output.flush()

    def _count(self, frame_id: str, message_count: int) -> bool:
        """Count a verified post; False when it is a duplicate (already written)."""
        self.stats.requests += 1
        if self.window.check_and_add(frame_id):
            self.stats.duplicates += 1
            return False
        self.stats.messages += message_count
        return True

    async def handle_connection(
        self, tcp: trio.SocketStream, tls: ssl.SSLContext | None = None
    ) -> None:
        """Serve one connection: keep-alive requests in turn until the peer leaves or fails.

        The TLS handshake must finish in ``HANDSHAKE_TIMEOUT_S``, the next request must start
        within ``IDLE_TIMEOUT_S``, and once its first byte is here the whole request (head,
        body and our answer) must be done in ``REQUEST_TIMEOUT_S``: one deadline per
        request, not one per read.
        """
        transport: ServerTransport = PlainSocket(tcp)
        try:
            if tls is not None:
                transport = TlsOverSocket(tcp, tls, server_side=True, read_bytes=READ_BYTES)
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    await transport.do_handshake()
            reader = RequestReader(transport)
            while True:
                with trio.CancelScope(deadline=trio.current_time() + IDLE_TIMEOUT_S) as scope:
                    if not await reader.wait_for_request():
                        return
                    scope.deadline = trio.current_time() + REQUEST_TIMEOUT_S
                    # A peer sending without pause never blocks a read: let the other
                    # connections (and cancellation) in once per request.
                    await trio.lowlevel.checkpoint()
                    if not await self._serve_request(reader):
                        return
                if scope.cancelled_caught:
                    return  # idle, or too slow to send a request: the peer gets no answer
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return  # TooSlowError: the TLS handshake did not finish in time
        finally:
            await trio.aclose_forcefully(transport)

    async def _serve_request(self, reader: RequestReader) -> bool:
        """Read, check and answer one request; False when the connection must close."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            head = await reader.read_head()
            if head is None:
                return False
            conn.receive_data(head)
            request = conn.next_event()
            if not isinstance(request, h11.Request):  # a head is complete by construction
                raise h11.RemoteProtocolError("incomplete request head", error_status_hint=400)
            if request.method != b"POST":
                return await self._respond(conn, reader, 405, "only POST is accepted", close=True)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            if "transfer-encoding" in headers:
                body = await self._read_chunked_body(conn, reader)
            else:
                length = int(headers.get("content-length", "0"))  # h11 checked the digits
                if length > MAX_BODY_BYTES:
                    reason = f"body of {length} bytes is over {MAX_BODY_BYTES}"
                    return await self._respond(conn, reader, 413, reason, close=True)
                body = await reader.read_body(length)
        except _HeadTooLarge:
            reason = f"request head is over {MAX_HEAD_BYTES} bytes"
            return await self._respond(conn, reader, 431, reason, close=True)
        except _BodyTooLarge:
            reason = f"body is over {MAX_BODY_BYTES} bytes"
            return await self._respond(conn, reader, 413, reason, close=True)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            return await self._respond(conn, reader, status, f"bad request: {exc}", close=True)
        if body is None:
            return False  # the peer left in the middle of the request
        try:
            self.accept(headers, body)
        except ReceiverError as exc:
            self.stats.rejected += 1
            return await self._respond(conn, reader, exc.status, exc.reason, close=False)
        if request.http_version == b"1.1" and "connection" not in headers:
            # What h11 answers to any such request (see _NO_CONTENT), without its per-event
            # validation: this is the answer to nearly every post.
            await reader.transport.send_all(_NO_CONTENT)
            return True
        return await self._respond(conn, reader, 204, "", close=False)

    async def _read_chunked_body(
        self, conn: h11.Connection, reader: RequestReader
    ) -> bytearray | None:
        """A body without Content-Length: h11 decodes the chunks (drains never send these)."""
        body = bytearray()
        if reader.pending:  # (an empty receive_data would tell h11 the peer closed)
            conn.receive_data(bytes(reader.pending))
            reader.pending.clear()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if not await reader.fill():
                    return None
                conn.receive_data(bytes(reader.pending))
                reader.pending.clear()
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    raise _BodyTooLarge
            elif isinstance(event, h11.EndOfMessage):
                reader.pending[:0] = conn.trailing_data[0]  # a pipelined next request
                return body
            else:  # ConnectionClosed
                return None

    async def _respond(
        self, conn: h11.Connection, reader: RequestReader, status: int, reason: str, *, close: bool
    ) -> bool:
        """Answer with h11; True when the connection can serve another request."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        if status == 204:
            data = conn.send(h11.Response(status_code=204, headers=[]))
        else:
            payload = json.dumps({"error": reason}).encode()
            headers = [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
            ]
            if close:
                headers.append(("Connection", "close"))
            data = conn.send(h11.Response(status_code=status, headers=headers))
            data += conn.send(h11.Data(data=payload))
        data += conn.send(h11.EndOfMessage())
        await reader.transport.send_all(data)
        return not close and conn.states[h11.SERVER] is h11.DONE


def _no_content_answer() -> bytes:
    """h11's 204 answer to an HTTP/1.1 request without a ``Connection`` header."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: sink\r\nContent-Length: 0\r\n\r\n")
    conn.next_event()
    return conn.send(h11.Response(status_code=204, headers=[])) + conn.send(h11.EndOfMessage())


_NO_CONTENT: Final = _no_content_answer()


class _HeadTooLarge(Exception):
    """The request head is over ``MAX_HEAD_BYTES``."""


class _BodyTooLarge(Exception):
    """A chunked body went over ``MAX_BODY_BYTES``."""


class PlainSocket(trio.abc.AsyncResource):
    """A plain TCP connection with the two calls the sink reads and answers through."""

    def __init__(self, tcp: trio.SocketStream) -> None:
        self._tcp = tcp

    async def receive_into(self, buffer: memoryview) -> int:
        return await self._tcp.socket.recv_into(buffer)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._tcp.send_all(data)

    async def aclose(self) -> None:
        await self._tcp.aclose()


ServerTransport = PlainSocket | TlsOverSocket


class RequestReader:
    """The bytes of one connection: heads are found in ``pending``, bodies read in place.

    Reads are ``READ_BYTES`` at a time while looking for a head; once a head gives the
    body's length, the body is read straight into one buffer of that size (only the part
    that came with the head is copied), so a 100 KiB body costs a few reads, not one per
    16 KiB TLS record, and nothing after the body is consumed: a pipelined next request
    stays where it is.
    """

    def __init__(self, transport: ServerTransport) -> None:
        self.transport = transport
        self.pending = bytearray()
        self._scratch = bytearray(READ_BYTES)

    async def fill(self) -> bool:
        """Append what arrives next to ``pending``; False at end of stream."""
        view = memoryview(self._scratch)
        got = await self.transport.receive_into(view)
        if not got:
            return False
        self.pending += view[:got]
        return True

    async def wait_for_request(self) -> bool:
        """Wait for the first byte of the next request; False when the peer closed."""
        return bool(self.pending) or await self.fill()

    async def read_head(self) -> bytes | None:
        """The next request head through its empty line; None when the peer left first."""
        while True:
            # RFC 9112 section 2.2: empty lines before a request line are ignored.
            while self.pending[:2] == b"\r\n":
                del self.pending[:2]
            # The empty line ending the head; like h11, bare LF line ends are accepted.
            blank = _HEAD_END.search(self.pending)
            if blank is not None:
                if blank.end() > MAX_HEAD_BYTES:
                    raise _HeadTooLarge
                head = bytes(self.pending[: blank.end()])
                del self.pending[: blank.end()]
                return head
            if len(self.pending) > MAX_HEAD_BYTES:
                raise _HeadTooLarge
            if not await self.fill():
                return None

    async def read_body(self, length: int) -> bytearray | None:
        """Exactly ``length`` body bytes; None when the peer left before they all came."""
        body = bytearray(length)
        have = min(len(self.pending), length)
        if have:
            body[:have] = self.pending[:have]
            del self.pending[:have]
        view = memoryview(body)
        while have < length:
            got = await self.transport.receive_into(view[have:])
            if not got:
                return None
            have += got
        return body


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"--listen {value!r} is not HOST:PORT (port 0..65535)")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_sink(
    sink: Sink,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``sink`` on HOST:PORT until cancelled; ``task_status`` gets the bound address."""
    listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    task_status.started((str(bound[0]), int(bound[1])))
    await trio.serve_listeners(
        functools.partial(sink.handle_connection, tls=ssl_context), listeners
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``logplex sink`` flags."""
    parser.add_argument(
        "--listen", required=True, type=parse_listen, help="HOST:PORT to listen on (port 0: any)"
    )
    parser.add_argument("--tls-cert", help="certificate chain (PEM): serve HTTPS")
    parser.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    parser.add_argument("--jsonl", help="append one JSON object per message here (default stdout)")
    parser.add_argument(
        "--blackhole", action="store_true", help="only check and count, write nothing"
    )


async def _run(args: argparse.Namespace, output: BinaryIO | None) -> None:
    host, port = args.listen
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    sink = Sink(output, blackhole=args.blackhole)
    async with trio.open_nursery() as nursery:
        bound_host, bound_port = await nursery.start(serve_sink, sink, host, port, ssl_context)
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        sys.stdout.write(f"listening http={shown_host}:{bound_port}\n")
        sys.stdout.flush()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    sys.stderr.write(sink.stats.summary() + "\n")
    sys.stderr.flush()


def main(args: argparse.Namespace) -> int:
    """Run the sink until SIGINT/SIGTERM; returns the exit code."""
    if bool(args.tls_cert) != bool(args.tls_key):
        sys.stderr.write("logplex sink: --tls-cert and --tls-key go together\n")
        return 2
    try:
        if args.blackhole:
            trio.run(_run, args, None)
        elif args.jsonl:
            with open(args.jsonl, "ab") as output:
                trio.run(_run, args, output)
        else:
            trio.run(_run, args, sys.stdout.buffer)
    except OSError as exc:
        sys.stderr.write(f"logplex sink: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    command = argparse.ArgumentParser(prog="logplex sink", description=__doc__)
    add_arguments(command)
    sys.exit(main(command.parse_args()))
