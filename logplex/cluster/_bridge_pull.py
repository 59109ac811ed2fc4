"""An ordered, self-healing read of one JetStream stream, on the asyncio side of the bridge.

Both ``StreamReader`` and ``kv_watch`` read through this: an ephemeral pull consumer
(``ack_policy=none``, memory, R1, removed by the server after ``inactive_threshold`` without
pulls) whose messages arrive on one wildcard inbox subscription, one pull request at a time,
each with its own reply token so a status (408 expired, 409, 503 no responders) is matched to
the request it ends.

Nothing is acknowledged, so the client must notice any loss itself: every message carries its
consumer sequence, and a jump in it (a message lost in a reconnect, a consumer the server
dropped and a new one answering) makes the reader delete the consumer and create a new one
from the stream sequence after the last message it returned. A reconnect does the same, and
messages below that sequence are skipped, so the caller sees the stream in order with neither
a gap nor a repeat. A pull returns as soon as any message has arrived, with whatever else has
arrived by then, so latency is one message's, not a batch's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

API_PREFIX: Final = api.DEFAULT_PREFIX
INACTIVE_THRESHOLD_S: Final = 30.0
MAX_PULL_WAIT_S: Final = 5.0  # one pull request's expiry; bounds how late a lost consumer shows
_PULL_GRACE_S: Final = 0.5  # a request counts as alive this long after its expiry
_MIN_PULL_S: Final = 0.01
_MIN_FETCH_S: Final = 0.05  # a fetch waits at least this long (one pull's round trip)
_RETRY_S: Final = 0.2
KV_OPERATION: Final = "KV-Operation"

# $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time ns>.<pending>
# $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>[.x]
_V1_TOKENS: Final = 9
_V1_FIELDS: Final = (3, 5, 6, 7, 8)
_V2_FIELDS: Final = (5, 7, 8, 9, 10)


@dataclass(frozen=True, slots=True)
class PulledMessage:
    subject: str
    seq: int
    data: bytes
    time_ns: int
    pending: int  # messages after this one the consumer still has for us
    operation: str | None  # the KV-Operation header (DEL, PURGE) or None


def _ack_fields(reply: str) -> tuple[str, int, int, int, int] | None:
    """(consumer, stream seq, consumer seq, time ns, pending) from a JetStream reply subject."""
    tokens = reply.split(".")
    if len(tokens) < _V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    fields = _V1_FIELDS if len(tokens) == _V1_TOKENS else _V2_FIELDS
    try:
        consumer, sseq, cseq, time_ns, pending = (tokens[i] for i in fields)
        return consumer, int(sseq), int(cseq), int(time_ns), int(pending)
    except (IndexError, ValueError):
        return None


def _header(headers: dict[str, str] | None, name: str) -> str:
    """A header's value ("" if absent); nats-py keys some by a ``str`` enum member, which
    equals the plain name but does not hash like it."""
    if not headers:
        return ""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k == name), None)
    return value or ""


class OrderedPull:
    """Read ``stream`` (optionally only ``filter_subject``) in order from ``start_seq``.

    ``last_per_subject``: the first consumer delivers only the newest message of every
    subject (a KV watch's initial values); any re-created one continues by sequence.
    ``headers_only``: messages come without their data (listing keys). ``epoch()`` changes
    on every reconnect. Not safe for concurrent ``fetch`` calls.
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        stream: str,
        start_seq: int,
        filter_subject: str | None = None,
        last_per_subject: bool = False,
        headers_only: bool = False,
        epoch: Callable[[], int],
        api_timeout_s: float,
        inactive_threshold_s: float = INACTIVE_THRESHOLD_S,
    ) -> None:
        self._nc = nc
        self._js = js
        self.stream = stream
        self.filter_subject = filter_subject
        self.next_seq = max(1, start_seq)
        self._last_per_subject = last_per_subject
        self._headers_only = headers_only
        self._epoch = epoch
        self._api_timeout_s = api_timeout_s
        self._inactive_threshold_s = inactive_threshold_s
        self.caught_up = False  # the consumer had nothing more for us at the last look

        self._sub: Subscription | None = None
        self._inbox = ""
        self._arrived = asyncio.Event()
        self._queue: deque[Msg] = deque()
        self._consumer: str | None = None
        self._created_epoch = -1
        self._replacement = False  # the consumer replaces one that delivered already
        self._cseq = 0
        self._stale = True  # (re)create the consumer before the next pull
        self._request_id = 0
        self._request_owed = 0
        self._request_until = 0.0
        self._last_pull_at = 0.0
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Subscribe the inbox and create the first consumer (errors raise as nats-py's)."""
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_message)
        try:
            await self._create()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        await self._delete_consumer()

    def resync(self, next_seq: int) -> None:
        """Continue from ``next_seq`` (the caller lost a result it was handed)."""
        if next_seq != self.next_seq:
            self.next_seq = max(1, next_seq)
            self._stale = True

    async def _on_message(self, msg: Msg) -> None:
        self._queue.append(msg)
        self._arrived.set()

    async def _delete_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None or not self._nc.is_connected:
            return  # the server forgets it after inactive_threshold anyway
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await asyncio.wait_for(
                self._js.delete_consumer(self.stream, consumer), min(1.0, self._api_timeout_s)
            )

    async def _create(self) -> None:
        await self._delete_consumer()
        self._queue.clear()
        first = self._created_epoch < 0
        name = "r" + secrets.token_hex(8)
        if first and self._last_per_subject:
            policy, start = api.DeliverPolicy.LAST_PER_SUBJECT, None
        else:
            policy, start = api.DeliverPolicy.BY_START_SEQUENCE, self.next_seq
        config = api.ConsumerConfig(
            name=name,
            deliver_policy=policy,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=self.filter_subject,
            inactive_threshold=self._inactive_threshold_s,
            mem_storage=True,
            num_replicas=1,
            headers_only=self._headers_only or None,
        )
        epoch = self._epoch()
        info = await self._js.add_consumer(self.stream, config=config, timeout=self._api_timeout_s)
        self._replacement = not first
        self._consumer = name
        self._created_epoch = epoch
        self._cseq = 0
        self._request_owed = 0
        self._last_pull_at = asyncio.get_running_loop().time()
        self._stale = False
        self.caught_up = (info.num_pending or 0) == 0

    # -- reading --------------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout_s: float) -> list[PulledMessage]:
        """The next messages in order (at most ``max_messages``), or [] when none arrived
        within ``timeout_s``. A consumer lost on the way is re-created inside that time;
        errors other than the transient ones raise as nats-py's."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        loop = asyncio.get_running_loop()
        end = loop.time() + max(_MIN_FETCH_S, timeout_s)
        recreated = False
        while True:
            if self._stale or self._epoch() != self._created_epoch:
                if recreated:  # lost again at once: do not hammer the server
                    await asyncio.sleep(max(0.0, min(_RETRY_S, end - loop.time())))
                if not await self._recreate(end):
                    return []
                recreated = True
            out = self._take(max_messages)
            if out:
                return out
            if self._stale:
                continue
            now = loop.time()
            if self._request_owed > 0 and now >= self._request_until:
                # A live consumer ends every pull with its batch or a status (408 at expiry);
                # silence means it is gone (a pull to a deleted consumer gets no answer).
                self._stale = True
                continue
            remaining = end - now
            if remaining <= 0:
                return []
            if self._request_owed <= 0 and remaining >= _MIN_PULL_S:
                if now - self._last_pull_at > self._inactive_threshold_s / 2:
                    self._stale = True  # idle so long the server may have removed it
                    continue
                await self._pull(max_messages, min(remaining, MAX_PULL_WAIT_S))
            wait_s = min(remaining, max(_MIN_PULL_S, self._request_until - loop.time()))
            self._arrived.clear()
            if not self._queue:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._arrived.wait()

    async def _recreate(self, end: float) -> bool:
        """Create the consumer again, retrying transient failures until ``end``; False when
        the time ran out first."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._create()
                return True
            except (
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError,
                nats.js.errors.NoStreamResponseError,
            ):
                if not self._nc.is_connected:
                    raise
                remaining = end - loop.time()
                if remaining <= 0:
                    return False
                await asyncio.sleep(min(_RETRY_S, remaining))

    async def _pull(self, batch: int, expires_s: float) -> None:
        assert self._consumer is not None
        self._request_id += 1
        self._request_owed = batch
        now = asyncio.get_running_loop().time()
        self._last_pull_at = now
        self._request_until = now + expires_s + _PULL_GRACE_S
        request = {"batch": batch, "expires": int(expires_s * 1e9)}
        await self._nc.publish(
            f"{API_PREFIX}.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}",
            json.dumps(request).encode(),
            reply=f"{self._inbox}.{self._request_id}",
        )

    def _take(self, max_messages: int) -> list[PulledMessage]:
        out: list[PulledMessage] = []
        queue = self._queue
        current_reply = f"{self._inbox}.{self._request_id}"
        while queue and len(out) < max_messages:
            msg = queue.popleft()
            headers = msg.headers
            status = _header(headers, "Status") if headers else None
            if status:
                if msg.subject != current_reply:
                    continue  # the end of an earlier request
                if status == "100":
                    continue  # heartbeat
                self._request_owed = 0
                description = _header(headers, "Description")
                if status == "503" or (
                    status == "409" and ("Deleted" in description or "Leadership" in description)
                ):
                    self._stale = True  # the consumer is gone: create it again
                    break
                continue  # 404 no messages, 408 expired, 409 limits: this request is done
            fields = _ack_fields(msg.reply) if msg.reply else None
            if fields is None:
                continue
            consumer, sseq, cseq, time_ns, pending = fields
            if consumer != self._consumer:
                continue  # delivered by a consumer already replaced
            if cseq != self._cseq + 1:
                self._stale = True  # a message went missing in between: start again after out
                break
            self._cseq = cseq
            self._request_owed -= 1
            self.caught_up = pending == 0
            if self._replacement and sseq < self.next_seq:
                continue  # already returned before the re-creation
            # The first consumer cannot repeat itself (its consumer sequence is checked), and
            # its last-per-subject start need not be in stream order: take all it sends.
            self.next_seq = max(self.next_seq, sseq + 1)
            operation = _header(headers, KV_OPERATION) or None if headers else None
            out.append(PulledMessage(msg.subject, sseq, msg.data, time_ns, pending, operation))
        return out
