"""Pipelined JetStream publishes: many messages out, then wait for all their acks at once.

A JetStream publish is a core publish with a reply subject; the stream's ack (or its error)
comes back there. One wildcard subscription (``<inbox>.*``, kept by nats-py across
reconnects) receives every ack, matched to its publish by the last token. This is what
``JetStreamContext.publish_async`` does, done here because nats-py 2.16's version never
resolves a publish the stream refuses (its reply handler raises the API error instead of
setting it on the future), so such a publish would look like a lost ack.
"""

from __future__ import annotations

import asyncio
import json
from typing import Final

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

MSG_ID_HEADER: Final = "Nats-Msg-Id"


def _api_error(error: dict[str, object]) -> nats.js.errors.APIError:
    try:
        nats.js.errors.APIError.from_error(error)  # raises the matching subclass
    except nats.js.errors.APIError as raised:
        return raised
    except (KeyError, TypeError):
        pass
    return nats.js.errors.APIError(description=str(error))


class AckInbox:
    """Publish with acks on one connection; ``publish_all`` returns per-item futures."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._next = 0
        self._waiting: dict[str, asyncio.Future[api.PubAck]] = {}

    async def _ensure(self) -> None:
        if self._sub is None:
            self._prefix = self._nc.new_inbox() + "."
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return  # given up on already
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            response = json.loads(msg.data)
        except ValueError:
            future.set_exception(nats.js.errors.APIError(description="unreadable JetStream ack"))
            return
        if not isinstance(response, dict):
            future.set_exception(nats.js.errors.APIError(description="unreadable JetStream ack"))
        elif isinstance(error := response.get("error"), dict):
            future.set_exception(_api_error(error))
        else:
            try:
                future.set_result(api.PubAck.from_response(response))
            except TypeError:
                future.set_exception(nats.js.errors.APIError(description="unreadable ack"))

    def _forget(self, token: str) -> None:
        self._waiting.pop(token, None)

    async def publish(
        self, subject: str, data: bytes, msg_id: str | None
    ) -> asyncio.Future[api.PubAck]:
        """Send one message; the future resolves with its ack (cancel it to give up)."""
        await self._ensure()
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[api.PubAck] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._forget(token))
        self._waiting[token] = future
        headers = {MSG_ID_HEADER: msg_id} if msg_id else None
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    @property
    def pending(self) -> int:
        return len(self._waiting)
