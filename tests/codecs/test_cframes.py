"""The C frame formatter ``logplex.codecs._cframes`` against its Python twin (DESIGN 5.1, 5.2).

Every batch encoder test also runs through the C formatter (it is the default when built);
here both are compared directly on any batch, on the batches the C side hands back to the
Python side (``None``), and on the errors both must raise alike.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_properties import messages, run_messages

from logplex.codecs import drain_frames
from logplex.codecs.errors import EncodeError
from logplex.codecs.records import Message

TS_US = 1_795_811_973_123_456
TOKEN = b"d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"
LAYOUTS = [
    (b"host", drain_frames._https_headers, drain_frames._https_header),
    (TOKEN, drain_frames._syslog_headers, drain_frames._syslog_header),
]


def test_the_c_formatter_is_built() -> None:
    assert drain_frames.C_FORMATTER, (
        "logplex.codecs._cframes is not built: the venv was installed without a C "
        "compiler. Install gcc (apt-get install -y gcc) and reinstall: make clean test"
    )


def both(batch: list[Any], layout: int) -> tuple[object, object]:
    """(C result or error, Python result or error) for one layout."""
    first_field, headers, make_header = LAYOUTS[layout]
    results: list[object] = []
    for encode in (drain_frames.frames_with_headers_c, drain_frames.frames_with_headers_python):
        try:
            results.append(encode(batch, first_field, headers, make_header))
        except (EncodeError, ValueError, TypeError, OverflowError) as exc:
            results.append((type(exc), str(exc)))
    return results[0], results[1]


@given(st.lists(st.one_of(messages, run_messages), max_size=60), st.sampled_from([0, 1]))
def test_c_and_python_give_the_same_frames_or_the_same_error(
    batch: list[Message], layout: int
) -> None:
    c_result, python_result = both(batch, layout)
    assert c_result == python_result


UNUSUAL: list[tuple[str, Any]] = [
    ("a list, not a tuple", [TS_US, 190, b"app", b"web.1", b"x"]),
    ("four fields", (TS_US, 190, b"app", b"web.1")),
    ("negative timestamp", (-1, 190, b"app", b"web.1", b"x")),
    ("timestamp past 2**62", (1 << 62, 190, b"app", b"web.1", b"x")),
    ("timestamp past 9999", (253_402_300_800_000_000, 190, b"app", b"web.1", b"x")),
    ("a bool PRI", (TS_US, True, b"app", b"web.1", b"x")),
    ("huge PRI", (TS_US, 1 << 40, b"app", b"web.1", b"x")),
    ("PRI out of range", (TS_US, 192, b"app", b"web.1", b"x")),
    ("bytearray ps", (TS_US, 190, b"app", bytearray(b"web.1"), b"x")),
    ("str msg", (TS_US, 190, b"app", b"web.1", "x")),
    ("ps with a space", (TS_US, 190, b"app", b"web 1", b"x")),
    ("empty source", (TS_US, 190, b"", b"web.1", b"x")),
]


@pytest.mark.parametrize(("name", "record"), UNUSUAL, ids=[name for name, _ in UNUSUAL])
@pytest.mark.parametrize("layout", [0, 1])
def test_unusual_records_go_the_python_way_with_the_same_outcome(
    name: str, record: Any, layout: int
) -> None:
    good = (TS_US, 190, b"app", b"web.1", b"ok")
    for batch in ([record], [good, record, good]):
        c_result, python_result = both(batch, layout)
        assert c_result == python_result, name


def test_the_c_formatter_refuses_what_it_cannot_use() -> None:
    c_frames = drain_frames._c_frames
    batch = [(TS_US, 190, b"app", b"web.1", b"x")]
    good_parts = (b"<190>1 ", b" host app web.1 - ", 58)  # 58: all but MSG

    def prefix(ts_ms: int) -> bytes:
        return drain_frames.millisecond_prefix(ts_ms)

    assert c_frames(batch, lambda *key: good_parts, prefix) == [
        b"59 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - x\n"
    ]
    for parts in ([b"a", b"b", 1], (b"a", b"b"), ("a", b"b", 1), (b"a", b"b", -1)):
        assert c_frames(batch, lambda *key, parts=parts: parts, prefix) is None  # type: ignore[misc]
    assert c_frames(batch, lambda *key: good_parts, lambda ts_ms: "text") is None  # type: ignore[arg-type,return-value]

    def refuse(*key: object) -> tuple[bytes, bytes, int]:
        raise EncodeError("refused")

    with pytest.raises(EncodeError, match="refused"):
        c_frames(batch, refuse, prefix)
    with pytest.raises(ZeroDivisionError):
        c_frames(batch, lambda *key: good_parts, lambda ts_ms: 1 // 0)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="frames_with_headers"):
        c_frames(tuple(batch), lambda *key: good_parts, prefix)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="frames_with_headers"):
        c_frames(batch, lambda *key: good_parts)  # type: ignore[call-arg]
    assert c_frames([], refuse, prefix) == []


def test_parts_are_asked_once_per_ps_within_a_run_of_pri_and_source() -> None:
    asked: list[tuple[int, bytes, bytes]] = []

    def parts_of(pri: int, source: bytes, ps: bytes) -> tuple[bytes, bytes, int]:
        asked.append((pri, source, ps))
        return drain_frames._syslog_header((TOKEN, pri, source, ps))

    batch = [
        (TS_US + n, pri, source, ps, b"m")
        for n, (pri, source, ps) in enumerate(
            [
                (190, b"app", b"web.1"),
                (190, b"app", b"web.2"),
                (190, b"app", b"web.1"),
                (190, b"ap" + b"p", b"web.2"),  # an equal source, another object
                (13, b"app", b"web.1"),
                (190, b"app", b"web.1"),
            ]
        )
    ]
    frames = drain_frames._c_frames(batch, parts_of, drain_frames.millisecond_prefix)
    assert frames == drain_frames.frames_with_headers_python(
        batch, TOKEN, drain_frames._syslog_headers, drain_frames._syslog_header
    )
    assert asked == [
        (190, b"app", b"web.1"),
        (190, b"app", b"web.2"),
        (13, b"app", b"web.1"),
        (190, b"app", b"web.1"),
    ]
