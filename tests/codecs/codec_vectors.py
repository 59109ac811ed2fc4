"""Shared helpers of the codec tests: the vector files and feeding decoders three ways.

Every decoder case is fed three ways (the h11 discipline): the whole input at once; one
byte at a time; and followed by trailing garbage. ``events_three_ways`` does it for the
incremental decoders, which are driven by a ``take`` function that returns what the
decoder has ready.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

VECTORS = Path(__file__).resolve().parent / "vectors"
GARBAGE = b"\x00garbage that is no frame\xff"

Decoder = TypeVar("Decoder")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def as_bytes(value: Any) -> bytes:
    """Vector encoding: a string (UTF-8) or a list of strings, {"hex"}, {"repeat", "count"}."""
    if isinstance(value, str):
        return value.encode()
    out = bytearray()
    for segment in value:
        if isinstance(segment, str):
            out += segment.encode()
        elif "hex" in segment:
            out += bytes.fromhex(segment["hex"].replace(" ", ""))
        else:
            out += segment["repeat"].encode() * segment["count"]
    return bytes(out)


def optional_bytes(value: Any) -> bytes | None:
    return None if value is None else as_bytes(value)


def iso_to_us(text: str | None) -> int | None:
    """Microseconds since the epoch of an ISO 8601 instant, by the standard library."""
    if text is None:
        return None
    moment = datetime.datetime.fromisoformat(text)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def events_three_ways(
    make: Callable[[], Decoder],
    feed: Callable[[Decoder, bytes], None],
    take: Callable[[Decoder], list[Any]],
    data: bytes,
) -> tuple[list[Any], list[Any], Decoder]:
    """(events fed whole, events fed byte by byte, a decoder fed the data plus garbage).

    The garbage decoder has not been asked for events yet: the caller checks what it does
    with the garbage (raise, resync, wait). Exceptions of the first two ways propagate.
    """
    whole_decoder = make()
    feed(whole_decoder, data)
    whole = take(whole_decoder)
    bytewise_decoder = make()
    bytewise: list[Any] = []
    for index in range(len(data)):
        feed(bytewise_decoder, data[index : index + 1])
        bytewise.extend(take(bytewise_decoder))
    garbage_decoder = make()
    feed(garbage_decoder, data + GARBAGE)
    return whole, bytewise, garbage_decoder
