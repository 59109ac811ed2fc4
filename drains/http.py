"""HTTPS and HTTP drains: ``application/logplex-1`` posts (DESIGN sections 5.2 and 8).

One ``httpx.AsyncClient`` per drain (one keep-alive connection; connect timeout 3 s, whole
request 10 s). The loop sends as soon as the drain is idle and lets the buffer accumulate
while a request is in flight; each post carries at most 1000 messages or 100 KiB.

Request, byte for byte: ``POST`` to the URL's path and query with ``Content-Type:
application/logplex-1``, ``Logplex-Msg-Count`` (frames in the body, the L10 notice
included), ``Logplex-Frame-Id`` (32 uppercase hex, fixed for every retry of the batch),
``Logplex-Drain-Token``, ``User-Agent`` and, when the URL has userinfo, Basic auth built from
the percent-decoded user and password (UTF-8). The body is the frames back to back; a retry
sends the same bytes.

Each message's frame is formatted once per ``Batch`` and memoised in ``Batch.encoded``, so
N HTTPS drains of a channel format it once. Retry rules are ``drains._retry``. TLS is
verified against the system CAs plus ``DrainSettings.ca_file``; ``#insecure`` is the only
way to turn verification off.
"""

from __future__ import annotations

import base64
import random
import ssl
import time
import uuid
from typing import Final

import httpx
import trio

from drains._base import DrainCore, describe_exception
from drains._buffer import Taken
from drains._interface import DrainContext
from drains._retry import Outcome, classify_status, next_retry_delay_s, parse_retry_after
from drains._url import DrainURL
from logplex.codecs.logplex1 import https_frame
from logplex.codecs.records import Message

MAX_BATCH_MESSAGES: Final = 1000
MAX_BATCH_BYTES: Final = 100 * 1024
CONNECT_TIMEOUT_S: Final = 3.0
REQUEST_TIMEOUT_S: Final = 10.0
BACKOFF_BASE_S: Final = 0.5
BACKOFF_CAP_S: Final = 30.0
MAX_RESPONSE_BYTES: Final = 64 * 1024
MEMO_KEY: Final = "drains.https"


def encode_https_frames(messages: list[Message]) -> list[bytes]:
    """The DESIGN 5.2 frame of each message (``LEN SP <PRI>1 TS host SOURCE PS - MSG LF``)."""
    return [https_frame(message) for message in messages]


def tls_context(url: DrainURL, ca_file: str | None) -> ssl.SSLContext:
    """System CAs plus ``ca_file``; verification off only for ``#insecure``."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if url.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def basic_auth_header(username: str, password: str) -> str:
    """``Basic base64(user ":" password)`` over UTF-8, as RFC 7617 with charset UTF-8."""
    credentials = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def new_frame_id() -> str:
    """32 uppercase hex digits (DESIGN 5.2)."""
    return uuid.uuid4().hex.upper()


class HttpDrain(DrainCore):
    """An HTTPS or HTTP drain."""

    def __init__(self, ctx: DrainContext, url: DrainURL | None = None) -> None:
        super().__init__(ctx, url, encode=encode_https_frames, memo_key=MEMO_KEY)
        self._headers: dict[str, str] = {
            "Content-Type": "application/logplex-1",
            "Logplex-Drain-Token": ctx.token,
            "User-Agent": ctx.settings.user_agent,
        }
        if self.url.username is not None:
            self._headers["Authorization"] = basic_auth_header(
                self.url.username, self.url.password or ""
            )
        self._random = random.Random()

    def _open_client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = False
        if self.url.scheme == "https":
            verify = tls_context(self.url, self.ctx.settings.ca_file)
        return httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,
            follow_redirects=False,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._open_client() as client:
            task_status.started()
            while True:
                await self.queue.wait_takeable()
                taken = self.queue.take(MAX_BATCH_MESSAGES, MAX_BATCH_BYTES)
                if taken is None:
                    continue
                self.begin(taken)
                delivered = await self._deliver(client, taken)
                self.finish(taken, delivered=delivered)

    async def _deliver(self, client: httpx.AsyncClient, taken: Taken) -> bool:
        """Post one batch until it is delivered (True) or given up (False)."""
        body = b"".join(taken.frames)
        headers = dict(self._headers)
        headers["Logplex-Msg-Count"] = str(len(taken.frames))
        headers["Logplex-Frame-Id"] = new_frame_id()
        first_attempt_at = trio.current_time()
        attempt = 0
        while True:
            outcome, retry_after_s, error = await self._post_once(client, body, headers)
            if outcome is Outcome.DELIVERED:
                return True
            self.record_failure(error)
            if outcome is Outcome.DROP:
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
            await trio.sleep(delay_s)
            attempt += 1

    async def _post_once(
        self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
    ) -> tuple[Outcome, float | None, str]:
        """One request: its outcome, the server's Retry-After, and an error text."""
        started = trio.current_time()
        where = self.url.redacted()
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                async with client.stream(
                    "POST", self.url.target, content=body, headers=headers
                ) as response:
                    received = 0
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
                        if received > MAX_RESPONSE_BYTES:
                            break
        except trio.TooSlowError:
            return Outcome.RETRY, None, f"request timed out after {REQUEST_TIMEOUT_S:g} s ({where})"
        except httpx.TransportError as exc:
            reason = describe_exception(exc).replace(self.url.target, where)
            return Outcome.RETRY, None, f"{reason} ({where})"
        finally:
            self.metrics.request_seconds.observe(trio.current_time() - started)
        outcome = classify_status(response.status_code)
        retry_after_s = None
        if outcome is Outcome.RETRY:
            retry_after_s = parse_retry_after(
                response.headers.get("retry-after"), now_epoch_s=time.time()
            )
        return outcome, retry_after_s, f"HTTP {response.status_code} from {where}"
