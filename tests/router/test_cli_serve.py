"""The ``logplex`` CLI against a real ``logplex serve`` subprocess on port 0.

The key comes from the router's own ``DATA_DIR/auth-key`` (no flag), lines enter through
``POST /logs`` and the real ``logshim``, and everything is read back through the CLI: the
path an operator and a developer take, end to end.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from controlplane_helpers import LOGPLEX, LOGSHIM, ServeProcess, logplex_serve

pytestmark = pytest.mark.slow  # real subprocesses, seconds each

TS_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00"


async def cli(router: ServeProcess, *args: str, status: int = 0) -> str:
    result = await trio.run_process(
        [LOGPLEX, *args], capture_stdout=True, capture_stderr=True, check=False, env=router.env
    )
    assert result.returncode == status, result.stderr
    return result.stdout.decode() if status == 0 else result.stderr.decode()


async def post_lines(router: ServeProcess, token: str, ps: str, *lines: str) -> None:
    frames = b""
    for line in lines:
        payload = f"<190>1 2026-11-27T20:39:33.123456+00:00 h {token} {ps} - - {line}".encode()
        frames += b"%d %b" % (len(payload), payload)
    credentials = base64.b64encode(f"token:{token}".encode()).decode()
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{router.http_url}/logs",
            content=frames,
            headers={
                "Authorization": f"Basic {credentials}",
                "Content-Type": "application/logplex-1",
            },
        )
    assert response.status_code == 204, response.text


async def test_admin_commands_with_the_key_from_the_data_dir(tmp_path: Path) -> None:
    async with logplex_serve(tmp_path) as router:
        assert (router.data_dir / "auth-key").stat().st_mode & 0o077 == 0
        created = json.loads(
            await cli(router, "channels", "create", "web", "--token", "app", "--json")
        )
        token = created["tokens"]["app"]
        assert await cli(router, "channels", "list") == "web\n"
        router_token = (await cli(router, "tokens", "add", "web", "router")).strip()
        assert router_token.startswith("t.")
        assert router_token != token

        added = await cli(router, "drains", "add", "web", "syslog://127.0.0.1:9")
        drain_id = re.fullmatch(r"drain (\d+)  d\.\S+  syslog://127\.0\.0\.1:9\n", added)
        assert drain_id is not None
        table = await cli(router, "drains", "list", "web")
        assert table.splitlines()[1].split()[0] == drain_id[1]
        error = await cli(router, "drains", "add", "web", "syslog://127.0.0.1:9", status=1)
        assert "409" in error
        await cli(router, "drains", "remove", "web", drain_id[1])

        await post_lines(router, token, "web.1", "first", "second")
        assert await cli(router, "tail", "web", "-n", "1") == (
            "2026-11-27T20:39:33.123456+00:00 app[web.1]: second\n"
        )
        await cli(router, "channels", "delete", "web")
        assert "404" in await cli(router, "channels", "show", "web", status=1)


async def test_tail_follow_then_ctrl_c(tmp_path: Path) -> None:
    async with logplex_serve(tmp_path) as router:
        created = json.loads(await cli(router, "channels", "create", "c", "--json"))
        token = created["tokens"]["app"]
        await post_lines(router, token, "web.1", "before")
        process = await trio.lowlevel.open_process(
            [LOGPLEX, "tail", "c", "-t", "-p", "web"], stdout=subprocess.PIPE, env=router.env
        )
        assert process.stdout is not None
        try:
            received = b""
            with trio.fail_after(20):
                while not received.endswith(b"before\n"):
                    received += await process.stdout.receive_some(4096)
                await post_lines(router, token, "worker.1", "filtered out")
                await post_lines(router, token, "web.2", "live")
                while not received.endswith(b"live\n"):
                    received += await process.stdout.receive_some(4096)
            assert received == (
                b"2026-11-27T20:39:33.123456+00:00 app[web.1]: before\n"
                b"2026-11-27T20:39:33.123456+00:00 app[web.2]: live\n"
            )
            process.send_signal(signal.SIGINT)
            with trio.fail_after(10):
                assert await process.wait() == 0
        finally:  # a failure above must not leak the pipe or the process
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()


async def test_readme_quick_start(tmp_path: Path) -> None:
    """The five commands of README's quick start, with port 0 instead of the defaults."""
    async with logplex_serve(tmp_path) as router:
        await cli(router, "channels", "create", "myapp")
        token = (await cli(router, "tokens", "add", "myapp", "app")).strip()
        shim_url = f"tcp://{router.shim_address}"
        command = ["--", "echo", "hello, logplex"]
        shim = await trio.run_process(
            [LOGSHIM, "--url", shim_url, "--ps", "web.1", *command],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**router.env, "LOGPLEX_TOKEN": token},
        )
        assert shim.returncode == 0, shim.stderr
        assert b"token" not in shim.stderr, shim.stderr  # no warning: the token is not in argv
        tailed = (await cli(router, "tail", "myapp")).splitlines()
        assert re.fullmatch(TS_RE + r" app\[web\.1\]: hello, logplex", tailed[1]), tailed
        assert tailed[0].endswith("app[web.1]: Starting process with command `echo hello, logplex`")
        assert tailed[2].endswith("app[web.1]: Process exited with status 0")
