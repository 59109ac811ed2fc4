"""Third-party parsers judge our encoders: syslog-rfc5424-parser reads our syslog-drain
frames (DESIGN 5.1), heroku-syslog-parser reads our HTTPS-drain frames (DESIGN 5.2)."""

from __future__ import annotations

import random
import warnings
from typing import Any

import pytest

from logplex.codecs import logplex1, octet, rfc5424
from logplex.codecs.records import Message
from logplex.codecs.timestamps import format_ts

COUNT = 3000
WORDS = ["hello", "at=info", 'path="/a b"', "[x]", "-", "é", "日本", "😀", "\\", "=", '"q"', "%"]


def generated_messages(seed: int) -> list[Message]:
    rng = random.Random(seed)
    printable = [chr(c) for c in range(33, 127)]
    messages: list[Message] = []
    for index in range(COUNT):
        source = "".join(rng.choices(printable, k=rng.randint(1, 48))).replace("-", "a")
        ps = rng.choice(["web.1", "worker.12", "router", "run.4242", "scheduler.1"])
        ps = ps if index % 7 else "".join(rng.choices(printable, k=rng.randint(1, 128)))
        text = " ".join(rng.choices(WORDS, k=rng.randint(1, 30)))
        ts_us = rng.randint(0, 4_102_444_800_000_000)  # up to 2100
        pri = rng.randint(0, 191)
        messages.append((ts_us, pri, source.encode(), ps.encode(), text.encode()))
    return messages


def import_quietly(module: str, name: str) -> Any:
    """Import a judge; lark 0.6 and pyparsing-era code warn about deprecated stdlib APIs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(__import__(module, fromlist=[name]), name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_syslog_rfc5424_parser_accepts_our_syslog_drain_frames() -> None:
    SyslogMessage = import_quietly("syslog_rfc5424_parser", "SyslogMessage")
    token = b"d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"
    messages = generated_messages(1)
    stream = b"".join(rfc5424.syslog_frame(message, token) for message in messages)
    decoder = octet.OctetFrameDecoder(20_000, "strict")
    decoder.feed(stream)
    frames = decoder.frames()
    assert len(frames) == COUNT
    for message, frame in zip(messages, frames, strict=True):
        assert frame.endswith(b"\n")
        parsed = SyslogMessage.parse(frame[:-1].decode())
        ts_us, pri, source, ps, text = message
        assert (parsed.facility.value << 3) + parsed.severity.value == pri
        assert parsed.timestamp.encode() == format_ts(ts_us)
        assert parsed.version == 1
        assert parsed.hostname == token.decode()
        assert parsed.appname == source.decode()
        assert str(parsed.procid) == ps.decode()  # it turns a numeric PROCID into an int
        assert parsed.msgid is None
        assert parsed.sd == {}
        assert parsed.msg == text.decode()


# heroku-syslog-parser 0.0.4 calls pyparsing APIs that pyparsing 3 deprecates; the warnings
# are about that package, not about our frames.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_heroku_syslog_parser_accepts_our_https_drain_frames() -> None:
    HerokuLogParser = import_quietly("heroku_syslog_parser", "HerokuLogParser")
    messages = generated_messages(2)
    body, count = logplex1.encode_https_body(messages)
    assert count == COUNT
    frames = octet.octet_frames(body, 20_000)
    assert len(frames) == COUNT
    for message, frame in zip(messages, frames, strict=True):
        parsed = HerokuLogParser.parse(frame.decode())
        ts_us, pri, source, ps, text = message
        assert parsed["pri"] == pri
        assert parsed["timestamp"].encode() == format_ts(ts_us)
        assert parsed["version"] == 1
        assert parsed["hostname"] == "host"
        assert parsed["appname"] == source.decode()
        assert parsed["procname"] == ps.decode()
        assert parsed["msg"] == text.decode()
