"""A scriptable HTTP(S) receiver on a real loopback socket, for drain tests.

It speaks HTTP/1.1 with h11 (keep-alive), records every request (headers and the exact body
bytes) and answers what the test's ``respond`` function says: a status with headers, a
stall, a slow read, or a TCP reset.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

RESET = -1  # a status value meaning: reset the TCP connection instead of answering


@dataclass
class Recorded:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class Reply:
    status: int = 204
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0


Respond = Callable[[Recorded, int], Awaitable[Reply] | Reply]


def always(status: int) -> Respond:
    def respond(request: Recorded, index: int) -> Reply:
        return Reply(status)

    return respond


class FakeHttpReceiver:
    def __init__(
        self,
        respond: Respond | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        read_byte_delay_s: float = 0.0,
        hang_up_after_response: bool = False,
        response_body: bytes = b"",
    ) -> None:
        self.hang_up_after_response = hang_up_after_response
        self.response_body = response_body
        self.respond = respond or always(204)
        self.requests: list[Recorded] = []
        self.ssl_context = ssl_context
        self.read_byte_delay_s = read_byte_delay_s
        self.port = 0
        self.connections = 0
        self.closed = 0  # connections that ended (either side closed)
        self.arrived = trio.Event()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://localhost:{self.port}/logs?x=1"

    def delivered_lines(self) -> list[bytes]:
        """The message parts of every frame of every successfully answered request."""
        out: list[bytes] = []
        for request in self.requests:
            out.extend(request.body.splitlines())
        return out

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        raw = stream
        conn_stream: trio.abc.Stream = stream
        if self.ssl_context is not None:
            conn_stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, conn_stream, number)
                if request is None:
                    return
                index = len(self.requests)
                self.requests.append(request)
                self.arrived.set()
                self.arrived = trio.Event()
                reply = self.respond(request, index)
                if not isinstance(reply, Reply):
                    reply = await reply
                if reply.delay_s:
                    await trio.sleep(reply.delay_s)
                if reply.status == RESET:
                    # Unanswered: the drain must not count this request as delivered.
                    request.headers["x-test-outcome"] = "reset"
                    raw.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    raw.socket.close()
                    return
                request.headers["x-test-outcome"] = str(reply.status)
                body = self.response_body if reply.status != 204 else b""
                headers = [*reply.headers, ("Content-Length", str(len(body)))]
                data = conn.send(h11.Response(status_code=reply.status, headers=headers))
                if body:
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
                await conn_stream.send_all(data)
                if conn.our_state is h11.MUST_CLOSE or self.hang_up_after_response:
                    return  # silently: the client believes the connection is kept alive
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return
        finally:
            self.closed += 1
            await trio.aclose_forcefully(conn_stream)

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream, number: int
    ) -> Recorded | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                size = 1 if self.read_byte_delay_s and head is not None else 65536
                if size == 1:
                    await trio.sleep(self.read_byte_delay_s)
                data = await stream.receive_some(size)
                conn.receive_data(bytes(data))
                if not data:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Recorded(
                    method=head.method.decode(),
                    target=head.target.decode(),
                    headers={k.decode().lower(): v.decode() for k, v in head.headers},
                    body=bytes(body),
                    connection=number,
                )
            else:
                return None

    def delivered(self) -> list[Recorded]:
        return [r for r in self.requests if r.headers.get("x-test-outcome", "").startswith("2")]
