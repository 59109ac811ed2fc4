"""The shim stream sessions (DESIGN 4 and 8) without sockets: tables of bytes in, events and
bytes out, time as a number. Each conversation is fed whole, byte by byte, and with
trailing garbage."""

from __future__ import annotations

import msgpack
import pytest
import zstandard

from logplex.codecs import errors, shimproto, shimsession
from logplex.codecs.shimproto import Ack, BatchFrame, ErrorFrame, Hello, Pong
from logplex.codecs.shimsession import (
    Acked,
    BatchVerdict,
    Refused,
    Resume,
    RouterSession,
    RouterSessionLimits,
    SessionTimeout,
    ShimSession,
    State,
    judge_seq,
)

LIMITS = RouterSessionLimits(window=4, max_batch_bytes=65536, max_frame_bytes=80_000)
HELLO = Hello(1, "t.token", "web.1", "stream-1", "logshim/test")
HELLO_FRAME = shimproto.encode_hello("t.token", "web.1", "stream-1", "logshim/test")
PAYLOAD = zstandard.ZstdCompressor().compress(msgpack.packb([[1, 1, b"x"]]))


def batch(seq: int) -> bytes:
    return shimproto.encode_batch_payload(seq, PAYLOAD)


@pytest.mark.parametrize(
    ("seq", "acked", "verdict"),
    [
        (1, 0, BatchVerdict.ACCEPT),  # a new stream starts at 1
        (50, 0, BatchVerdict.ACCEPT),  # a stream the router does not know starts anywhere
        (2**64 - 1, 0, BatchVerdict.ACCEPT),
        (6, 5, BatchVerdict.ACCEPT),  # the next one
        (5, 5, BatchVerdict.DUPLICATE),  # resent, already held
        (1, 5, BatchVerdict.DUPLICATE),
        (7, 5, BatchVerdict.REFUSE),  # a gap
        (2**64 - 1, 5, BatchVerdict.REFUSE),
    ],
)
def test_the_seq_rule(seq: int, acked: int, verdict: BatchVerdict) -> None:
    assert judge_seq(seq, acked) is verdict


def test_each_table_names_each_state_it_reaches_and_error_always_closes() -> None:
    for table in (shimsession.ROUTER_TRANSITIONS, shimsession.SHIM_TRANSITIONS):
        for (state, direction, kind), following in table.items():
            assert direction in (shimsession.IN, shimsession.OUT)
            if kind is ErrorFrame:
                assert following is State.CLOSED
            else:
                assert following is not State.CLOSED
            assert state is not State.CLOSED  # nothing happens after ERROR


def feed_in(session: RouterSession, data: bytes, how: str, now_s: float = 0.0) -> list[object]:
    """Feed ``data`` whole or byte by byte; answer HELLO (acked 0); accept every batch."""
    events: list[object] = []
    chunks = [data] if how == "whole" else [data[i : i + 1] for i in range(len(data))]
    for chunk in chunks:
        session.receive_data(chunk, now_s)
        while (event := session.next_event()) is not None:
            if isinstance(event, Hello):
                events.append(event)
                events.append(session.accept_hello(0))
            else:
                verdict = session.admit_batch(event)
                events.append((event.seq, verdict))
                if verdict is BatchVerdict.ACCEPT:
                    session.batch_held(event.seq)
        if reply := session.data_to_send():
            events.append(reply)
    return events


