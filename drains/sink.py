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
can use port 0. Every connection has an idle timeout; request heads and bodies are bounded.
SIGINT/SIGTERM stop it with exit code 0 and a one-line summary on stderr.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import ssl
import sys
from dataclasses import dataclass
from typing import BinaryIO, Final

import h11
import trio

from drains.receiver import (
    MAX_BODY_BYTES,
    ReceiverError,
    check_headers,
    check_line_count,
    verify_post,
)
from logplex.codecs.timestamps import format_ts

DEDUPE_WINDOW: Final = 10_000
IDLE_TIMEOUT_S: Final = 60.0
MAX_HEAD_BYTES: Final = 64 * 1024
READ_BYTES: Final = 256 * 1024


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

    def accept(self, headers: dict[str, str], body: bytes) -> None:
        """Verify, de-duplicate and write one post; raises ``ReceiverError`` to refuse it."""
        if self.blackhole:
            checked = check_headers(headers, len(body))
            check_line_count(body, checked.msg_count)
            self._count(checked.frame_id, checked.msg_count)
            return
        post = verify_post(headers, body)
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

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                status, reason = request
                await self._respond(conn, stream, status, reason)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return
        except h11.RemoteProtocolError:
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> tuple[int, str] | None:
        """Read one request; returns (status, reason) to answer, or None when the peer left."""
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(IDLE_TIMEOUT_S):
                    data = await stream.receive_some(READ_BYTES)
                conn.receive_data(bytes(data))
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
                if event.method != b"POST":
                    return 405, "only POST is accepted"
                length = dict(event.headers).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
                    return 413, f"body of {int(length)} bytes is over {MAX_BODY_BYTES}"
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    return 413, f"body is over {MAX_BODY_BYTES} bytes"
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
                try:
                    self.accept(headers, bytes(body))
                except ReceiverError as exc:
                    self.stats.rejected += 1
                    return exc.status, exc.reason
                return 204, ""
            else:  # ConnectionClosed or PAUSED
                return None

    async def _respond(
        self, conn: h11.Connection, stream: trio.abc.Stream, status: int, reason: str
    ) -> None:
        if status == 204:
            data = conn.send(h11.Response(status_code=204, headers=[]))
        else:
            payload = json.dumps({"error": reason}).encode()
            headers = [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
            ]
            if conn.their_state is not h11.DONE:
                headers.append(("Connection", "close"))
            data = conn.send(h11.Response(status_code=status, headers=headers))
            data += conn.send(h11.Data(data=payload))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)


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
    served: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
    if ssl_context is not None:
        served = [trio.SSLListener(listener, ssl_context) for listener in listeners]
    task_status.started((str(bound[0]), int(bound[1])))
    await trio.serve_listeners(sink.handle_connection, served)


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
