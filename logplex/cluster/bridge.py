"""The narrow, typed bridge between the router (trio) and NATS JetStream (nats-py, asyncio).

DESIGN section 10: nats-py is asyncio-only, so it runs in one asyncio event loop in one
thread per router; trio code calls the coroutines below, each of which crosses into that
loop once (one asyncio task, started thread-safely; ``_bridge_thread``) and waits for the
result without blocking trio. One crossing per batch, never per line: ``publish_many`` takes
a whole list.

- Cancellation: a trio cancel of a pending call cancels its asyncio task and raises
  ``trio.Cancelled`` at once; the asyncio side never outlives its caller.
- Back-pressure: a subscription or watch delivers into a bounded trio memory channel; when
  the trio side does not keep up the asyncio side waits (watches, stream readers) or, for
  core subscriptions, drops and counts (``dropped``), as core NATS itself does.
- Reconnects: nats-py reconnects by itself (forever); while disconnected every call raises
  ``NotConnected`` promptly instead of hanging; ``connected`` and ``status()`` tell the state
  for ``/healthcheck`` and metrics.
- Errors: everything nats-py raises is mapped at this one boundary to the ``BridgeError``
  family below; no nats-py type leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import nats.errors
import nats.js.errors
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from logplex.cluster._bridge_acks import AckInbox
from logplex.cluster._bridge_pull import OrderedPull, PulledMessage
from logplex.cluster._bridge_thread import AsyncioThread, DropCounter, LoopStopped, TrioFeed

DEFAULT_REQUEST_TIMEOUT_S: Final = 5.0


class BridgeError(Exception):
    """A NATS operation failed; ``str(error)`` says which and why (never a secret)."""


class NotConnected(BridgeError):
    """The connection to NATS is down (reconnecting); try again later."""


class BridgeTimeout(BridgeError):
    """NATS did not answer in time."""


class KeyExists(BridgeError):
    """``kv_create`` of a key that exists."""


class WrongRevision(BridgeError):
    """``kv_update`` (or a conditional delete) whose expected revision is not the key's."""


class NoResponders(BridgeError):
    """``request`` to a subject nobody serves."""


class StreamNotFound(BridgeError):
    """The named stream (or KV bucket) does not exist."""


def bridge_failure(error: BaseException) -> bool:
    """Whether ``error`` is a ``BridgeError``, or a group (from a nursery) of nothing else."""
    if isinstance(error, BridgeError):
        return True
    if isinstance(error, BaseExceptionGroup):
        _, rest = error.split(BridgeError)
        return rest is None
    return False


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    servers: tuple[str, ...]  # nats://host:port or tls://host:port
    creds_file: Path | None = None  # --nats-creds
    ca_file: Path | None = None  # --nats-ca-file: TLS to NATS verified against this CA
    name: str = "logplex"  # connection name, shown by nats-server
    connect_timeout_s: float = 5.0
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool  # JetStream dropped it as a duplicate Nats-Msg-Id (seq is the original's)


@dataclass(frozen=True, slots=True)
class StreamMessage:
    subject: str
    seq: int  # stream sequence
    data: bytes
    time_ns: int = 0  # the stream's timestamp of the message (0 if unknown)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    replicas: int
    leader: str | None  # the server name of the stream's leader


@dataclass(frozen=True, slots=True)
class KvEntry:
    bucket: str
    key: str
    value: bytes | None  # None: deleted or purged
    revision: int
    delta: int = 0  # in a watch: how many more updates are pending (0 = caught up)


@dataclass(frozen=True, slots=True)
class CoreMessage:
    subject: str
    data: bytes


