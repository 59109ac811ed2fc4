"""A log-shuttle-shaped ``POST /logs`` lands in a real ``logplex serve`` (DESIGN 3).

log-shuttle (Heroku's HTTP log shipper) posts ``application/logplex-1`` batches of frames
``LEN <190>1 TS shuttle t.TOKEN shuttle - - line`` with Basic auth ``token:t.TOKEN`` and the
``Logplex-Msg-Count`` / ``Logplex-Frame-Id`` headers, optionally gzip-compressed. The router
runs as a real subprocess on port 0; the channel is created and the lines read back with the
real ``logplex`` console script, so what is checked is what a user would see.
"""

from __future__ import annotations

import base64
import gzip
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from processes import read_listening

pytestmark = pytest.mark.slow  # real subprocesses, seconds each

LOGPLEX = str(Path(sys.executable).with_name("logplex"))
TS = "2026-11-27T20:39:33.123456Z"  # log-shuttle writes RFC 3339 in UTC with a Z


@dataclass
class Router:
    http_url: str
    env: dict[str, str]


@asynccontextmanager
async def logplex_serve(tmp_path: Path) -> AsyncIterator[Router]:
    """``logplex serve`` on loopback port 0; yields once the ``listening`` lines are out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEX_")}
    env.pop("PYTHONUNBUFFERED", None)
    env["LOGPLEX_DATA_DIR"] = str(tmp_path / "data")
    process = await trio.lowlevel.open_process(
        [
            LOGPLEX,
            "serve",
            "--http",
            "127.0.0.1:0",
            "--shim",
            "127.0.0.1:0",
            "--syslog",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    try:
        addresses = await read_listening(process.stdout, 3)
        http_url = f"http://{addresses['http']}"
        router = Router(http_url, {**env, "LOGPLEX_API_URL": http_url})
        async with httpx.AsyncClient() as client:
            with trio.fail_after(10):
                while (await client.get(f"{router.http_url}/healthcheck")).status_code != 200:
                    await trio.sleep(0.05)
        yield router
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
        await process.stdout.aclose()


async def cli(router: Router, *args: str) -> bytes:
    result = await trio.run_process(
        [LOGPLEX, *args], capture_stdout=True, capture_stderr=True, check=False, env=router.env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def shuttle_frame(token: str, line: str) -> bytes:
    payload = f"<190>1 {TS} shuttle {token} shuttle - - {line}".encode()
    return b"%d %b" % (len(payload), payload)


def shuttle_headers(token: str, count: int) -> dict[str, str]:
    credentials = base64.b64encode(f"token:{token}".encode()).decode()
    return {
        "Authorization": f"Basic {credentials}",
        "Content-Type": "application/logplex-1",
        "Logplex-Msg-Count": str(count),
        "Logplex-Frame-Id": uuid.uuid4().hex.upper(),
        "User-Agent": "log-shuttle/0.17.0 (go1.21; linux; amd64)",
    }


async def test_log_shuttle_batches_land_and_tail_back(tmp_path: Path) -> None:
    async with logplex_serve(tmp_path) as router:
        await cli(router, "channels", "create", "shuttled", "--token", "app")
        shown = await cli(router, "channels", "show", "shuttled", "--json")
        token = httpx.Response(200, content=shown).json()["tokens"]["app"]

        lines = ["hello from log-shuttle", "second line", "ünïcode ✓"]
        plain = b"".join(shuttle_frame(token, line) for line in lines)
        zipped = gzip.compress(shuttle_frame(token, "compressed batch"))
        async with httpx.AsyncClient(base_url=router.http_url) as client:
            response = await client.post(
                "/logs", content=plain, headers=shuttle_headers(token, len(lines))
            )
            assert response.status_code == 204, response.text
            response = await client.post(
                "/logs",
                content=zipped,
                headers={**shuttle_headers(token, 1), "Content-Encoding": "gzip"},
            )
            assert response.status_code == 204, response.text
            # A batch whose count disagrees is refused whole.
            response = await client.post(
                "/logs", content=plain, headers=shuttle_headers(token, len(lines) + 1)
            )
            assert response.status_code == 400

        # Channel and source come from the credentials; PROCID ("shuttle") is the ps.
        tailed = await cli(router, "tail", "shuttled")
        assert tailed.decode() == (
            "2026-11-27T20:39:33.123456+00:00 app[shuttle]: hello from log-shuttle\n"
            "2026-11-27T20:39:33.123456+00:00 app[shuttle]: second line\n"
            "2026-11-27T20:39:33.123456+00:00 app[shuttle]: ünïcode ✓\n"
            "2026-11-27T20:39:33.123456+00:00 app[shuttle]: compressed batch\n"
        )
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{router.http_url}/metrics")).text
        assert 'logplex_ingest_messages_total{protocol="http"} 4.0' in metrics
