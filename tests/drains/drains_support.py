"""Independent readers of drain output for tests: octet-counted frames and L10 counts.

Written from DESIGN 5.1/5.2/5.5, not from the drain code, so a test compares our output
with the contract.
"""

from __future__ import annotations

import re

from logplex.codecs.records import Batch, Message

T0_US = 1_795_000_000_000_000  # 2026-11-18T11:06:40Z, a fixed plausible time

L10 = re.compile(rb"^Error L10 \(output buffer overflow\): (\d+) messages dropped since (\S+)\.$")


def octet_frames(data: bytes) -> list[bytes]:
    """Split ``LEN SP PAYLOAD`` frames byte-exactly; fails on any leftover or short frame."""
    frames: list[bytes] = []
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        payload = data[space + 1 : space + 1 + length]
        assert len(payload) == length, "short frame"
        frames.append(payload)
        pos = space + 1 + length
    return frames


def https_fields(payload: bytes) -> tuple[int, bytes, bytes, bytes, bytes, bytes]:
    """``<PRI>1 TS host SOURCE PS - MSG LF`` -> (pri, ts, host, source, ps, msg)."""
    assert payload.endswith(b"\n")
    pri_version, ts, host, source, ps, dash, msg = payload[:-1].split(b" ", 6)
    assert dash == b"-"
    assert pri_version.startswith(b"<")
    assert pri_version.endswith(b">1")
    return int(pri_version[1:-2]), ts, host, source, ps, msg


def syslog_fields(payload: bytes) -> tuple[int, bytes, bytes, bytes, bytes, bytes]:
    """``<PRI>1 TS d.TOKEN SOURCE PS - - MSG [LF]`` -> (pri, ts, token, source, ps, msg)."""
    if payload.endswith(b"\n"):
        payload = payload[:-1]
    pri_version, ts, token, source, ps, msgid, sd, msg = payload.split(b" ", 7)
    assert (msgid, sd) == (b"-", b"-")
    assert pri_version.startswith(b"<")
    assert pri_version.endswith(b">1")
    return int(pri_version[1:-2]), ts, token, source, ps, msg


def tally(messages: list[tuple[int, bytes, bytes, bytes]]) -> tuple[list[bytes], int, int]:
    """(pri, source, ps, msg) list -> (app messages, sum of L10 counts, number of L10s).

    L10 must be a router notice: PRI 172, source heroku, ps logplex.
    """
    app: list[bytes] = []
    lost = notices = 0
    for pri, source, ps, msg in messages:
        match = L10.match(msg)
        if match:
            assert (pri, source, ps) == (172, b"heroku", b"logplex")
            lost += int(match.group(1))
            notices += 1
        else:
            app.append(msg)
    return app, lost, notices


def app_messages(count: int, start: int = 0, prefix: bytes = b"line") -> list[Message]:
    return [
        (T0_US + i, 190, b"app", b"web.1", b"%s %d" % (prefix, i))
        for i in range(start, start + count)
    ]


def batches(count: int, per_batch: int, prefix: bytes = b"line") -> list[Batch]:
    return [
        Batch(app_messages(min(per_batch, count - start), start, prefix))
        for start in range(0, count, per_batch)
    ]
