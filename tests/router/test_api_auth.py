"""API auth edge cases and the rate-limited log of refused authentication (DESIGN section 3).

Credentials that are not valid base64 or UTF-8 are refused like wrong ones (401), and a
client hammering with bad credentials costs the router's log at most one line per interval.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from controlplane_helpers import ADMIN, running_api

from logplex.api.auth_failures import AuthFailures
from logplex.api.base import RefusalLog

HOSTILE_AUTHORIZATION = [
    b"Basic \xc3\xa9\xff\xfe",  # non-ASCII bytes where base64 belongs
    b"Basic dG9rZW46\xe9",  # valid base64 start, then a latin-1 byte
    b"Basic //79",  # base64 of bytes that are not UTF-8
    b"Bearer \xff\xfe",  # a key that cannot match
]


@pytest.mark.parametrize("authorization", HOSTILE_AUTHORIZATION)
async def test_undecodable_credentials_are_401_not_500(
    tmp_path: Path, authorization: bytes
) -> None:
    # running_api fails the test if the app raised (hypercorn logs a traceback, answers 500).
    async with running_api(tmp_path) as api:
        await api.create_channel("app1", ["app"])
        headers = {"Authorization": authorization}
        admin = await api.client.get("/v3/channels", headers=headers)
        assert admin.status_code == 401, admin.text
        assert admin.headers["www-authenticate"] == "Basic realm=Logplex"
        ingest = await api.client.post(
            "/logs",
            content=b"",
            headers={**headers, "Content-Type": "application/logplex-1"},
        )
        assert ingest.status_code == 401, ingest.text
        assert ingest.headers["www-authenticate"] == "Basic realm=Logplex"


async def test_a_flood_of_refused_auth_writes_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="logplex.api")
    async with running_api(tmp_path) as api:
        # This flood is about the log line; the block after N failures has its own tests.
        api.state.auth_failures = AuthFailures(limit=1000)
        await api.create_channel("app1", ["app"])
        for number in range(60):
            headers = {"Authorization": b"Basic \xc3\xa9" if number % 2 else b"Bearer s3cr3t-guess"}
            response = await api.client.get("/v3/channels", headers=headers)
            assert response.status_code == 401
            response = await api.client.post(
                "/logs",
                content=b"",
                headers={**headers, "Content-Type": "application/logplex-1"},
            )
            assert response.status_code == 401
        assert (await api.client.get("/v3/channels", headers=ADMIN)).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "logplex.api"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("refused ")
    assert "127.0.0.1" in lines[0]
    assert "s3cr3t-guess" not in lines[0]  # the presented credential is never logged
    assert len(lines[0]) < 200


@pytest.mark.parametrize(
    ("times_s", "expected"),
    [
        ([0.0], ["refused x"]),
        ([0.0, 1.0, 59.9], ["refused x", None, None]),
        (
            [0.0, 1.0, 2.0, 60.0, 61.0],
            [
                "refused x",
                None,
                None,
                "refused x (and 2 more refusals since the last such line)",
                None,
            ],
        ),
        ([0.0, 60.0, 120.0], ["refused x", "refused x", "refused x"]),
        (
            [100.0, 100.0, 200.0],
            ["refused x", None, "refused x (and 1 more refusals since the last such line)"],
        ),
    ],
)
def test_refusal_log_allows_one_line_per_interval(
    times_s: list[float], expected: list[str | None]
) -> None:
    refusals = RefusalLog(interval_s=60.0)
    assert [refusals.refused(now_s, "x") for now_s in times_s] == expected
