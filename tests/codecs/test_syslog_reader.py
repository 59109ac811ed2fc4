"""Reading octet-counted syslog frames into channel batches: every reader equals the reference."""

from __future__ import annotations

import itertools
import sys
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logplex.codecs import syslog_reader
from logplex.codecs.octet import OctetFrameDecoder, encode_octet_frame
from logplex.codecs.records import Message
from logplex.codecs.syslog_reader import (
    C_SCANNER,
    ReadOutcome,
    Scanner,
    ScanResult,
    _check_key,
    _check_stamp,
    _read_frame_by_frame,
    frames_to_batches,
    merge_outcomes,
    read_batches,
    read_common_frames,
    read_decoder,
    scan_common_python,
)
from logplex.config.records import TokenInfo

TOKEN_A = "t.aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
TOKEN_B = "t.bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
TS = b"2026-11-27T20:39:33.123456+00:00"
TS_US = 1_795_811_973_123_456
NOW_US = 1_800_000_000_000_000
TOKENS = {TOKEN_A: TokenInfo("a", b"app"), TOKEN_B: TokenInfo("b", b"heroku")}


def frame(token: str, msg: bytes, *, ps: bytes = b"web.1", ts: bytes = TS, pri: int = 190) -> bytes:
    return b"<%d>1 %s host %s %s - - %s" % (pri, ts, token.encode(), ps, msg)


def test_frame_fields_kept_and_dropped() -> None:
    with_sd = b'<13>1 %s myhost %s worker.2 ID47 [ex@32473 a="1"] hello' % (TS, TOKEN_A.encode())
    outcome = frames_to_batches([with_sd], TOKENS.get, NOW_US)
    # PRI, TIMESTAMP, PROCID and MSG kept; HOSTNAME, MSGID and SD dropped; source from token.
    assert outcome.batches == [("a", [(TS_US, 13, b"app", b"worker.2", b"hello")])]


@pytest.mark.parametrize(
    ("frames", "batches", "unknown", "malformed"),
    [
        ([frame(TOKEN_A, b"1"), frame(TOKEN_A, b"2")], [("a", [b"1", b"2"])], 0, 0),
        (
            [frame(TOKEN_A, b"1"), frame(TOKEN_B, b"2"), frame(TOKEN_A, b"3")],
            [("a", [b"1"]), ("b", [b"2"]), ("a", [b"3"])],  # grouped in arrival order
            0,
            0,
        ),
        ([frame("t.unknown", b"1"), frame(TOKEN_A, b"2")], [("a", [b"2"])], 1, 0),
        ([b"no pri here", frame(TOKEN_A, b"2")], [("a", [b"2"])], 0, 1),
        ([b"<999>1 - - - - - - x"], [], 0, 1),  # PRI out of range
        ([frame(TOKEN_A, b"one\ntwo\n")], [("a", [b"one", b"two"])], 0, 0),  # split per line
        ([frame(TOKEN_A, b"")], [("a", [b""])], 0, 0),
        ([], [], 0, 0),
    ],
)
def test_frames_to_batches(
    frames: list[bytes], batches: list[tuple[str, list[bytes]]], unknown: int, malformed: int
) -> None:
    outcome = frames_to_batches(frames, TOKENS.get, NOW_US)
    assert [(ch, [m[4] for m in msgs]) for ch, msgs in outcome.batches] == batches
    assert outcome.unknown_tokens == unknown
    assert outcome.malformed == malformed


def test_lenient_path_never_yields_an_unusable_ps() -> None:
    # Two spaces after the timestamp: not the input layout, so the lenient parser reads it.
    odd = b"<190>1 %s  host %s w\x01b - - text" % (TS, TOKEN_A.encode())
    outcome = frames_to_batches([odd], TOKENS.get, NOW_US)
    assert outcome.batches == [("a", [(TS_US, 190, b"app", b"-", b"text")])]


