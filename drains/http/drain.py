"""The delivery loop of an HTTPS or HTTP drain (DESIGN sections 5.2 and 8).

Up to two posts in flight, each on its own keep-alive HTTP/1.1 connection
(``drains.http.connection``); connect timeout 3 s, whole request 10 s. The loop sends on the
first connection as soon as the drain is idle and lets the buffer accumulate while a request
is in flight; the second connection takes a post only while a full one (1000 messages or
100 KiB) is waiting (``lane_to_use``), so a receiver's round trip overlaps the next post's
work under backlog while a lightly loaded drain keeps one connection and strict order; and
none starts while a post in flight is being retried, so at most one post overtakes a failing
one. Not HTTP pipelining on one connection: RFC 9112 section 9.3.2 advises against
pipelining after a non-idempotent method, and a failure would put every post behind it back
in the buffer. Each post has its own Frame-Id, retries, backoff and accounting. A batch is
encoded once into the exact request bytes (``drains.http.request.PostEncoder``), and every
retry resends those bytes.

Request, byte for byte: ``POST`` to the URL's path and query with ``Content-Type:
application/logplex-1``, ``Logplex-Msg-Count`` (frames in the body, the L10 notice
included), ``Logplex-Frame-Id`` (32 uppercase hex, fixed for every retry of the batch; with
the spool derived from the drain and the batch's spool position, so a batch replayed after a
restart carries it again),
``Logplex-Drain-Token``, ``User-Agent`` and, when the URL has userinfo, Basic auth built from
the percent-decoded user and password (UTF-8).

Retry rules are ``drains._retry``. A post the receiver refuses for good (a 4xx other than
408/429) is dropped into the next L10, and the drain then backs off before its next post as
for any failing drain (capped exponential backoff, reset by a delivery); an L10 that is itself
refused waits for the next batch instead of being sent alone again (``drains._buffer``).
Whatever happens to a post, its batch is settled (delivered, or counted as dropped) and its
connection freed in a ``finally``, so an unforeseen error can never leave a lane busy.

Each message's frame is formatted once per ``Batch`` and memoised in ``Batch.encoded``, so
N HTTPS drains of a channel format it once. TLS is verified against the system CAs plus
``DrainSettings.ca_file``; ``#insecure`` is the only way to turn verification off. Every
connection goes only where ``DrainSettings.destination_policy`` allows (``drains._connect``);
a refused connect is retried like a network error, since the host may resolve elsewhere later.
"""

from __future__ import annotations

import random
import time
import urllib.parse
import uuid
from typing import Final

import trio

from drains._base import DrainCore
from drains._buffer import Taken
from drains._errors import HttpTransportError, describe_exception
from drains._interface import DrainContext
from drains._retry import (
    Outcome,
    backoff_delay_s,
    classify_status,
    next_retry_delay_s,
    parse_retry_after,
)
from drains._tls import client_tls_context
from drains._url import DrainURL
from drains.http.connection import Http11Client, network_stream_opener
from drains.http.request import PostEncoder, PreparedPost, basic_auth_header
from logplex.codecs.drain_frames import https_frames
from logplex.codecs.records import Batch, Message

MAX_BATCH_MESSAGES: Final = 1000
MAX_BATCH_BYTES: Final = 100 * 1024
CONNECT_TIMEOUT_S: Final = 3.0
REQUEST_TIMEOUT_S: Final = 10.0
BACKOFF_BASE_S: Final = 0.5
BACKOFF_CAP_S: Final = 30.0
MAX_RESPONSE_BYTES: Final = 64 * 1024
MAX_POSTS_IN_FLIGHT: Final = 2
MEMO_KEY: Final = "drains.https"


def encode_https_frames(messages: list[Message]) -> list[bytes]:
    """The DESIGN 5.2 frame of each message (``LEN SP <PRI>1 TS host SOURCE PS - MSG LF``).

    One call per published batch (``https_frames`` reuses header and timestamp parts
    across the batch); the buffer encodes a lone message only for an L10 notice or to find
    the one record of a batch that cannot be formatted.
    """
    return https_frames(messages)