@pytest.mark.parametrize("how", ["whole", "bytes"])
def test_router_hello_ready_batches_ping_pong_then_one_ack_per_read(how: str) -> None:
    session = RouterSession(LIMITS, now_s=0.0)
    assert session.max_frame_bytes == shimsession.MAX_HELLO_BYTES
    data = HELLO_FRAME + batch(1) + shimproto.encode_ping() + batch(2) + shimproto.encode_pong()
    events = feed_in(session, data, how)
    ready = shimproto.encode_ready(acked=0, window=4, max_batch_bytes=65536)
    assert events[:2] == [HELLO, ready]
    assert session.state is State.STREAMING
    assert session.max_frame_bytes == 80_000
    assert (1, BatchVerdict.ACCEPT) in events
    assert (2, BatchVerdict.ACCEPT) in events
    replies = b"".join(event for event in events[2:] if isinstance(event, bytes))
    decoder = shimproto.ShimFrameDecoder(1000)
    decoder.feed(replies)
    frames = []
    while (frame := decoder.next_event()) is not None:
        frames.append(frame)
    if how == "whole":
        assert frames == [Pong(), Ack(2)]  # one ACK for the whole read
    else:
        assert frames == [Ack(1), Pong(), Ack(2)]
    assert session.buffered == 0


@pytest.mark.parametrize("how", ["whole", "bytes"])
@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        (b"\x00\x00\x00\x09\x63garbage!", errors.ShimFrameError),
        (HELLO_FRAME, errors.ShimFrameError),  # a second HELLO
        (shimproto.encode_ack(1), errors.ShimFrameError),  # the router's own frame
        (batch(3), errors.ShimFrameError),  # a gap after 1
        (b"\x00\x10\x00\x00\x03", errors.FrameTooLarge),
    ],
    ids=["garbage", "second hello", "ack", "gap", "too large"],
)
def test_router_trailing_garbage_raises_after_the_good_frames(
    how: str, garbage: bytes, error: type[errors.ProtocolError]
) -> None:
    session = RouterSession(LIMITS, now_s=0.0)
    with pytest.raises(error):
        feed_in(session, HELLO_FRAME + batch(1) + garbage, how)
    assert session.acked == 1  # what came before the error is held
    assert session.refuse(error.code, "x") == shimproto.encode_error(error.code, "x")
    assert session.state is State.CLOSED
    with pytest.raises(RuntimeError, match="cannot send ERROR"):
        session.refuse("bad_frame", "again")


@pytest.mark.parametrize(
    ("first", "error"),
    [
        (batch(1), errors.ShimFrameError),  # BATCH before HELLO
        (shimproto.encode_ping(), errors.ShimFrameError),
        (b"\x00\x00\x10\x01\x01", errors.FrameTooLarge),  # a HELLO of 4096 + 1 bytes
    ],
    ids=["batch first", "ping first", "hello too long"],
)
def test_router_before_hello(first: bytes, error: type[errors.ProtocolError]) -> None:
    session = RouterSession(LIMITS, now_s=0.0)
    session.receive_data(first, 0.0)
    with pytest.raises(error, match=r"HELLO|4096"):
        session.next_event()
    assert session.refuse(error.code, "no") == shimproto.encode_error(error.code, "no")


def test_router_refuses_in_authentication_and_a_hello_sized_frame_is_fine() -> None:
    session = RouterSession(LIMITS, now_s=0.0)
    body = msgpack.packb({"v": 1, "token": "t" * 4000, "ps": "w", "stream": "s", "agent": "a"})
    session.receive_data(b"%s\x01%s" % ((len(body) + 1).to_bytes(4, "big"), body), 0.0)
    assert isinstance(session.next_event(), Hello)
    assert session.state is State.AUTHENTICATING
    assert session.data_to_send() == b""  # no ACK before READY
    session.refuse("unauthorized", "unknown token")
    assert session.state is State.CLOSED


def test_router_duplicates_and_the_stream_moved_on_elsewhere() -> None:
    session = RouterSession(LIMITS, now_s=0.0)
    session.receive_data(HELLO_FRAME, 0.0)
    assert session.next_event() == HELLO
    session.accept_hello(5)
    session.receive_data(batch(4) + batch(5) + batch(8), 0.0)
    first = session.next_event()
    assert isinstance(first, BatchFrame)
    assert session.admit_batch(first) is BatchVerdict.DUPLICATE
    second = session.next_event()
    assert isinstance(second, BatchFrame)
    assert session.admit_batch(second) is BatchVerdict.DUPLICATE
    assert session.data_to_send() == b""  # nothing new: no ACK
    third = session.next_event()
    assert isinstance(third, BatchFrame)
    # another connection of the stream got to 7: 8 is next, and 7 is acknowledged here too
    assert session.admit_batch(third, stream_acked=7) is BatchVerdict.ACCEPT
    session.batch_held(8)
    assert session.next_event() is None
    assert session.data_to_send() == shimproto.encode_ack(8)