def test_nil_timestamp_and_procid() -> None:
    outcome = frames_to_batches([frame(TOKEN_A, b"x", ts=b"-", ps=b"-")], TOKENS.get, NOW_US)
    assert outcome.batches == [("a", [(NOW_US, 190, b"app", b"-", b"x")])]


@given(frames=st.lists(st.binary(max_size=300), max_size=20))
def test_frames_to_batches_never_raises_and_accounts_for_every_frame(
    frames: list[bytes],
) -> None:
    valid = frame(TOKEN_A, b"valid")
    outcome = frames_to_batches([*frames, valid], TOKENS.get, NOW_US)
    published = sum(len(messages) for _, messages in outcome.batches)
    assert outcome.batches[-1][1][-1][4] == b"valid"
    assert published + outcome.unknown_tokens + outcome.malformed >= len(frames) + 1


# --- the one-pass readers: equal to the frame-by-frame path on any input -----------------

BOM = b"\xef\xbb\xbf"
# Frames the fast readers take, and near misses each of them must hand back.
VARIED_FRAMES = [
    frame(TOKEN_A, b"plain"),
    frame(TOKEN_A, b"other ps", ps=b"worker.7"),
    frame(TOKEN_A, b"other pri", pri=13),
    frame(TOKEN_A, b"next second", ts=b"2026-11-27T20:39:34.000001+00:00"),
    frame(TOKEN_A, b"zulu", ts=b"2026-11-27T20:39:33.123456Z"),
    frame(TOKEN_A, b"offset", ts=b"2026-11-27T21:39:33.5+01:00"),
    frame(TOKEN_A, b"west", ts=b"2026-11-27T18:09:33.123-02:30"),
    frame(TOKEN_A, b"no fraction", ts=b"2026-11-27T20:39:33Z"),
    frame(TOKEN_A, b"nine digits", ts=b"2026-11-27T20:39:33.123456789+00:00"),
    frame(TOKEN_A, b"dot only", ts=b"2026-11-27T20:39:33.+00:00"),
    frame(TOKEN_A, b"bad zone", ts=b"2026-11-27T20:39:33.1+25:00"),
    frame(TOKEN_A, b"no zone", ts=b"2026-11-27T20:39:33.123"),
    frame(TOKEN_A, b"before 1970", ts=b"1970-01-01T00:00:00.5+00:01"),
    frame(TOKEN_A, b"last second", ts=b"9999-12-31T23:59:59.999999Z"),
    frame(TOKEN_A, b"nil ts", ts=b"-"),
    frame(TOKEN_A, b"nil ps", ps=b"-"),
    frame(TOKEN_B, b"channel b"),
    frame("t.unknown", b"unknown token"),
    frame(TOKEN_A, b"trailing lf\n"),
    frame(TOKEN_A, b"two\nlines"),
    frame(TOKEN_A, BOM + b"bom"),
    frame(TOKEN_A, b""),
    frame(TOKEN_A, b"x" * 1000),  # a four-digit MSG-LEN
    # a header inside a MSG: it must never start a frame of its own
    frame(TOKEN_A, b"96 " + frame(TOKEN_B, b"injected")),
    frame(TOKEN_A, b"<190>1 2026-11-27T20:39:33.000000+00:00 h a p - - "),
    b"<190>1 %s host %s web.1 ID1 - with msgid" % (TS, TOKEN_A.encode()),
    b'<190>1 %s host %s web.1 - [a@1 b="c"] with sd' % (TS, TOKEN_A.encode()),
    b"<190>1 %s host %s web.1 - -" % (TS, TOKEN_A.encode()),
    b"<190>1 %s host %s web.1 - drain layout" % (TS, TOKEN_A.encode()),
    b"<190>1 %s host %s web.1 - [INFO] drain layout or SD" % (TS, TOKEN_A.encode()),
    b"<190>1 %s host %s web.1 - -" % (TS, TOKEN_A.encode()),
    b'<190>1 %s host %s web.1 - [a@1 b="c] \\" d"][e@1] two elements' % (TS, TOKEN_A.encode()),
    b'<13>1 %s host %s - - [timeQuality tzKnown="1" isSynced="0"] from logger'
    % (TS, TOKEN_A.encode()),
    b'<190>1 %s host %s web.1 - [a@1 b="c"]glued' % (TS, TOKEN_A.encode()),
    b'<190>1 %s host %s web.1 - [a@1 b="c" unterminated' % (TS, TOKEN_A.encode()),
    b"<190>1 %s host %s web.1 - [a@1 b=unquoted] msg" % (TS, TOKEN_A.encode()),
    b"<190>1 %s host %s web.1 ID1 [a@1] msgid and sd" % (TS, TOKEN_A.encode()),
    b"<190>1 %s host %s web.1 ID1 no sd after a msgid" % (TS, TOKEN_A.encode()),
    b"<999>1 %s host %s web.1 - - bad pri" % (TS, TOKEN_A.encode()),
    b"<190>1 2026-02-30T00:00:00.000000+00:00 host %s web.1 - - bad date" % TOKEN_A.encode(),
    b"<190>1 %s host %s w\x01b - - bad ps" % (TS, TOKEN_A.encode()),
    b"garbage frame",
]


