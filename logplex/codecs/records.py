"""The message record every layer passes around, and the PRI values of DESIGN section 5.

A message is a plain tuple on the hot path (creating one costs less than any class instance):

    (ts_us, pri, source, ps, msg)

- ``ts_us``  int, microseconds since the Unix epoch (UTC)
- ``pri``    int, RFC 5424 PRI (facility * 8 + severity), 0..191
- ``source`` bytes, the token name the message was written under (``app``, ``heroku``)
- ``ps``     bytes, the process name (``web.1``); RFC 5424 PROCID rules
- ``msg``    bytes, the line without its trailing newline; never contains LF

``Batch`` is what ``router.publish`` hands to history, tails and drains: the messages of one
publish call plus a memo that drains use to format shared parts once per batch, not once per
drain.
"""

from __future__ import annotations

from typing import Final

Message = tuple[int, int, bytes, bytes, bytes]

TS: Final = 0
PRI: Final = 1
SOURCE: Final = 2
PS: Final = 3
MSG: Final = 4

# Shim record kinds (DESIGN section 4) and the PRI each is shown with (DESIGN section 5).
KIND_STDOUT: Final = 1
KIND_STDERR: Final = 2
KIND_NOTICE: Final = 3

PRI_STDOUT: Final = 190  # local7.info
PRI_STDERR: Final = 187  # local7.err
PRI_SHIM_NOTICE: Final = 189  # local7.notice
PRI_ROUTER_NOTICE: Final = 172  # local5.warning

PRI_BY_KIND: Final[dict[int, int]] = {
    KIND_STDOUT: PRI_STDOUT,
    KIND_STDERR: PRI_STDERR,
    KIND_NOTICE: PRI_SHIM_NOTICE,
}

ROUTER_NOTICE_SOURCE: Final = b"heroku"
ROUTER_NOTICE_PS: Final = b"logplex"


class Batch:
    """The messages of one ``publish`` call, shared read-only by every consumer.

    ``encoded`` is a memo for consumers that format the same messages for several outputs
    (for example the HTTPS frames of a batch, identical for every HTTPS drain of a channel).
    Keys are chosen by the consumer that fills them; values are never mutated once stored.
    """

    __slots__ = ("encoded", "messages")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.encoded: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.messages)

    def __repr__(self) -> str:
        return f"Batch({len(self.messages)} messages)"