def ready_session(now_s: float = 0.0) -> RouterSession:
    session = RouterSession(LIMITS, now_s=now_s)
    session.receive_data(HELLO_FRAME, now_s)
    assert session.next_event() == HELLO
    session.accept_hello(0)
    return session


def test_router_hello_deadline() -> None:
    session = RouterSession(LIMITS, now_s=100.0)
    assert session.deadline_s() == 110.0
    session.receive_data(HELLO_FRAME[:3], 105.0)  # activity does not move the HELLO deadline
    assert session.next_event() is None
    assert session.deadline_s() == 110.0
    with pytest.raises(SessionTimeout) as caught:
        session.on_deadline(110.0)
    assert caught.value.reason == "hello_timeout"


def test_router_idle_ping_then_pong_timeout() -> None:
    session = ready_session(now_s=0.0)
    assert session.deadline_s() == 30.0
    assert session.on_deadline(30.0) == shimproto.encode_ping()
    assert session.deadline_s() == 40.0
    session.receive_data(shimproto.encode_pong(), 35.0)  # any bytes count as liveness
    assert session.next_event() is None
    assert session.deadline_s() == 65.0
    assert session.on_deadline(65.0) == shimproto.encode_ping()
    with pytest.raises(SessionTimeout) as caught:
        session.on_deadline(75.0)
    assert caught.value.reason == "ping_timeout"


def test_router_frame_deadline_runs_from_the_first_byte_of_each_frame() -> None:
    session = ready_session(now_s=0.0)
    frame = batch(1)
    session.receive_data(frame[:4], 1.0)
    assert session.next_event() is None
    assert session.deadline_s() == 31.0  # the frame deadline and the idle PING coincide
    session.receive_data(frame[4:10], 20.0)
    assert session.next_event() is None
    assert session.deadline_s() == 31.0  # trickling does not move it
    # The frame completes and the next one begins in the same read: its own deadline.
    session.receive_data(frame[10:] + batch(2)[:3], 25.0)
    event = session.next_event()
    assert isinstance(event, BatchFrame)
    assert session.next_event() is None
    assert session.deadline_s() == 55.0
    with pytest.raises(SessionTimeout) as caught:
        session.on_deadline(55.0)
    assert caught.value.reason == "frame_timeout"
    # Between frames there is no frame deadline.
    quiet = ready_session(now_s=0.0)
    quiet.receive_data(batch(1), 1.0)
    assert isinstance(quiet.next_event(), BatchFrame)
    assert quiet.next_event() is None
    assert quiet.deadline_s() == 31.0
    quiet.receive_data(batch(2)[:2], 2.0)
    assert quiet.next_event() is None
    assert quiet.deadline_s() == 32.0
    assert quiet.on_deadline(31.0) == shimproto.encode_ping()  # frame deadline not yet due


# --- the shim's side ----------------------------------------------------------------------


def feed_shim(session: ShimSession, data: bytes, how: str) -> list[object]:
    events: list[object] = []
    chunks = [data] if how == "whole" else [data[i : i + 1] for i in range(len(data))]
    for chunk in chunks:
        session.receive_data(chunk)
        while (event := session.next_event()) is not None:
            events.append(event)
        if reply := session.data_to_send():
            events.append(reply)
    return events