def test_the_c_scanner_is_built() -> None:
    assert C_SCANNER is not None, (
        "logplex.codecs._syslogscan is not built: the venv was installed without a C compiler. "
        "Install gcc (apt-get install -y gcc) and reinstall: make clean test"
    )


# Both cuts of the common shape: the C scanner and the regex one it stands in for.
SCANNERS = pytest.mark.parametrize("scan", [C_SCANNER, scan_common_python], ids=["c", "python"])


def flat(outcome: ReadOutcome) -> tuple[list[tuple[str, Message]], int, int]:
    messages = [(channel, m) for channel, batch in outcome.batches for m in batch]
    return messages, outcome.unknown_tokens, outcome.malformed


def joined(frames: list[bytes]) -> bytes:
    return b"".join(map(encode_octet_frame, frames))


@SCANNERS
@pytest.mark.parametrize("frames", [[f] * 3 for f in VARIED_FRAMES] + [VARIED_FRAMES])
def test_read_batches_equals_frames_to_batches(frames: list[bytes], scan: Scanner) -> None:
    outcome, taken = read_batches(joined(frames), 10240, TOKENS.get, NOW_US, scan)
    assert taken == len(joined(frames))
    assert outcome == frames_to_batches(frames, TOKENS.get, NOW_US)


@pytest.mark.parametrize(
    ("frames", "by_c", "by_python"),
    [
        ([frame(TOKEN_A, b"1"), frame(TOKEN_A, b"2", ps=b"w.2")], 2, 2),
        ([frame(TOKEN_A, b"1"), frame(TOKEN_A, b"2", pri=13)], 2, 2),
        ([frame(TOKEN_A, b"aaaaaa\n"), frame(TOKEN_A, BOM + b"b\nc")], 2, 2),  # 3 digits
        ([frame(TOKEN_A, b"1"), frame(TOKEN_B, b"2"), frame(TOKEN_A, b"3")], 3, 3),
        ([frame(TOKEN_A, b"1"), frame("t.unknown", b"2"), frame(TOKEN_A, b"3")], 3, 3),
        # MSG-LEN widths differ: the regex cut proves cuts with one width only
        ([frame(TOKEN_A, b"1"), frame(TOKEN_A, b"x" * 1000)], 2, 0),
        # a header inside a MSG: the C scanner walks by the counts and never sees it
        ([frame(TOKEN_A, b"96 " + frame(TOKEN_B, b"injected"))], 1, 0),
        # the C scanner stops before the first frame of another shape
        ([frame(TOKEN_A, b"1"), frame(TOKEN_A, b"2", ts=b"-"), frame(TOKEN_A, b"3")], 1, 0),
        ([frame(TOKEN_A, b"1", ts=b"-")], 0, 0),
        # other zones and fraction widths: the C scanner's stamp keeps them
        ([frame(TOKEN_A, b"1", ts=b"2026-11-27T21:39:33.5+01:00")], 1, 0),
        ([frame(TOKEN_A, b"1", ts=b"2026-11-27T20:39:33Z"), frame(TOKEN_A, b"2")], 2, 0),
        ([frame(TOKEN_A, b"1", ts=b"2026-11-27T20:39:33.1+25:00")], 0, 0),  # then refused
        # MSGID and STRUCTURED-DATA other than "-": the C scanner keeps them in the key
        ([b'<13>1 %s h %s - ID [t@1 a="\\]"] m' % (TS, TOKEN_A.encode())], 1, 0),
        ([b'<13>1 %s h %s - ID [t@1 a="]"] m' % (TS, TOKEN_A.encode())], 0, 0),  # strict: \]
        ([b"<13>1 %s h %s - - drain layout" % (TS, TOKEN_A.encode())], 1, 0),
        ([b"<13>1 %s h %s p - -" % (TS, TOKEN_A.encode())], 1, 0),  # SD "-", no MSG
        ([b"<13>1 %s h %s - -" % (TS, TOKEN_A.encode())], 0, 0),  # no SD field
        ([b'<13>1 %s h %s - - [t@1 a="1"]x' % (TS, TOKEN_A.encode())], 0, 0),  # glued MSG
        ([b'<13>1 %s h %s - - [t@1 a="1"' % (TS, TOKEN_A.encode())], 0, 0),  # not closed
        ([b"<13>1 %s h %s - - [t@1 a=1] m" % (TS, TOKEN_A.encode())], 0, 0),  # then refused
        ([b"<13>1 %s h %s - ID no sd" % (TS, TOKEN_A.encode())], 0, 0),
        ([frame(TOKEN_A, b"1", pri=999)], 0, 0),  # cut, then refused by the validation
        ([frame(TOKEN_A, b"1", ps=b"w\x01b")], 0, 0),  # the cut only delimits fields
        ([frame(TOKEN_A, b"1", ts=b"2026-11-27T20:3x:33.123456+00:00")], 0, 0),
    ],
)
def test_read_common_frames_takes_only_the_common_shape(
    frames: list[bytes], by_c: int, by_python: int
) -> None:
    for scan, expected in ((C_SCANNER, by_c), (scan_common_python, by_python)):
        assert scan is not None
        result = read_common_frames(joined(frames), 10240, TOKENS.get, scan)
        if not expected:  # nothing taken, or refused by the validation
            assert result in ((ReadOutcome([]), 0), None)
            continue
        assert result == (
            frames_to_batches(frames[:expected], TOKENS.get, NOW_US),
            len(joined(frames[:expected])),
        )


