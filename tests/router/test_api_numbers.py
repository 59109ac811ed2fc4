"""Numeric request fields refuse what ``int`` cannot convert (DESIGN section 3).

``str.isdigit`` accepts Unicode digits such as ``²`` that ``int`` refuses, and ``int`` refuses
strings of more than 4,300 digits: either used to escape as a 500. Each field now answers
the client's error with its own status and a message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from controlplane_helpers import ADMIN, basic, running_api

from logplex.api.numbers import parse_whole_number

HUGE = "9" * 4301  # one digit past what int(str) converts
SUPERSCRIPT_TWO = "\u00b2"  # str.isdigit() is True, int() refuses it


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("100", 100),
        ("007", 7),
        ("9" * 4300, int("9" * 4300)),
        (HUGE, None),
        (SUPERSCRIPT_TWO, None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: isdigit and int() accepts it, we do not
        ("", None),
        (" 5", None),
        ("-1", None),
        ("+1", None),
        ("1_000", None),
        ("1e3", None),
    ],
)
def test_parse_whole_number(text: str, expected: int | None) -> None:
    assert parse_whole_number(text) == expected


def test_parse_whole_number_honours_a_smaller_digit_limit() -> None:
    assert parse_whole_number("123", max_digits=3) == 123
    assert parse_whole_number("1234", max_digits=3) is None


@pytest.mark.parametrize("num", [HUGE, SUPERSCRIPT_TWO], ids=["4301-digits", "superscript"])
async def test_logs_num_that_is_not_a_number_is_400(tmp_path: Path, num: str) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", ["app"])
        response = await api.client.get(f"/v3/channels/c/logs?num={quote(num)}", headers=ADMIN)
        assert response.status_code == 400, response.text
        assert "num must be" in response.json()["error"]


@pytest.mark.parametrize("num", [HUGE, SUPERSCRIPT_TWO], ids=["4301-digits", "superscript"])
async def test_session_num_that_is_not_a_number_is_400(tmp_path: Path, num: str) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", ["app"])
        response = await api.client.post(
            "/v3/sessions", json={"channel_id": "c", "num": num}, headers=ADMIN
        )
        assert response.status_code == 400, response.text
        assert "num must be" in response.json()["error"]


@pytest.mark.parametrize("count", [HUGE, SUPERSCRIPT_TWO], ids=["4301-digits", "superscript"])
async def test_msg_count_that_is_not_a_number_is_400(tmp_path: Path, count: str) -> None:
    async with running_api(tmp_path) as api:
        body = await api.create_channel("c", ["app"])
        tokens = body["tokens"]
        assert isinstance(tokens, dict)
        payload = b"<190>1 2026-11-27T20:39:33.123456+00:00 host t.x web.1 - - hello"
        response = await api.client.post(
            "/logs",
            content=b"%d %b" % (len(payload), payload),
            headers={
                "Content-Type": "application/logplex-1",
                "Logplex-Msg-Count": count.encode(),  # type: ignore[dict-item]
                **basic("token", tokens["app"]),
            },
        )
        assert response.status_code == 400, response.text
        assert "Logplex-Msg-Count" in response.json()["error"]
        assert api.router.history("c") == []


@pytest.mark.parametrize("drain_id", [HUGE, SUPERSCRIPT_TWO, "1" + SUPERSCRIPT_TWO])
async def test_drain_id_that_is_not_a_number_is_404_like_any_unknown_id(
    tmp_path: Path, drain_id: str
) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        path = f"/v3/channels/c/drains/{quote(drain_id)}"
        response = await api.client.put(path, json={"url": "syslog://z.example"}, headers=ADMIN)
        assert response.status_code == 404, response.text
        assert "drain ids are integers" in response.json()["error"]
        response = await api.client.delete(path, headers=ADMIN)
        assert response.status_code == 404, response.text