@pytest.mark.parametrize("how", ["whole", "bytes"])
def test_shim_hello_ready_acks_ping(how: str) -> None:
    session = ShimSession(HELLO, max_frame_bytes=65536)
    assert session.start() == HELLO_FRAME
    assert not session.may_send(0)
    data = (
        shimproto.encode_ready(acked=3, window=2, max_batch_bytes=70_000)
        + shimproto.encode_ack(2)  # stale: at or below acked
        + shimproto.encode_ack(5)
        + shimproto.encode_ping()
        + shimproto.encode_ack(5)
        + shimproto.encode_ack(6)
    )
    events = feed_shim(session, data, how)
    resume = Resume(acked=3, window=2, max_batch_bytes=70_000)
    pong = shimproto.encode_pong()
    if how == "whole":  # the PONG goes out after the read
        assert events == [resume, Acked(5), Acked(6), pong]
    else:
        assert events == [resume, Acked(5), pong, Acked(6)]
    assert session.state is State.STREAMING
    assert session.may_send(1)
    assert not session.may_send(2)


@pytest.mark.parametrize("how", ["whole", "bytes"])
@pytest.mark.parametrize(
    ("code", "batch_refused"),
    [("bad_frame", True), ("too_large", True), ("unauthorized", False), ("overloaded", False)],
)
def test_shim_error_ends_the_session(how: str, code: str, batch_refused: bool) -> None:
    session = ShimSession(HELLO, max_frame_bytes=65536)
    session.start()
    ready = shimproto.encode_ready(acked=0, window=2, max_batch_bytes=65536)
    events = feed_shim(session, ready + shimproto.encode_error(code, "why"), how)
    assert events[-1] == Refused(code, "why", batch_refused)
    assert session.state is State.CLOSED
    assert not session.may_send(0)


def test_shim_error_instead_of_ready() -> None:
    session = ShimSession(HELLO, max_frame_bytes=65536)
    session.start()
    session.receive_data(shimproto.encode_error("unauthorized", "unknown token"))
    assert session.next_event() == Refused("unauthorized", "unknown token", False)


@pytest.mark.parametrize(
    "garbage",
    [
        shimproto.encode_ack(1),  # ACK before READY
        HELLO_FRAME,  # the shim's own frame
        b"\x00\x00\x00\x01\x63",  # unknown kind
        shimproto.encode_pong(),
    ],
    ids=["ack first", "hello", "unknown kind", "pong"],
)
def test_shim_refuses_frames_out_of_turn(garbage: bytes) -> None:
    session = ShimSession(HELLO, max_frame_bytes=65536)
    session.start()
    session.receive_data(garbage)
    with pytest.raises(errors.ShimFrameError):
        session.next_event()


@pytest.mark.parametrize("how", ["whole", "bytes"])
def test_shim_trailing_garbage_after_ready_and_a_second_ready(how: str) -> None:
    for garbage in (
        b"\xff\xff\xff\xff\x02",
        shimproto.encode_ready(acked=0, window=1, max_batch_bytes=65536),
    ):
        session = ShimSession(HELLO, max_frame_bytes=65536)
        session.start()
        ready = shimproto.encode_ready(acked=0, window=1, max_batch_bytes=65536)
        with pytest.raises(errors.ProtocolError):
            feed_shim(session, ready + shimproto.encode_ack(1) + garbage, how)
        assert session.acked == 1


def test_shim_seq_rule_when_sending() -> None:
    session = ShimSession(HELLO, max_frame_bytes=65536)
    with pytest.raises(RuntimeError, match="cannot send BATCH"):
        session.sending(1)
    session.start()
    with pytest.raises(RuntimeError, match="cannot send HELLO"):
        session.start()
    # A restarted router: READY acked 0; the shim resends what it holds from 50 on.
    session.receive_data(shimproto.encode_ready(acked=0, window=8, max_batch_bytes=65536))
    assert session.next_event() == Resume(0, 8, 65536)
    session.sending(50)
    session.sending(51)
    with pytest.raises(RuntimeError, match="does not follow 51"):
        session.sending(53)


def test_router_sending_out_of_turn_is_a_local_error() -> None:
    session = RouterSession(LIMITS, now_s=0.0)
    with pytest.raises(RuntimeError, match="cannot send READY"):
        session.accept_hello(0)
