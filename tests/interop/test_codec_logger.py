"""util-linux ``logger`` as an independent RFC 5424 / RFC 6587 producer: our strict parser
and strict octet decoder must accept exactly what it writes to a TCP socket."""

from __future__ import annotations

import shutil
import time

import pytest
import trio

from logplex.codecs.octet import OctetFrameDecoder
from logplex.codecs.rfc5424 import SDElement, parse_strict

pytestmark = pytest.mark.peer("logger")


def logger_path() -> str:
    path = shutil.which("logger")
    if path is None:
        pytest.fail("util-linux `logger` is missing: install it (apt-get install bsdutils)")
    return path


async def capture(arguments: list[str]) -> bytes:
    """Run ``logger ARGUMENTS`` against a loopback listener and return the bytes it sent."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    command = [logger_path(), "--rfc5424", "--tcp", "--octet-count", "-n", "127.0.0.1"]
    command += ["-P", str(port), *arguments]
    received = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.run_process, command)
            stream = await listeners[0].accept()
            async with stream:
                while chunk := await stream.receive_some():
                    received += chunk
    await listeners[0].aclose()
    return bytes(received)


def frames_of(data: bytes) -> list[bytes]:
    decoder = OctetFrameDecoder(8192, "strict")
    decoder.feed(data)
    frames = decoder.frames()
    assert decoder.buffered == 0
    return frames


async def test_plain_message() -> None:
    before_us = int(time.time() * 1_000_000)
    data = await capture(["-t", "t.0b8d6d2e", "-p", "local0.info", "hello from logger"])
    (frame,) = frames_of(data)
    message = parse_strict(frame)
    assert message.pri == 16 * 8 + 6
    assert message.version == 1
    assert message.app_name == b"t.0b8d6d2e"
    assert message.msg == b"hello from logger"
    assert message.timestamp_us is not None
    assert abs(message.timestamp_us - before_us) < 60_000_000
    assert message.structured_data[0].sd_id == b"timeQuality"
    assert message.hostname is not None


async def test_structured_data_msgid_and_utf8() -> None:
    data = await capture(
        [
            "-t",
            "app",
            "-p",
            "user.err",
            "--msgid",
            "ID47",
            "--sd-id",
            "zoo@123",
            "--sd-param",
            'tiger="hungry \\"and\\" ready"',
            "héllo wörld ☕",
        ]
    )
    (frame,) = frames_of(data)
    message = parse_strict(frame)
    assert message.pri == 1 * 8 + 3
    assert message.msgid == b"ID47"
    assert SDElement(b"zoo@123", ((b"tiger", b'hungry "and" ready'),)) in message.structured_data
    assert message.msg == "héllo wörld ☕".encode()


async def test_several_lines_are_several_frames() -> None:
    # Without a message argument logger sends each line of its stdin as one message.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    command = [logger_path(), "--rfc5424", "--tcp", "--octet-count", "-n", "127.0.0.1"]
    command += ["-P", str(port), "-t", "app"]
    received = bytearray()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: trio.run_process(command, stdin=b"one\ntwo\nthree\n"))
            stream = await listeners[0].accept()
            async with stream:
                while chunk := await stream.receive_some():
                    received += chunk
    await listeners[0].aclose()
    messages = [parse_strict(frame).msg for frame in frames_of(bytes(received))]
    assert messages == [b"one", b"two", b"three"]
