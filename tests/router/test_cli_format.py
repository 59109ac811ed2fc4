"""The CLI's pure helpers: tail lines, per-ps colours, JSON lines, URL redaction, tables."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from logplex.cli.admin import drains_table, shown_drain_url
from logplex.cli.client import CliError, resolve_api_url, resolve_auth_key
from logplex.cli.tail import Colourer, LinePrinter, TailLine, line_as_json, split_tail_line
from logplex.codecs.notices import tail_line
from logplex.codecs.timestamps import format_ts

LINE = b"2026-11-27T20:39:33.123456+00:00 app[web.1]: hello ]: world"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (LINE, TailLine(LINE[:32], b"app", b"web.1", b"hello ]: world")),
        (
            b"2026-11-27T20:39:33.123456+00:00 heroku[logplex]: Error L11",
            TailLine(b"2026-11-27T20:39:33.123456+00:00", b"heroku", b"logplex", b"Error L11"),
        ),
        (b"T a[]: ", TailLine(b"T", b"a", b"", b"")),
        (b"no-space", None),
        (b"T app web.1: hi", None),
        (b"T [web.1]: hi", None),
    ],
)
def test_split_tail_line(line: bytes, expected: TailLine | None) -> None:
    assert split_tail_line(line) == expected


def test_each_ps_gets_its_own_colour_on_the_prefix_only() -> None:
    colourer = Colourer()
    web = colourer.paint(b"T app[web.1]: a")
    worker = colourer.paint(b"T app[worker.1]: b")
    web_again = colourer.paint(b"T app[web.1]: c")
    assert web == b"\x1b[36mT app[web.1]:\x1b[0m a"
    assert worker == b"\x1b[33mT app[worker.1]:\x1b[0m b"
    assert web_again == b"\x1b[36mT app[web.1]:\x1b[0m c"
    assert colourer.paint(b"garbage") == b"garbage"


def test_line_printer_reassembles_lines_across_chunks() -> None:
    out = io.BytesIO()
    printer = LinePrinter(out, colour=False, as_json=False)  # type: ignore[arg-type]
    for chunk in (b"T a[w]: one\nT a[w]: t", b"wo\n", b"T a[w]: th", b"ree"):
        printer.feed(chunk)
    assert out.getvalue() == b"T a[w]: one\nT a[w]: two\n"
    printer.finish()
    assert out.getvalue() == b"T a[w]: one\nT a[w]: two\nT a[w]: three\n"


def test_json_lines() -> None:
    assert json.loads(line_as_json(LINE)) == {
        "ts": "2026-11-27T20:39:33.123456+00:00",
        "source": "app",
        "ps": "web.1",
        "msg": "hello ]: world",
    }
    assert json.loads(line_as_json(b"odd \xff")) == {"line": "odd \ufffd"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("syslog+tls://logs.example:6514", "syslog+tls://logs.example:6514"),
        ("https://user:secret@logs.example/in?x=1", "https://user:***@logs.example/in?x=…"),
        ("https://u:p@[::1]:8443/x", "https://u:***@[::1]:8443/x"),
        ("https://tokenonly@logs.example/", "https://***@logs.example/"),
        ("https://h.example/in?api_key=s3cret", "https://h.example/in?api_key=…"),
        ("not a url", "(hidden: the router returned a URL this CLI cannot parse; see --json)"),
    ],
)
def test_drain_urls_are_shown_without_secrets(url: str, shown: str) -> None:
    assert shown_drain_url(url) == shown


def test_drains_table_has_status_columns_and_hides_passwords() -> None:
    table = drains_table(
        [
            {
                "id": 7,
                "token": "d.x",
                "url": "https://u:pw@h.example/",
                "status": {
                    "state": "degraded",
                    "delivered": 120,
                    "dropped": 3,
                    "buffered": 0,
                    "last_error": "HTTP 503",
                    "last_success_at": None,
                },
            }
        ]
    )
    header, row = table.splitlines()
    assert header.split() == [
        "ID",
        "STATE",
        "DELIVERED",
        "DROPPED",
        "BUFFERED",
        "URL",
        "LAST",
        "ERROR",
    ]
    assert row.split() == [
        "7",
        "degraded",
        "120",
        "3",
        "0",
        "https://u:***@h.example/",
        "HTTP",
        "503",
    ]


def namespace(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**{"api": None, "auth_key": None, "data_dir": None, **values})


def test_api_url_and_key_resolution_order(tmp_path: Path) -> None:
    assert resolve_api_url(namespace(), {}) == "http://127.0.0.1:8001"
    assert resolve_api_url(namespace(), {"LOGPLEX_API_URL": "http://e:1/"}) == "http://e:1"
    assert resolve_api_url(namespace(api="http://a:2"), {"LOGPLEX_API_URL": "x"}) == "http://a:2"

    (tmp_path / "auth-key").write_text("from-file\n")
    env = {"LOGPLEX_DATA_DIR": str(tmp_path)}
    assert resolve_auth_key(namespace(), env) == "from-file"
    assert resolve_auth_key(namespace(), {**env, "LOGPLEX_AUTH_KEY": "from-env"}) == "from-env"
    assert resolve_auth_key(namespace(auth_key="flag"), {"LOGPLEX_AUTH_KEY": "e"}) == "flag"
    with pytest.raises(CliError, match=r"no API key.*auth-key does not exist"):
        resolve_auth_key(namespace(data_dir=str(tmp_path / "none")), {})


TOKEN_NAME_CHARS = "".join(chr(c) for c in range(33, 127) if chr(c) not in "[]")
PROCID_CHARS = "".join(chr(c) for c in range(33, 127))


@hypothesis.given(
    ts_us=st.integers(min_value=0, max_value=253402300799999999),
    source=st.text(TOKEN_NAME_CHARS, min_size=1, max_size=48),
    ps=st.text(PROCID_CHARS, min_size=1, max_size=128),
    msg=st.binary(max_size=200).filter(lambda b: b"\n" not in b),
)
def test_every_tail_line_the_router_writes_splits_back(
    ts_us: int, source: str, ps: str, msg: bytes
) -> None:
    # Token names (the source) have no brackets or spaces and PROCID no spaces (store and
    # RFC 5424 rules), so the first '[' and the first ']: ' are always the separators.
    message = (ts_us, 190, source.encode(), ps.encode(), msg)
    line = tail_line(message)
    assert line.endswith(b"\n")
    assert split_tail_line(line[:-1]) == TailLine(
        format_ts(ts_us), source.encode(), ps.encode(), msg
    )