@SCANNERS
def test_read_common_frames_leaves_a_cut_frame_and_what_follows(scan: Scanner) -> None:
    whole = joined([frame(TOKEN_A, b"1"), frame(TOKEN_A, b"2")])
    third = encode_octet_frame(frame(TOKEN_A, b"3"))
    for cut in range(len(third)):
        result = read_batches(whole + third[:cut], 10240, TOKENS.get, NOW_US, scan)
        assert result[1] == len(whole)
        assert [m[4] for m in result[0].batches[0][1]] == [b"1", b"2"]
    assert read_common_frames(third[:-1], 10240, TOKENS.get, scan) == (ReadOutcome([]), 0)
    # a count over the limit is the decoder's to refuse
    assert read_batches(whole, 50, TOKENS.get, NOW_US, scan)[1] == 0


@given(
    picks=st.lists(
        st.one_of(st.sampled_from(VARIED_FRAMES), st.binary(min_size=1, max_size=120)),
        max_size=30,
    )
)
def test_read_batches_equals_frames_to_batches_on_any_frames(picks: list[bytes]) -> None:
    data = joined(picks)
    expected = frames_to_batches(picks, TOKENS.get, NOW_US)
    for scan in (C_SCANNER, scan_common_python):
        assert scan is not None
        outcome, taken = read_batches(data, 10240, TOKENS.get, NOW_US, scan)
        assert taken == len(data)
        assert outcome == expected


