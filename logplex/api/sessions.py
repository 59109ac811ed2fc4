"""Log sessions over HTTP: ``POST /v3/sessions`` and ``GET /sessions/{uuid}``.

DESIGN section 3 (sessions, filters), 5.3 (tail lines), 5.5 (L11) and 8 (tails). Creating a
session needs the admin key; fetching it needs only the URL (a random uuid4 capability). A
fetch answers ``200`` with a chunked ``text/plain`` body: the last ``num`` history lines
that pass the filters, then, for a tailing session, live lines until the client goes away
(or the channel is deleted, which ends the body cleanly).

The tail subscription is opened in the same synchronous step as the history snapshot, with
no await between them: ``router.publish`` never runs in between, so the client sees each
line exactly once, neither lost nor repeated at the seam.

Limits (``logplex.api.registry``): a channel holds at most ``--max-sessions-per-channel``
sessions and a session URL serves at most ``--max-clients-per-session`` fetches at once;
past either the answer is 429 with ``Retry-After`` naming the limit, counted in
``logplex_limit_refusals_total``. The router-wide caps (sessions, concurrent fetches) answer
503.

In a cluster (``ApiState.session_directory`` set) a session is shared with every router: its
creation returns once the directory holds it as well, and a fetch of an id this router does
not know asks the directory and adopts the session found there (``SessionRegistry.adopt``),
under the same limits. A directory that cannot be reached answers 503.

A tail whose client reads nothing for ``IDLE_READER_TIMEOUT_S`` (60 s) is disconnected: its
router subscription is closed at once and the response ends without its final chunk.
hypercorn shields its socket writes from cancellation, so the write stuck behind a
non-reading client is failed by the kernel instead: ``drop_connections_that_stop_reading``
sets ``TCP_USER_TIMEOUT`` on the HTTP listener, for whoever binds it (``logplex.serve.wiring``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from logplex import metrics
from logplex.api.base import (
    ApiError,
    ApiState,
    TailLike,
    api_state,
    read_json_object,
    require_admin,
)
from logplex.api.registry import (
    RegistryFull,
    SessionLimitReached,
    SessionRequestError,
    SessionSpec,
    parse_session_request,
)
from logplex.codecs.notices import tail_line
from logplex.codecs.records import Message
from logplex.config.store import StoreUnavailable
from logplex.fanout.router import message_filter

IDLE_READER_TIMEOUT_S = 60.0
MAX_CHUNK_BYTES = 64 * 1024
LIMIT_RETRY_AFTER_S = 5  # what a 429 or 503 of a session limit asks the client to wait


def _limit_error(status: int, limit: str, message: str) -> ApiError:
    metrics.LIMIT_REFUSALS.labels(limit=limit).inc()
    return ApiError(status, message, headers={"Retry-After": str(LIMIT_RETRY_AFTER_S)})


def drop_connections_that_stop_reading(
    listener: socket.socket, timeout_s: float = IDLE_READER_TIMEOUT_S
) -> None:
    """Have the kernel drop a connection whose peer acknowledges none of our data for
    ``timeout_s`` (``TCP_USER_TIMEOUT``; Linux honours it through zero-window probing, so a
    peer that stops reading counts). Set on the listening socket, every accepted connection
    inherits it. This is what finally closes a tail whose client stopped reading: the app
    cannot interrupt hypercorn's shielded write, but the kernel can fail it.
    """
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout_s * 1000))


async def create_session(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    body = await read_json_object(request)
    try:
        spec = parse_session_request(body)
    except SessionRequestError as error:
        raise ApiError(400, str(error)) from None
    if not state.router.has_channel(spec.channel):
        raise ApiError(422, f"channel {spec.channel!r} not found")
    try:
        session_id = state.sessions.create(
            spec, trio.current_time(), max_per_channel=state.config.max_sessions_per_channel
        )
    except SessionLimitReached as error:
        raise _limit_error(429, error.limit, str(error)) from None
    except RegistryFull as error:
        raise _limit_error(503, "sessions_total", str(error)) from None
    if state.session_directory is not None:
        try:
            await state.session_directory.put(session_id, spec)
        except StoreUnavailable as error:
            state.sessions.discard(session_id)
            raise _unavailable(error) from None
        except BaseException:
            state.sessions.discard(session_id)
            raise
    url = f"{state.config.public_url}/sessions/{session_id}"
    return JSONResponse({"url": url}, status_code=201, headers={"Location": url})


def history_lines(
    history: list[Message], *, num: int, ps: bytes | None, source: bytes | None
) -> list[Message]:
    """The last ``num`` messages of ``history`` that pass the session filters, oldest first."""
    if num <= 0:
        return []
    if ps is not None or source is not None:
        accepts = message_filter(ps=ps, source=source)
        history = [message for message in history if accepts(message)]
    return history[-num:]


def encode_chunks(
    messages: list[Message], max_chunk_bytes: int = MAX_CHUNK_BYTES
) -> Iterator[bytes]:
    """Tail lines (5.3) of ``messages``, joined into chunks of about ``max_chunk_bytes``.

    A generator, so a fetch of a long history holds one chunk at a time, not all of them.
    """
    pending: list[bytes] = []
    size = 0
    for message in messages:
        line = tail_line(message)
        pending.append(line)
        size += len(line)
        if size >= max_chunk_bytes:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _unavailable(error: StoreUnavailable) -> ApiError:
    return ApiError(503, str(error), headers={"Retry-After": str(LIMIT_RETRY_AFTER_S)})


def _begin_fetch(state: ApiState, session_id: str) -> SessionSpec | None:
    try:
        return state.sessions.begin_fetch(
            session_id, trio.current_time(), max_clients=state.config.max_clients_per_session
        )
    except SessionLimitReached as error:
        raise _limit_error(429, error.limit, str(error)) from None
    except RegistryFull as error:
        raise _limit_error(503, "session_fetches_total", str(error)) from None


async def _adopt_from_directory(state: ApiState, session_id: str) -> bool:
    """Look an id unknown here up in the cluster's directory; True when it was found and
    is now a session of this router."""
    if state.session_directory is None:
        return False
    try:
        spec = await state.session_directory.get(session_id)
    except StoreUnavailable as error:
        raise _unavailable(error) from None
    if spec is None:
        return False
    try:
        state.sessions.adopt(
            session_id,
            spec,
            trio.current_time(),
            max_per_channel=state.config.max_sessions_per_channel,
        )
    except SessionLimitReached as error:
        raise _limit_error(429, error.limit, str(error)) from None
    except RegistryFull as error:
        raise _limit_error(503, "sessions_total", str(error)) from None
    return True


async def stream_session(request: Request) -> Response:
    state = api_state(request)
    session_id: str = request.path_params["session_id"]
    spec = _begin_fetch(state, session_id)
    if spec is None and await _adopt_from_directory(state, session_id):
        spec = _begin_fetch(state, session_id)
    if spec is None:
        raise ApiError(404, "session not found: it never existed or expired; create a new one")
    if not state.router.has_channel(spec.channel):
        state.sessions.end_fetch(session_id, trio.current_time())
        raise ApiError(404, f"the session's channel {spec.channel!r} no longer exists")
    # The tail and the history snapshot together, each line in exactly one of them
    # (``Router.open_view``: one synchronous step in a single process).
    try:
        tail, snapshot = await state.router.open_view(
            spec.channel, ps=spec.ps, source=spec.source, tail=spec.tail
        )
    except BaseException:
        state.sessions.end_fetch(session_id, trio.current_time())
        raise
    history = history_lines(snapshot, num=spec.num, ps=spec.ps, source=spec.source)
    return SessionStream(state, session_id, history, tail)


class SessionStream(Response):
    """The chunked body of one session fetch; see the module docstring."""

    def __init__(
        self, state: ApiState, session_id: str, history: list[Message], tail: TailLike | None
    ) -> None:
        super().__init__(status_code=200)
        # Lines are bytes as written by the apps, not necessarily UTF-8: no charset claimed.
        self.raw_headers = [(b"content-type", b"text/plain")]
        self._state = state
        self._session_id = session_id
        self._history = history
        self._tail = tail
        # The write in progress: its number and start time; the watchdog waits on the event.
        self._sends_started = 0
        self._send_started_s: float | None = None
        self._send_began = trio.Event()
        self.stalled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            finished = False  # stays False when the client went away mid-stream
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                nursery.start_soon(self._watch_stalled_reader)
                finished = await self._stream(send)
                nursery.cancel_scope.cancel()
            if finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if self._tail is not None:
                self._tail.close()
            self._state.sessions.end_fetch(self._session_id, trio.current_time())

    async def _send_chunk(self, send: Send, chunk: bytes) -> bool:
        self._sends_started += 1
        self._send_started_s = trio.current_time()
        self._send_began.set()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._send_started_s = None
        self._send_began = trio.Event()
        return not self.stalled

    async def _stream(self, send: Send) -> bool:
        """Send history, then live lines; True when the body ended normally."""
        for chunk in encode_chunks(self._history):
            if not await self._send_chunk(send, chunk):
                return False
        self._history = []
        if self._tail is None:
            return True
        while True:
            try:
                messages = await self._tail.receive()
            except trio.EndOfChannel:
                return not self.stalled
            for chunk in encode_chunks(messages):
                if not await self._send_chunk(send, chunk):
                    return False

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    async def _watch_stalled_reader(self) -> None:
        while True:
            await self._send_began.wait()
            started_s, number = self._send_started_s, self._sends_started
            if started_s is None:
                continue  # that write is over; the writer has armed a fresh event
            await trio.sleep_until(started_s + IDLE_READER_TIMEOUT_S)
            if self._send_started_s is not None and self._sends_started == number:
                # The same write has been blocked for the whole timeout: the client is not
                # reading. Stop feeding it; the response ends when the write returns.
                self.stalled = True
                if self._tail is not None:
                    self._tail.close()
                return
