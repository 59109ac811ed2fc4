"""The narrow, typed bridge between the router (trio) and NATS JetStream (nats-py, asyncio).

DESIGN section 10: nats-py is asyncio-only, so it runs in one asyncio event loop in one
thread per router; trio code calls the coroutines below, each of which crosses into that
loop once (``asyncio.run_coroutine_threadsafe``) and waits for the result without blocking
trio. One crossing per batch, never per line: ``publish_many`` takes a whole list.

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

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

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


class NatsBridge:
    """One router's connection to NATS; see the module docstring."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the asyncio thread, connect, ``task_status.started()``, serve until
        cancelled; then drain and close the connection and join the thread.

        The first connect fails with ``BridgeError`` (naming the servers, without
        credentials) when no server answers within ``connect_timeout_s``.
        """
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def status(self) -> dict[str, object]:
        """``{"connected": bool, "server": "host:port" | None, "reconnects": int,
        "last_error": str | None}``."""
        raise NotImplementedError

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
        raise NotImplementedError

    async def stream_info(self, name: str) -> StreamInfo:
        raise NotImplementedError

    async def publish_many(
        self, items: list[tuple[str, bytes, str | None]], *, timeout_s: float | None = None
    ) -> list[PubAck | BridgeError]:
        """Publish ``(subject, data, msg_id)`` to JetStream, all in one crossing, pipelined,
        and wait for every ack. One result per item, in order: its ``PubAck``, or the error
        for that item alone (so the caller can retry just those, with the same msg ids)."""
        raise NotImplementedError

    async def get_message(self, stream: str, seq: int) -> StreamMessage | None:
        """One message by stream sequence (None: not there, or removed)."""
        raise NotImplementedError

    async def open_reader(self, stream: str, start_seq: int) -> StreamReader:
        """An ordered reader of ``stream`` from ``start_seq`` (see ``StreamReader``)."""
        raise NotImplementedError

    # -- KV -------------------------------------------------------------------------------

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
        raise NotImplementedError

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        """The key's current entry, or None when it is missing or deleted."""
        raise NotImplementedError

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Write unconditionally; returns the new revision."""
        raise NotImplementedError

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        """Write only if the key is missing (or deleted); ``KeyExists`` otherwise."""
        raise NotImplementedError

    async def kv_update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        """Write only if the key's revision is ``last_revision``; ``WrongRevision`` otherwise."""
        raise NotImplementedError

    async def kv_delete(self, bucket: str, key: str, *, last_revision: int | None = None) -> None:
        """Delete (``last_revision``: only if still at it, ``WrongRevision`` otherwise)."""
        raise NotImplementedError

    async def kv_keys(self, bucket: str) -> list[str]:
        """Every live key ([] for an empty bucket)."""
        raise NotImplementedError

    def kv_watch(
        self, bucket: str, keys: str = ">", *, max_buffer: int = 1024
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[KvEntry]]:
        """An async context manager (``async with bridge.kv_watch(...) as entries``) whose
        value is a trio receive channel of ``KvEntry``: first the current value of every
        matching key, then one ``KvEntry(key="", value=None, revision=0)`` marker meaning
        "initial values done", then every update as it happens (deletes with value None).
        A watch survives reconnects: it resumes after the last revision it delivered."""
        raise NotImplementedError

    # -- core NATS ------------------------------------------------------------------------

    async def publish_core(self, items: list[tuple[str, bytes]]) -> None:
        """Fire-and-forget core publishes, one crossing (dropped silently by NATS when
        nobody listens; ``NotConnected`` while down)."""
        raise NotImplementedError

    def subscribe(
        self, subject: str, *, max_buffer: int = 4096
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[CoreMessage]]:
        """An async context manager whose value is a trio receive channel of
        ``CoreMessage``; when the trio side falls ``max_buffer`` behind, messages are dropped
        and counted in ``status()["dropped"]``. Unsubscribes on exit."""
        raise NotImplementedError

    async def request(self, subject: str, data: bytes, *, timeout_s: float | None = None) -> bytes:
        """Request/reply; ``NoResponders`` or ``BridgeTimeout``."""
        raise NotImplementedError

    async def serve(
        self,
        subject: str,
        handler: Callable[[bytes], Awaitable[bytes]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer requests on ``subject`` with ``await handler(data)`` (run in trio) until
        cancelled; a handler exception answers an error reply and is logged."""
        raise NotImplementedError