@given(
    picks=st.lists(
        st.one_of(
            st.sampled_from([encode_octet_frame(f) for f in VARIED_FRAMES]),
            st.binary(max_size=40),  # garbage between frames
        ),
        max_size=30,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=5),
    use_c=st.booleans(),
    take_back_bytes=st.sampled_from([0, 1, 4096]),
)
def test_read_decoder_equals_the_decoder_then_frames_to_batches(
    picks: list[bytes], cuts: list[int], use_c: bool, take_back_bytes: int
) -> None:
    scan = C_SCANNER if use_c else scan_common_python
    assert scan is not None
    # reads of the test are small: a lower threshold takes frames still arriving back too
    with mock.patch.object(syslog_reader, "_TAKE_BACK_BYTES", take_back_bytes):
        check_read_decoder(picks, cuts, scan)


def check_read_decoder(picks: list[bytes], cuts: list[int], scan: Scanner) -> None:
    data = b"".join(picks)
    fast = OctetFrameDecoder(10240, "resync")
    slow = OctetFrameDecoder(10240, "resync")
    fast_messages: list[tuple[str, Message]] = []
    slow_messages: list[tuple[str, Message]] = []
    counts = [0, 0, 0, 0]
    edges = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    for start, end in itertools.pairwise(edges):
        slow.feed(data[start:end])
        messages, unknown, malformed = flat(
            read_decoder(fast, TOKENS.get, NOW_US, data[start:end], scan)
        )
        fast_messages += messages
        counts[0] += unknown
        counts[1] += malformed
        messages, unknown, malformed = flat(frames_to_batches(slow.frames(), TOKENS.get, NOW_US))
        slow_messages += messages
        counts[2] += unknown
        counts[3] += malformed
    assert fast_messages == slow_messages
    assert counts[:2] == counts[2:]
    assert (fast.resyncs, fast.skipped_bytes, fast.buffered) == (
        slow.resyncs,
        slow.skipped_bytes,
        slow.buffered,
    )


@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.one_of(
                st.sampled_from([encode_octet_frame(f) for f in VARIED_FRAMES]),
                st.binary(max_size=12),
            ),
            max_size=12,
        ).map(b"".join),
    ),
    cut=st.integers(min_value=0, max_value=3000),
    max_frame_bytes=st.integers(min_value=1, max_value=20000),
)
def test_the_scanners_read_any_bytes_as_the_frame_loop_does(
    data: bytes, cut: int, max_frame_bytes: int
) -> None:
    data = data[:cut] if cut < len(data) else data  # also reads cut anywhere
    expected = _read_frame_by_frame(data, max_frame_bytes, TOKENS.get, NOW_US)
    for scan in (C_SCANNER, scan_common_python):
        assert scan is not None
        assert read_batches(data, max_frame_bytes, TOKENS.get, NOW_US, scan) == expected
        end, prefixes, fractions, keys, msgs, _ = scan(data, max_frame_bytes)
        assert 0 <= end <= len(data)
        assert len(prefixes) == len(fractions) == len(keys) == len(msgs)


def test_after_an_odd_frame_the_scanner_goes_on() -> None:
    assert C_SCANNER is not None
    scanned: list[int] = []

    def counting_scanner(data: bytes, max_frame_bytes: int, start: int) -> ScanResult:
        result = C_SCANNER(data, max_frame_bytes, start)
        scanned.append(len(result[4]))
        return result

    odd = frame(TOKEN_A, b"odd", ts=b"-")  # a NIL timestamp: the frame loop's
    frames = [frame(TOKEN_A, b"1"), odd, frame(TOKEN_A, b"2"), frame(TOKEN_A, b"3"), odd]
    frames += [frame(TOKEN_A, b"4")]
    data = joined(frames)
    assert read_batches(data, 10240, TOKENS.get, NOW_US, counting_scanner) == (
        frames_to_batches(frames, TOKENS.get, NOW_US),
        len(data),
    )
    assert scanned == [1, 2, 1]  # the odd frames alone went through the frame loop


