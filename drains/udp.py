"""Syslog drains over UDP (DESIGN sections 5.1 and 8): fire-and-forget datagrams.

One datagram per message, the syslog-drain layout without ``LEN SP`` and without LF, cut to
2048 bytes (``logplex.codecs.drain_frames.syslog_datagram``). A datagram the kernel refuses
(an ICMP port-unreachable from an earlier datagram shows up as ``ECONNREFUSED`` on the next
send) is tried once more, then counted as dropped into the next L10. Nothing else is known
about UDP delivery: a datagram the kernel took counts as delivered. The socket is connected
only where ``DrainSettings.destination_policy`` allows (``drains._connect``), and under
``--deny-private-drains`` a refused datagram reads ``network error: could not connect``
(an ICMP port-unreachable must not tell which ports are open).
"""

from __future__ import annotations

import random
from typing import Final

import trio

from drains._base import DrainCore
from drains._buffer import Taken
from drains._connect import connect_socket, resolve_checked
from drains._errors import destination_refusal
from drains._interface import DrainContext
from drains._policy import NETWORK_ERROR
from drains._retry import reconnect_delay_s
from drains._url import DrainURL
from logplex.codecs.drain_frames import syslog_datagram
from logplex.codecs.records import Message

BATCH_MESSAGES: Final = 1024
BATCH_BYTES: Final = 1024 * 1024


class UdpDrain(DrainCore):
    """A ``syslog+udp://`` drain."""

    def __init__(self, ctx: DrainContext, url: DrainURL | None = None) -> None:
        token = ctx.token.encode()

        def encode(messages: list[Message]) -> list[bytes]:
            return [syslog_datagram(message, token) for message in messages]

        super().__init__(ctx, url, encode=encode, memo_key=f"drains.udp:{ctx.token}")
        self._random = random.Random()
        self._send_failures = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:
            await self.queue.wait_takeable()
            try:
                sock = await self._open_socket()
            except OSError as exc:
                self.record_failure(self._failure_text("cannot reach", exc))
                await trio.sleep(reconnect_delay_s(failures, self._random.random()))
                failures += 1
                continue
            failures = 0
            self.record_connected()
            with sock:
                await self._send_forever(sock)

    async def _open_socket(self) -> trio.socket.SocketType:
        policy = self.ctx.settings.destination_policy
        if policy.checks_destinations:
            addresses = await resolve_checked(
                self.url.host, self.url.port, policy, socket_type=trio.socket.SOCK_DGRAM
            )
            return await connect_socket(addresses, trio.socket.SOCK_DGRAM)
        infos = await trio.socket.getaddrinfo(
            self.url.host, self.url.port, type=trio.socket.SOCK_DGRAM
        )
        if not infos:
            raise OSError(f"no address for {self.url.host}")
        family, kind, proto, _, address = infos[0]
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def _failure_text(self, what: str, exc: OSError) -> str:
        """``last_error``: a policy refusal as it is; other errors generic under the policy."""
        where = self.url.redacted()
        refusal = destination_refusal(exc)
        if refusal is not None:
            return f"{refusal} ({where})"
        if self.ctx.settings.destination_policy.deny_private:
            return f"{NETWORK_ERROR} ({where})"
        if what == "send failed":
            return f"send to {where} failed: {exc}"
        return f"{what} {where}: {exc}"

    async def _send_forever(self, sock: trio.socket.SocketType) -> None:
        while True:
            await self.queue.wait_takeable()
            taken = self.queue.take(BATCH_MESSAGES, BATCH_BYTES)
            if taken is None:
                continue
            self.begin(taken)
            failures = self._send_failures
            lost = await self._send_datagrams(sock, taken)
            if lost.message_count or lost.notice_count:
                self.record_delivered(
                    taken.message_count - lost.message_count,
                    taken.byte_count - lost.byte_count,
                    all_attempts_ok=False,
                )
                self.finish(lost, delivered=False)
            else:
                self.finish(taken, delivered=True, all_attempts_ok=failures == self._send_failures)

    async def _send_datagrams(self, sock: trio.socket.SocketType, taken: Taken) -> Taken:
        """Send each frame; returns what the kernel refused twice (to count into L10)."""
        lost = Taken(frames=[], message_count=0, byte_count=0)
        for index, datagram in enumerate(taken.frames):
            for attempt in (0, 1):
                try:
                    await sock.send(datagram)
                    break
                except OSError as exc:
                    self._send_failures += 1
                    self.record_failure(self._failure_text("send failed", exc))
                    if attempt:
                        lost.byte_count += len(datagram)
                        if index == 0 and taken.notice_count:
                            lost.notice_count = taken.notice_count
                            lost.notice_since_us = taken.notice_since_us
                        else:
                            lost.message_count += 1
        return lost