class StreamReader:
    """An ordered read of one stream from a start sequence (an ephemeral ordered consumer).

    ``fetch`` returns the next messages in stream order, each exactly once, or [] when none
    arrived within ``timeout_s``. When the consumer is lost (a reconnect, a leader change,
    nats-server restarting it) the reader re-creates it from the sequence after the last one
    returned, so the caller sees neither a gap nor a repeat. A gap the stream itself made
    (messages removed by its limits before they were read) shows as a jump in ``seq``.
    """

    async def fetch(self, max_messages: int, timeout_s: float) -> list[StreamMessage]:
        raise NotImplementedError

    @property
    def next_seq(self) -> int:
        """The stream sequence the next fetch starts from."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


log = logging.getLogger(__name__)

T = TypeVar("T")

ERROR_HEADER: Final = "Logplex-Error"  # a serve() handler failed; the value says how
RECONNECT_WAIT_S: Final = 0.5
PING_INTERVAL_S: Final = 5
MAX_OUTSTANDING_PINGS: Final = 3
CLOSE_DEADLINE_S: Final = 2.0
SERVE_BUFFER: Final = 256  # requests waiting for a handler; more are dropped (they time out)
SERVE_CONCURRENCY: Final = 64  # handlers running at once per serve()
WATCH_BATCH: Final = 256
WATCH_POLL_S: Final = 5.0
_RETRY_S: Final = 0.2
_MAX_ERROR_TEXT: Final = 300
_DELETE_OPERATIONS: Final = frozenset({"DEL", "PURGE"})
_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_STREAM_NOT_FOUND: Final = 10059
_STREAM_NAME_IN_USE: Final = 10058
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_USERINFO = re.compile(r"(\w+://)[^/@\s]*@")
_NOT_CONNECTED_ERRORS: Final = (
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
)


def _redact(text: str) -> str:
    """``text`` without any user:password@ of a URL in it."""
    return _USERINFO.sub(r"\1", text)


def _clip(text: str) -> str:
    text = " ".join(text.split())  # one line: also safe as a header value
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


def map_error(error: Exception, what: str) -> BridgeError | None:
    """The ``BridgeError`` for a nats-py (or socket) error raised while doing ``what``;
    None for anything else (a programming error, raised as it is)."""
    if isinstance(error, BridgeError):
        return error
    if isinstance(error, nats.js.errors.KeyWrongLastSequenceError):
        return WrongRevision(f"{what}: the key is not at the expected revision")
    if isinstance(error, nats.js.errors.BucketNotFoundError):
        return StreamNotFound(f"{what}: the KV bucket does not exist (ensure_kv creates it)")
    if isinstance(error, nats.js.errors.NoStreamResponseError):
        return NoResponders(
            f"{what}: no JetStream stream answered (none takes the subject, or its leader "
            "is being elected); retry"
        )
    if isinstance(error, nats.js.errors.APIError):
        description = _clip(_redact(error.description or ""))
        if error.err_code in _WRONG_LAST_SEQUENCE:
            return WrongRevision(f"{what}: the key is not at the expected revision")
        if error.err_code == _STREAM_NOT_FOUND or isinstance(error, nats.js.errors.NotFoundError):
            return StreamNotFound(f"{what}: {description or 'not found'}")
        if isinstance(error, nats.js.errors.ServiceUnavailableError):
            return NoResponders(f"{what}: JetStream is not available right now (503); retry")
        if error.code == 408:
            return BridgeTimeout(f"{what}: JetStream timed out (408); retry")
        return BridgeError(
            f"{what}: JetStream refused: {description} (code {error.code}, error {error.err_code})"
        )
    if isinstance(error, nats.errors.NoRespondersError):
        return NoResponders(f"{what}: nobody serves this subject")
    if isinstance(error, _NOT_CONNECTED_ERRORS):
        return NotConnected(f"{what}: not connected to NATS ({_clip(_redact(str(error)))})")
    if isinstance(error, TimeoutError):  # nats.errors.TimeoutError and asyncio's
        return BridgeTimeout(f"{what}: NATS did not answer in time")
    if isinstance(error, nats.errors.Error):
        return BridgeError(f"{what}: {_clip(_redact(str(error)))}")
    if isinstance(error, OSError):
        return NotConnected(f"{what}: {_clip(_redact(str(error)))}")
    return None


def _time_ns(moment: datetime.datetime | None) -> int:
    if moment is None:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return ((moment - _EPOCH) // datetime.timedelta(microseconds=1)) * 1000


def _stream_info(info: api.StreamInfo) -> StreamInfo:
    state = info.state
    return StreamInfo(
        name=info.config.name or "",
        messages=state.messages,
        bytes=state.bytes,
        first_seq=state.first_seq,
        last_seq=state.last_seq,
        replicas=info.config.num_replicas or 1,
        leader=info.cluster.leader if info.cluster is not None else None,
    )


def _stream_differs(have: api.StreamConfig, want: api.StreamConfig) -> bool:
    def seconds(value: float | None) -> float:
        return float(value or 0.0)

    return (
        sorted(have.subjects or []) != sorted(want.subjects or [])
        or (have.num_replicas or 1) != (want.num_replicas or 1)
        or (have.max_bytes or -1) != (want.max_bytes or -1)
        or (have.max_msg_size or -1) != (want.max_msg_size or -1)
        or abs(seconds(have.max_age) - seconds(want.max_age)) > 1e-6
        or abs(seconds(have.duplicate_window) - seconds(want.duplicate_window)) > 1e-6
        or have.discard != want.discard
    )


def _kv_prefix(bucket: str) -> str:
    return f"$KV.{bucket}."


def _kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


class _PullReader(StreamReader):
    """``StreamReader`` over an ``OrderedPull`` living in the asyncio thread.

    The trio side owns ``next_seq``: each fetch tells the asyncio side where it expects to
    continue, so a result lost to a trio cancel is read again rather than skipped.
    """

    def __init__(self, bridge: NatsBridge, pull: OrderedPull) -> None:
        self._bridge = bridge
        self._pull = pull
        self._next_seq = pull.next_seq
        self._busy = False
        self._closed = False

    @property
    def next_seq(self) -> int:
        return self._next_seq

    async def fetch(self, max_messages: int, timeout_s: float) -> list[StreamMessage]:
        if self._closed:
            raise BridgeError(f"the reader of stream {self._pull.stream} is closed")
        if self._busy:
            raise BridgeError("StreamReader.fetch is already running in another task")
        self._busy = True
        try:
            pulled, _ = await self._bridge._fetch(
                f"fetch from stream {self._pull.stream}",
                self._pull,
                self._next_seq,
                max_messages,
                timeout_s,
            )
        finally:
            self._busy = False
        out = [StreamMessage(m.subject, m.seq, m.data, m.time_ns) for m in pulled]
        if out:
            self._next_seq = out[-1].seq + 1
        return out

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._bridge._close_pull(self._pull)


class NatsBridge:
    """One router's connection to NATS; see the module docstring."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self._thread: AsyncioThread | None = None
        self._state_changed = trio.Event()
        self._dropped = DropCounter()
        # Owned by the asyncio thread (plain reads from trio are fine under the GIL):
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: AckInbox | None = None
        self._kv: dict[str, KeyValue] = {}
        self._up = False
        self._server: str | None = None
        self._reconnects = 0
        self._disconnects = 0
        self._epoch = 0
        self._last_error: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._aborted: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the asyncio thread, connect, ``task_status.started()``, serve until
        cancelled; then drain and close the connection and join the thread.

        The first connect fails with ``BridgeError`` (naming the servers, without
        credentials) when no server answers within ``connect_timeout_s``.
        """
        if self._thread is not None:
            raise RuntimeError("this NatsBridge is already running")
        self._check_settings()
        thread = AsyncioThread(f"nats-{self.settings.name}")
        thread.start()
        self._thread = thread
        try:
            await thread.call(self._a_connect)
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(CLOSE_DEADLINE_S + 1.0), contextlib.suppress(LoopStopped):
                    await thread.call(self._a_close)
                self._thread = None
                await thread.stop()
                self._up = False
                self._trio_state_changed()  # wake waiters: they see the bridge stopped

    @property
    def connected(self) -> bool:
        return self._thread is not None and self._up

    def status(self) -> dict[str, object]:
        """``{"connected": bool, "server": "host:port" | None, "reconnects": int,
        "last_error": str | None}``; also ``disconnects`` and ``dropped`` (core messages
        a lagging subscriber lost)."""
        connected = self.connected
        return {
            "connected": connected,
            "server": self._server if connected else None,
            "reconnects": self._reconnects,
            "disconnects": self._disconnects,
            "last_error": self._last_error,
            "dropped": self._dropped.value,
        }

    def _servers_text(self) -> str:
        return ", ".join(_redact(server) for server in self.settings.servers)

    def _check_settings(self) -> None:
        settings = self.settings
        if not settings.servers:
            raise BridgeError("no NATS server given; pass --nats nats://host:port[,...]")
        if settings.creds_file is not None:
            if importlib.util.find_spec("nkeys") is None:
                raise BridgeError(
                    "--nats-creds needs the nkeys package, which is not installed; "
                    "install it (pip install nkeys) or connect without credentials"
                )
            if not os.access(settings.creds_file, os.R_OK):
                raise BridgeError(f"cannot read the NATS credentials file {settings.creds_file}")
        if settings.ca_file is not None and not os.access(settings.ca_file, os.R_OK):
            raise BridgeError(f"cannot read the NATS CA file {settings.ca_file}")

    async def _a_connect(self) -> None:
        settings = self.settings
        nc = Client()
        options: dict[str, Any] = {}
        if settings.creds_file is not None:
            options["user_credentials"] = str(settings.creds_file)
        if settings.ca_file is not None:
            try:
                options["tls"] = ssl.create_default_context(cafile=str(settings.ca_file))
            except (OSError, ssl.SSLError) as error:
                raise BridgeError(
                    f"the NATS CA file {settings.ca_file} is not a usable CA bundle: {error}"
                ) from None
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=list(settings.servers),
                    name=settings.name,
                    connect_timeout=settings.connect_timeout_s,  # type: ignore[arg-type]
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]
                    ping_interval=PING_INTERVAL_S,
                    max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                    drain_timeout=int(CLOSE_DEADLINE_S),
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                    **options,
                ),
                settings.connect_timeout_s,
            )
        except (Exception, asyncio.CancelledError) as error:
            with contextlib.suppress(Exception):
                await nc.close()
            if isinstance(error, asyncio.CancelledError):
                raise
            cause = self._last_error or _clip(_redact(str(error))) or type(error).__name__
            raise BridgeError(
                f"cannot connect to NATS at {self._servers_text()} within "
                f"{settings.connect_timeout_s} s ({cause}); check --nats and that the servers "
                "are up"
            ) from None
        self._nc = nc
        self._js = nc.jetstream(timeout=settings.request_timeout_s)
        self._acks = AckInbox(nc)
        self._server = self._current_server()
        self._up = True
        self._last_error = None
        self._notify_trio()
        log.info("connected to NATS at %s", self._server)

    async def _a_close(self) -> None:
        nc, self._nc = self._nc, None
        self._js = None
        self._acks = None
        self._kv.clear()
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.drain(), CLOSE_DEADLINE_S)
        except Exception:
            with contextlib.suppress(Exception):
                await nc.close()

    def _current_server(self) -> str | None:
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        if url is None or url.hostname is None:
            return None
        return f"{url.hostname}:{url.port}" if url.port else url.hostname

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, nats.errors.SlowConsumerError):
            self._dropped.add(1)
            return
        self._last_error = _clip(_redact(f"{type(error).__name__}: {error}"))

    async def _on_disconnected(self) -> None:
        if self._up:
            self._up = False
            self._disconnects += 1
            self._epoch += 1
            if self._nc is not None:
                log.warning("lost the NATS connection to %s; reconnecting", self._server)
        for task in list(self._inflight):
            self._aborted.add(task)
            task.cancel()
        self._notify_trio()

    async def _on_reconnected(self) -> None:
        self._server = self._current_server()
        self._up = True
        self._reconnects += 1
        self._epoch += 1
        log.warning("NATS connection back, to %s", self._server)
        self._notify_trio()

    async def _on_closed(self) -> None:
        self._up = False
        self._notify_trio()

    def _notify_trio(self) -> None:
        thread = self._thread
        if thread is not None:
            thread.wake_trio(self._trio_state_changed)

    def _trio_state_changed(self) -> None:
        event, self._state_changed = self._state_changed, trio.Event()
        event.set()

    async def _wait_connected(self) -> None:
        """Return once connected (raises ``NotConnected`` when the bridge stops)."""
        while not self.connected:
            if self._thread is None:
                raise NotConnected("the NATS bridge is not running")
            await self._state_changed.wait()

    # -- crossing ---------------------------------------------------------------------------

    async def _call(
        self,
        what: str,
        fn: Callable[[], Coroutine[Any, Any, T]],
        *,
        needs_connection: bool = True,
    ) -> T:
        """Run ``fn()`` in the asyncio thread with its errors mapped; one crossing."""
        thread = self._thread
        if thread is None:
            raise NotConnected(f"{what}: the NATS bridge is not running")
        if needs_connection and not self._up:
            raise NotConnected(f"{what}: not connected to NATS; retry when it is back")
        try:
            return await thread.call(lambda: self._guard(what, fn, needs_connection))
        except LoopStopped:
            raise NotConnected(f"{what}: the NATS bridge has stopped") from None

    async def _guard(
        self, what: str, fn: Callable[[], Coroutine[Any, Any, T]], needs_connection: bool
    ) -> T:
        task = asyncio.current_task()
        assert task is not None
        task.set_name(f"logplex-bridge: {what}")
        if needs_connection:
            if not (self._up and self._nc is not None and self._nc.is_connected):
                raise NotConnected(f"{what}: not connected to NATS; retry when it is back")
            self._inflight.add(task)  # ended with NotConnected when the connection drops
        try:
            return await fn()
        except asyncio.CancelledError:
            if task in self._aborted:
                task.uncancel()
                raise NotConnected(
                    f"{what}: the connection to NATS was lost; retry when it is back"
                ) from None
            raise
        except Exception as error:
            mapped = map_error(error, what)
            if mapped is None or mapped is error:
                raise
            raise mapped from error
        finally:
            self._inflight.discard(task)
            self._aborted.discard(task)

    def _conn(self) -> tuple[Client, JetStreamContext]:
        nc, js = self._nc, self._js
        if nc is None or js is None:
            raise NotConnected("not connected to NATS")
        return nc, js

    async def _debug_asyncio_tasks(self) -> list[str]:
        """Test hook: the names of the asyncio tasks alive in the bridge's loop (this
        call's own task excluded)."""

        async def names() -> list[str]:
            current = asyncio.current_task()
            return sorted(t.get_name() for t in asyncio.all_tasks() if t is not current)

        thread = self._thread
        if thread is None:
            return []
        return await thread.call(names)

    # -- JetStream streams ----------------------------------------------------------------

    async def ensure_stream(
        self,
        name: str,
        subjects: list[str],
        *,
        replicas: int = 1,
        max_bytes: int = -1,
        max_age_s: float = 0.0,
        duplicate_window_s: float = 120.0,
        max_msg_bytes: int = -1,
    ) -> StreamInfo:
        """Create the stream, or update it to these settings when it exists."""
        config = api.StreamConfig(
            name=name,
            subjects=list(subjects),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            num_replicas=replicas,
            max_bytes=max_bytes,
            max_msgs=-1,
            max_consumers=-1,
            max_age=max_age_s,
            duplicate_window=duplicate_window_s,
            max_msg_size=max_msg_bytes,
        )
        return await self._call(f"ensure stream {name}", lambda: self._a_ensure_stream(config))

    async def _a_ensure_stream(self, config: api.StreamConfig) -> StreamInfo:
        _, js = self._conn()
        assert config.name is not None
        try:
            info = await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                return _stream_info(await js.add_stream(config))
            except nats.js.errors.BadRequestError as error:
                if error.err_code != _STREAM_NAME_IN_USE:
                    raise
                info = await js.stream_info(config.name)  # another router made it just now
        if _stream_differs(info.config, config):
            info = await js.update_stream(config)
        return _stream_info(info)

    async def stream_info(self, name: str) -> StreamInfo:
        async def info() -> StreamInfo:
            _, js = self._conn()
            return _stream_info(await js.stream_info(name))

        return await self._call(f"stream info {name}", info)

    async def publish_many(
        self, items: Sequence[tuple[str, bytes, str | None]], *, timeout_s: float | None = None
    ) -> list[PubAck | BridgeError]:
        """Publish ``(subject, data, msg_id)`` to JetStream, all in one crossing, pipelined,
        and wait for every ack. One result per item, in order: its ``PubAck``, or the error
        for that item alone (so the caller can retry just those, with the same msg ids)."""
        if not items:
            return []
        timeout = timeout_s if timeout_s is not None else self.settings.request_timeout_s
        return await self._call("publish", lambda: self._a_publish_many(items, timeout))

    async def _a_publish_many(
        self, items: Sequence[tuple[str, bytes, str | None]], timeout_s: float
    ) -> list[PubAck | BridgeError]:
        acks = self._acks
        if acks is None:
            raise NotConnected("publish: not connected to NATS")
        task = asyncio.current_task()
        results: list[PubAck | BridgeError | None] = [None] * len(items)
        futures: list[asyncio.Future[api.PubAck] | None] = [None] * len(items)
        lost: BridgeError = BridgeTimeout(f"publish: no JetStream ack within {timeout_s} s")
        try:
            for index, (subject, data, msg_id) in enumerate(items):
                try:
                    futures[index] = await acks.publish(subject, data, msg_id)
                except nats.errors.Error as error:
                    results[index] = map_error(error, f"publish to {subject}")
            waiting = [future for future in futures if future is not None]
            if waiting:
                await asyncio.wait(waiting, timeout=timeout_s)
        except asyncio.CancelledError:
            if task is None or task not in self._aborted:
                raise
            task.uncancel()
            lost = NotConnected("publish: the connection to NATS was lost before the ack")
        finally:
            for future in futures:
                if future is not None and not future.done():
                    future.cancel()
        out: list[PubAck | BridgeError] = []
        for index, future in enumerate(futures):
            result = results[index]
            if result is None:
                if future is None or future.cancelled():
                    result = lost
                elif (failure := future.exception()) is not None:
                    mapped = None
                    if isinstance(failure, Exception):
                        mapped = map_error(failure, f"publish to {items[index][0]}")
                    result = mapped or BridgeError(f"publish: {failure!r}")
                else:
                    ack = future.result()
                    result = PubAck(ack.stream, ack.seq, bool(ack.duplicate))
            out.append(result)
        return out

    async def get_message(self, stream: str, seq: int) -> StreamMessage | None:
        """One message by stream sequence (None: not there, or removed)."""

        async def get() -> StreamMessage | None:
            _, js = self._conn()
            try:
                raw = await js.get_msg(stream, seq=seq)
            except nats.js.errors.NotFoundError as error:
                if error.err_code == _STREAM_NOT_FOUND:
                    raise
                return None
            return StreamMessage(
                raw.subject or "", raw.seq or seq, raw.data or b"", _time_ns(raw.time)
            )

        return await self._call(f"get message {seq} of stream {stream}", get)

    async def open_reader(self, stream: str, start_seq: int) -> StreamReader:
        """An ordered reader of ``stream`` from ``start_seq`` (see ``StreamReader``)."""
        pull = await self._call(
            f"open a reader of stream {stream}", lambda: self._a_open_pull(stream, start_seq)
        )
        return _PullReader(self, pull)

    async def _a_open_pull(
        self,
        stream: str,
        start_seq: int,
        *,
        filter_subject: str | None = None,
        last_per_subject: bool = False,
        headers_only: bool = False,
    ) -> OrderedPull:
        nc, js = self._conn()
        pull = OrderedPull(
            nc,
            js,
            stream=stream,
            start_seq=start_seq,
            filter_subject=filter_subject,
            last_per_subject=last_per_subject,
            headers_only=headers_only,
            epoch=lambda: self._epoch,
            api_timeout_s=self.settings.request_timeout_s,
        )
        await pull.open()
        return pull

    async def _fetch(
        self,
        what: str,
        pull: OrderedPull,
        expected_seq: int | None,
        max_messages: int,
        timeout_s: float,
    ) -> tuple[list[PulledMessage], bool]:
        async def fetch() -> tuple[list[PulledMessage], bool]:
            if expected_seq is not None:
                pull.resync(expected_seq)
            messages = await pull.fetch(max_messages, timeout_s)
            return messages, pull.caught_up

        return await self._call(what, fetch)

    async def _close_pull(self, pull: OrderedPull) -> None:
        with trio.CancelScope(shield=True), contextlib.suppress(BridgeError):
            await self._call("close a reader", pull.close, needs_connection=False)

    # -- KV -------------------------------------------------------------------------------

    async def _a_kv(self, bucket: str) -> KeyValue:
        kv = self._kv.get(bucket)
        if kv is None:
            _, js = self._conn()
            kv = await js.key_value(bucket)
            self._kv[bucket] = kv
        return kv

    async def ensure_kv(
        self,
        bucket: str,
        *,
        history: int = 1,
        ttl_s: float = 0.0,
        replicas: int = 1,
        max_value_bytes: int = 1024 * 1024,
    ) -> None:
        """Create the bucket when missing (``ttl_s``: every value expires that long after its
        last write; 0 never)."""

        async def ensure() -> None:
            _, js = self._conn()
            try:
                self._kv[bucket] = await js.key_value(bucket)
                return
            except nats.js.errors.BucketNotFoundError:
                pass
            config = api.KeyValueConfig(
                bucket=bucket,
                history=history,
                ttl=ttl_s or None,
                replicas=replicas,
                max_value_size=max_value_bytes,
                storage=api.StorageType.FILE,
            )
            self._kv[bucket] = await js.create_key_value(config)

        await self._call(f"ensure KV bucket {bucket}", ensure)

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        """The key's current entry, or None when it is missing or deleted."""

        async def get() -> KvEntry | None:
            kv = await self._a_kv(bucket)
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            except nats.js.errors.NotFoundError as error:
                if error.err_code == _STREAM_NOT_FOUND:
                    self._kv.pop(bucket, None)
                    raise
                return None
            return KvEntry(bucket, key, entry.value or b"", entry.revision or 0)

        return await self._call(f"KV get {bucket}/{key}", get)

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Write unconditionally; returns the new revision."""

        async def put() -> int:
            return await (await self._a_kv(bucket)).put(key, value)

        return await self._call(f"KV put {bucket}/{key}", put)

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        """Write only if the key is missing (or deleted); ``KeyExists`` otherwise."""

        async def create() -> int:
            kv = await self._a_kv(bucket)
            try:
                return await kv.create(key, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise KeyExists(f"KV create {bucket}/{key}: the key exists") from None
            except nats.js.errors.APIError as error:
                if error.err_code in _WRONG_LAST_SEQUENCE:
                    raise KeyExists(f"KV create {bucket}/{key}: the key exists") from None
                raise

        return await self._call(f"KV create {bucket}/{key}", create)

    async def kv_update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        """Write only if the key's revision is ``last_revision``; ``WrongRevision`` otherwise."""

        async def update() -> int:
            return await (await self._a_kv(bucket)).update(key, value, last=last_revision)

        return await self._call(f"KV update {bucket}/{key}", update)

    async def kv_delete(self, bucket: str, key: str, *, last_revision: int | None = None) -> None:
        """Delete (``last_revision``: only if still at it, ``WrongRevision`` otherwise)."""

        async def delete() -> None:
            await (await self._a_kv(bucket)).delete(key, last=last_revision)

        await self._call(f"KV delete {bucket}/{key}", delete)

    async def kv_keys(self, bucket: str) -> list[str]:
        """Every live key ([] for an empty bucket)."""

        async def keys() -> list[str]:
            await self._a_kv(bucket)  # StreamNotFound for a missing bucket
            prefix = _kv_prefix(bucket)
            pull = await self._a_open_pull(
                _kv_stream(bucket),
                1,
                filter_subject=prefix + ">",
                last_per_subject=True,
                headers_only=True,
            )
            live: dict[str, None] = {}
            try:
                while not pull.caught_up:
                    messages = await pull.fetch(WATCH_BATCH, self.settings.request_timeout_s)
                    if not messages and not pull.caught_up:
                        raise BridgeTimeout(f"KV keys of {bucket}: JetStream stopped delivering")
                    for message in messages:
                        key = message.subject[len(prefix) :]
                        if message.operation in _DELETE_OPERATIONS:
                            live.pop(key, None)
                        else:
                            live[key] = None
            finally:
                await pull.close()
            return list(live)

        return await self._call(f"KV keys of {bucket}", keys)

    def kv_watch(
        self, bucket: str, keys: str = ">", *, max_buffer: int = 1024
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[KvEntry]]:
        """An async context manager (``async with bridge.kv_watch(...) as entries``) whose
        value is a trio receive channel of ``KvEntry``: first the current value of every
        matching key, then one ``KvEntry(key="", value=None, revision=0)`` marker meaning
        "initial values done", then every update as it happens (deletes with value None).
        A watch survives reconnects: it resumes after the last revision it delivered."""
        return self._kv_watch(bucket, keys, max_buffer)

    @asynccontextmanager
    async def _kv_watch(
        self, bucket: str, keys: str, max_buffer: int
    ) -> AsyncIterator[trio.MemoryReceiveChannel[KvEntry]]:
        send, receive = trio.open_memory_channel[KvEntry](max(1, max_buffer))

        async def open_watch() -> OrderedPull:
            await self._a_kv(bucket)
            return await self._a_open_pull(
                _kv_stream(bucket),
                1,
                filter_subject=_kv_prefix(bucket) + keys,
                last_per_subject=True,
            )

        pull = await self._call(f"KV watch {bucket}/{keys}", open_watch)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_watch, bucket, keys, pull, send, max_buffer)
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await self._close_pull(pull)

    async def _pump_watch(
        self,
        bucket: str,
        keys: str,
        pull: OrderedPull,
        send: trio.MemorySendChannel[KvEntry],
        max_buffer: int,
    ) -> None:
        prefix = len(_kv_prefix(bucket))
        what = f"KV watch {bucket}/{keys}"
        batch = max(1, min(WATCH_BATCH, max_buffer))
        marker_sent = False
        async with send:
            while True:
                if pull.caught_up and not marker_sent:  # read across threads: a plain bool
                    marker_sent = True
                    await send.send(KvEntry(bucket, "", None, 0))
                try:
                    messages, caught_up = await self._fetch(what, pull, None, batch, WATCH_POLL_S)
                except (NotConnected, BridgeTimeout, NoResponders):
                    # Transient: wait for the connection (or a moment) and go on from the
                    # last revision delivered. When the bridge stops, the watch ends.
                    try:
                        if self.connected:
                            await trio.sleep(_RETRY_S)
                        else:
                            await self._wait_connected()
                    except NotConnected:
                        return
                    continue
                for m in messages:
                    value = None if m.operation in _DELETE_OPERATIONS else m.data
                    await send.send(KvEntry(bucket, m.subject[prefix:], value, m.seq, m.pending))
                if caught_up and not marker_sent:
                    marker_sent = True
                    await send.send(KvEntry(bucket, "", None, 0))

    # -- core NATS ------------------------------------------------------------------------

    async def publish_core(self, items: list[tuple[str, bytes]]) -> None:
        """Fire-and-forget core publishes, one crossing (dropped silently by NATS when
        nobody listens; ``NotConnected`` while down)."""
        if not items:
            return

        async def publish() -> None:
            nc, _ = self._conn()
            for subject, data in items:
                await nc.publish(subject, data)

        await self._call("core publish", publish)

    async def _a_subscribe(
        self, subject: str, deliver: Callable[[Msg], None], pending: int
    ) -> Subscription:
        nc, _ = self._conn()

        async def on_message(msg: Msg) -> None:
            deliver(msg)

        return await nc.subscribe(subject, cb=on_message, pending_msgs_limit=max(64, 2 * pending))

    async def _unsubscribe(self, sub: Subscription) -> None:
        async def unsubscribe() -> None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

        with trio.CancelScope(shield=True), contextlib.suppress(BridgeError):
            await self._call("unsubscribe", unsubscribe, needs_connection=False)

    def subscribe(
        self, subject: str, *, max_buffer: int = 4096
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[CoreMessage]]:
        """An async context manager whose value is a trio receive channel of
        ``CoreMessage``; when the trio side falls ``max_buffer`` behind, messages are dropped
        and counted in ``status()["dropped"]``. Unsubscribes on exit."""
        return self._subscribe(subject, max_buffer)

    @asynccontextmanager
    async def _subscribe(
        self, subject: str, max_buffer: int
    ) -> AsyncIterator[trio.MemoryReceiveChannel[CoreMessage]]:
        thread = self._thread
        if thread is None:
            raise NotConnected(f"subscribe to {subject}: the NATS bridge is not running")
        capacity = max(1, max_buffer)
        send, receive = trio.open_memory_channel[CoreMessage](capacity)
        feed = TrioFeed(thread, send, capacity, self._dropped)

        def deliver(msg: Msg) -> None:
            feed.put(CoreMessage(msg.subject, msg.data))

        sub = await self._call(
            f"subscribe to {subject}", lambda: self._a_subscribe(subject, deliver, capacity)
        )
        try:
            yield receive
        finally:
            feed.close()
            await self._unsubscribe(sub)
            send.close()

    async def request(self, subject: str, data: bytes, *, timeout_s: float | None = None) -> bytes:
        """Request/reply; ``NoResponders`` or ``BridgeTimeout``."""
        timeout = timeout_s if timeout_s is not None else self.settings.request_timeout_s

        async def request() -> bytes:
            nc, _ = self._conn()
            try:
                reply = await nc.request(subject, data, timeout=timeout)
            except nats.errors.TimeoutError:
                raise BridgeTimeout(f"request to {subject}: no reply within {timeout} s") from None
            failure = reply.headers.get(ERROR_HEADER) if reply.headers else None
            if failure is not None:
                raise BridgeError(f"request to {subject}: the responder failed: {failure}")
            return reply.data

        return await self._call(f"request to {subject}", request)

    async def serve(
        self,
        subject: str,
        handler: Callable[[bytes], Awaitable[bytes]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer requests on ``subject`` with ``await handler(data)`` (run in trio) until
        cancelled; a handler exception answers an error reply and is logged."""
        thread = self._thread
        if thread is None:
            raise NotConnected(f"serve {subject}: the NATS bridge is not running")
        send, receive = trio.open_memory_channel[tuple[bytes, str]](SERVE_BUFFER)
        feed = TrioFeed(thread, send, SERVE_BUFFER, self._dropped)

        def deliver(msg: Msg) -> None:
            if msg.reply:
                feed.put((msg.data, msg.reply))

        sub = await self._call(
            f"serve {subject}", lambda: self._a_subscribe(subject, deliver, SERVE_BUFFER)
        )
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                slots = trio.Semaphore(SERVE_CONCURRENCY)
                async for data, reply in receive:
                    await slots.acquire()
                    nursery.start_soon(self._answer, subject, handler, data, reply, slots)
        finally:
            feed.close()
            await self._unsubscribe(sub)

    async def _answer(
        self,
        subject: str,
        handler: Callable[[bytes], Awaitable[bytes]],
        data: bytes,
        reply: str,
        slots: trio.Semaphore,
    ) -> None:
        try:
            headers: dict[str, str] | None = None
            try:
                body = await handler(data)
            except Exception as error:
                log.exception("the handler of %s failed", subject)
                body = b""
                headers = {ERROR_HEADER: _clip(f"{type(error).__name__}: {error}") or "error"}

            async def respond() -> None:
                nc, _ = self._conn()
                await nc.publish(reply, body, headers=headers)

            with contextlib.suppress(BridgeError):
                await self._call(f"reply on {subject}", respond)
        finally:
            slots.release()