def test_checked_stamps_and_keys_are_remembered_within_a_bound() -> None:
    for n in range(5000):
        assert _check_key(b"h %s web.%d - -" % (TOKEN_A.encode(), n)) == (
            TOKEN_A.encode(),
            b"web.%d" % n,
        )
        assert _check_key.cache_info().currsize <= 4096
    assert _check_key(b"h t.a w\x01b - -") is None  # invalid PROCID: remembered as such
    hits = _check_key.cache_info().hits
    assert _check_key(b"h t.a w\x01b - -") is None
    assert _check_key.cache_info().hits == hits + 1
    assert _check_stamp(b"<13>1 2026-11-27T20:39:33.000Z") == (13, TS_US - 123_456)
    assert _check_stamp(b"<13>1 2026-02-30T20:39:33Z") is None


def test_the_c_scanner_checks_its_arguments() -> None:
    assert C_SCANNER is not None
    with pytest.raises(TypeError, match="bytes"):
        C_SCANNER(bytearray(b"1 x"), 10240)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="2 or 3 arguments"):
        C_SCANNER(b"1 x")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="outside"):
        C_SCANNER(b"1 x", 10240, 4)
    with pytest.raises(ValueError, match="outside"):
        C_SCANNER(b"1 x", 10240, -1)
    one = joined([frame(TOKEN_A, b"m")])
    assert C_SCANNER(b"junk" + one, 10240, 4)[0] == 4 + len(one)
    assert C_SCANNER(one, 10240, len(one)) == (len(one), [], [], [], [], 0)
    with pytest.raises(TypeError):
        C_SCANNER(b"1 x", "10240")  # type: ignore[arg-type]
    assert C_SCANNER(b"", 10240) == (0, [], [], [], [], 0)
    assert C_SCANNER(joined([frame(TOKEN_A, b"m")]), 0)[0] == 0  # nothing fits a zero cap


def test_merge_outcomes_continues_a_channel_batch() -> None:
    a1, a2, b1 = ((1, 1, b"s", b"p", m) for m in (b"a1", b"a2", b"b1"))
    merged = merge_outcomes(ReadOutcome([("a", [a1])], 1, 0), ReadOutcome([("a", [a2])], 0, 2))
    assert merged == ReadOutcome([("a", [a1, a2])], 1, 2)
    merged = merge_outcomes(ReadOutcome([("a", [a1])]), ReadOutcome([("b", [b1])]))
    assert merged == ReadOutcome([("a", [a1]), ("b", [b1])])
    assert merge_outcomes(ReadOutcome([]), ReadOutcome([("b", [b1])])).batches == [("b", [b1])]


def test_without_the_c_module_the_regex_cut_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "logplex.codecs._syslogscan", None)  # import fails
    assert syslog_reader._c_scanner() is None


def test_the_frame_loop_skips_repeats_of_an_unknown_token_by_their_route() -> None:
    # The first frame teaches the loop that its header key routes nowhere; the repeats are
    # then skipped on the fast path, each counted, and the known channel still lands.
    frames = [frame("t.unknown", b"%d" % n) for n in range(3)] + [frame(TOKEN_A, b"kept")]
    outcome, taken = _read_frame_by_frame(joined(frames), 10240, TOKENS.get, NOW_US)
    assert taken == len(joined(frames))
    assert outcome.unknown_tokens == 3
    assert flat(outcome)[0] == [("a", (TS_US, 190, b"app", b"web.1", b"kept"))]