def lane_to_use(busy: list[bool], *, backlogged: bool, retrying: bool) -> int | None:
    """Which connection takes the next post, or None to wait (``busy``: one flag each).

    The first free connection when none is busy; another one only while a full post is
    waiting (``backlogged``), so a lightly loaded drain keeps one connection and strict order;
    and none while a post in flight is being retried (``retrying``), so at most one post
    overtakes a failing one: a receiver sees two adjacent posts swapped, never more.
    """
    if not any(busy):
        return 0
    if backlogged and not retrying and not all(busy):
        return busy.index(False)
    return None


def new_frame_id() -> str:
    """32 uppercase hex digits (DESIGN 5.2)."""
    return uuid.uuid4().hex.upper()


class HttpDrain(DrainCore):
    """An HTTPS or HTTP drain."""

    def __init__(self, ctx: DrainContext, url: DrainURL | None = None) -> None:
        super().__init__(ctx, url, encode=encode_https_frames, memo_key=MEMO_KEY)
        parts = urllib.parse.urlsplit(self.url.target)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        fixed_headers = [
            ("Content-Type", "application/logplex-1"),
            ("Logplex-Drain-Token", ctx.token),
            ("User-Agent", ctx.settings.user_agent),
        ]
        if self.url.username is not None:
            auth = basic_auth_header(self.url.username, self.url.password or "")
            fixed_headers.append(("Authorization", auth))
        self._encoder = PostEncoder(
            path,
            host_header=parts.netloc,
            fixed_headers=fixed_headers,
            per_post_names=("Logplex-Msg-Count", "Logplex-Frame-Id"),
        )
        self._random = random.Random()
        self._where = self.url.redacted()  # for error texts; parsed once, not per post
        tls = None
        if self.url.scheme == "https":
            tls = client_tls_context(self.url, ctx.settings.ca_file)
        # Two keep-alive connections, each carrying at most one post at a time; the second
        # connects only when it is first needed (a backlog), like the first.
        policy = ctx.settings.destination_policy
        open_stream = network_stream_opener(self.url.host, self.url.port, tls, policy)
        self._clients = [
            Http11Client(
                open_stream,
                connect_timeout_s=CONNECT_TIMEOUT_S,
                max_response_bytes=MAX_RESPONSE_BYTES,
                generic_connect_errors=policy.deny_private,
            )
            for _ in range(MAX_POSTS_IN_FLIGHT)
        ]
        self._busy = [False] * MAX_POSTS_IN_FLIGHT
        self._lane_wakeup = trio.Event()
        self._wake_on_backlog = False
        self._posts_retrying = 0  # posts in flight that failed at least once
        self._refusals_in_a_row = 0  # posts refused for good since the last delivery

    def push_batch(self, batch: Batch) -> None:
        super().push_batch(batch)
        if self._wake_on_backlog and self._backlogged():
            self._lane_wakeup.set()

    def _backlogged(self) -> bool:
        """A full post is waiting: reason enough to use a second connection."""
        return (
            self.queue.queued_messages >= MAX_BATCH_MESSAGES
            or self.queue.queued_bytes >= MAX_BATCH_BYTES
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        # A run after a failed one starts from free connections (every post settles its
        # lane in a finally; this only makes a restart independent of how the last run ended).
        self._busy = [False] * MAX_POSTS_IN_FLIGHT
        self._posts_retrying = 0
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    lane = await self._free_lane()
                    taken = self.queue.take(MAX_BATCH_MESSAGES, MAX_BATCH_BYTES)
                    if taken is None:
                        await trio.lowlevel.checkpoint()  # never spin on an empty queue
                        continue
                    self.begin(taken)
                    self._busy[lane] = True
                    nursery.start_soon(self._post_batch, lane, taken)
        finally:
            # Shielded: in a cancelled task the first close would raise Cancelled and leave
            # the other connection open (each close is forceful, so this cannot block).
            with trio.CancelScope(shield=True):
                for client in self._clients:
                    await client.aclose()

    async def _free_lane(self) -> int:
        """The connection to send the next post on, once there is something to send.

        With nothing in flight that is the first connection as soon as anything is takeable;
        with one post in flight, the other connection only while a full post is waiting
        (``lane_to_use``); with both in flight, the first to finish.
        """
        while True:
            retrying = self._posts_retrying > 0
            lane = lane_to_use(self._busy, backlogged=self._backlogged(), retrying=retrying)
            if lane == 0 and not any(self._busy):
                await self.queue.wait_takeable()  # nothing in flight can change meanwhile
                return lane
            if lane is not None:
                return lane
            self._lane_wakeup = trio.Event()
            self._wake_on_backlog = not retrying and not all(self._busy)
            try:
                await self._lane_wakeup.wait()
            finally:
                self._wake_on_backlog = False

    async def _post_batch(self, lane: int, taken: Taken) -> None:
        retried = [False]  # set by _deliver at the first retry of this post
        delivered = False
        try:
            try:
                delivered = await self._deliver(self._clients[lane], taken, retried)
            finally:
                self.finish(taken, delivered=delivered)
            if not delivered and self._refusals_in_a_row:
                # Refused for good: back off before the next post, as for any failing drain
                # (the lane stays taken and counted as retrying, so no other post starts).
                if not retried[0]:
                    retried[0] = True
                    self._posts_retrying += 1
                await trio.sleep(self._refusal_backoff_s())
        finally:
            if retried[0]:
                self._posts_retrying -= 1
            self._busy[lane] = False
            self._lane_wakeup.set()

    def _refusal_backoff_s(self) -> float:
        return backoff_delay_s(
            self._refusals_in_a_row - 1,
            base_s=BACKOFF_BASE_S,
            cap_s=BACKOFF_CAP_S,
            jitter=self._random.random(),
        )

    async def _deliver(self, client: Http11Client, taken: Taken, retried: list[bool]) -> bool:
        """Post one batch until it is delivered (True) or given up (False).

        ``retried[0]`` is set (and ``_posts_retrying`` counted) once the post needs a retry.
        """
        frame_id = taken.frame_id or new_frame_id()
        post = self._encoder.encode(
            (str(len(taken.frames)), frame_id), taken.frames, taken.byte_count
        )
        first_attempt_at = trio.current_time()
        attempt = 0
        while True:
            await self.queue.wait_may_send()
            outcome, retry_after_s, error = await self._post_once(client, post)
            if outcome is Outcome.DELIVERED:
                self._refusals_in_a_row = 0
                return True
            self.record_failure(error)
            if outcome is Outcome.DROP:
                self._refusals_in_a_row += 1
                return False
            delay_s = next_retry_delay_s(
                attempt=attempt,
                elapsed_s=trio.current_time() - first_attempt_at,
                retry_window_s=self.ctx.settings.retry_window_s,
                retry_after_s=retry_after_s,
                base_s=BACKOFF_BASE_S,
                cap_s=BACKOFF_CAP_S,
                jitter=self._random.random(),
            )
            if delay_s is None:
                return False
            self.record_retry(taken)
            if not retried[0]:
                retried[0] = True
                self._posts_retrying += 1
            await trio.sleep(delay_s)
            attempt += 1

    async def _post_once(
        self, client: Http11Client, post: PreparedPost
    ) -> tuple[Outcome, float | None, str]:
        """One request: its outcome, the server's Retry-After, and an error text."""
        started = trio.current_time()
        connects = client.connects
        where = self._where
        try:
            # A bare cancel scope, not fail_after: the same deadline without a generator-based
            # context manager per post.
            with trio.CancelScope(deadline=started + REQUEST_TIMEOUT_S) as deadline:
                status, response_headers = await client.post(post)
        except HttpTransportError as exc:
            return Outcome.RETRY, None, f"{describe_exception(exc)} ({where})"
        finally:
            self.metrics.request_seconds.observe(trio.current_time() - started)
            if client.connects != connects:
                self.metrics.connect_seconds.observe(client.last_connect_s)
                self.record_connected()
        if deadline.cancelled_caught:
            await client.aclose()
            return Outcome.RETRY, None, f"request timed out after {REQUEST_TIMEOUT_S:g} s ({where})"
        outcome = classify_status(status)
        retry_after_s = None
        if outcome is Outcome.RETRY:
            retry_after_s = parse_retry_after(
                response_headers.get("retry-after"), now_epoch_s=time.time()
            )
        return outcome, retry_after_s, f"HTTP {status} from {where}"
