"""End to end: the real ``logshim`` shipping to the real ``logplex serve`` (DESIGN 4 and 6).

The router is started on loopback port 0 with its own data dir; the channel and tokens are
made with the ``logplex`` CLI, and what the router holds is read back with ``logplex tail``,
so every piece runs as a user would run it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from processes import read_listening

LOGPLEX = str(Path(sys.executable).with_name("logplex"))
LOGSHIM = str(Path(sys.executable).with_name("logshim"))


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX_", "LOGSHIM_"))}
    env.pop("PYTHONUNBUFFERED", None)
    env["LOGPLEX_DATA_DIR"] = str(tmp_path / "data")
    return env


@asynccontextmanager
async def logplex_serve(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Run the router; yield the CLI environment plus ``shim`` (its shim listener)."""
    env = cli_env(tmp_path)
    process = await trio.lowlevel.open_process(
        [LOGPLEX, "serve", *(f"--{name}=127.0.0.1:0" for name in ("http", "shim", "syslog"))],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    try:
        addresses = await read_listening(process.stdout, 3)
        yield {**env, "LOGPLEX_API_URL": f"http://{addresses['http']}", "shim": addresses["shim"]}
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
        await process.stdout.aclose()


async def cli(env: dict[str, str], *args: str) -> str:
    done = await trio.run_process(
        [LOGPLEX, *args],
        env={k: v for k, v in env.items() if k != "shim"},
        capture_stdout=True,
        capture_stderr=True,
    )
    return str(done.stdout.decode())


@pytest.mark.slow
async def test_lines_and_notices_reach_the_router_under_their_sources(tmp_path: Path) -> None:
    async with logplex_serve(tmp_path) as env:
        await cli(env, "channels", "create", "myapp")
        app_token = (await cli(env, "tokens", "add", "myapp", "app")).strip()
        platform_token = (await cli(env, "tokens", "add", "myapp", "heroku")).strip()
        code = "import sys\nfor n in range(300): print(f'line {n}')\nprint('oops', file=sys.stderr)"
        shim = await trio.run_process(
            [
                *(LOGSHIM, "--url", f"tcp://{env['shim']}", "--ps", "web.1", "--no-tee"),
                *("--", sys.executable, "-c", code, "--", "ignored"),
            ],
            # Tokens from the environment: in argv they would earn a warning on stderr.
            env={
                **os.environ,
                "LOGPLEX_TOKEN": app_token,
                "LOGPLEX_PLATFORM_TOKEN": platform_token,
            },
            capture_stderr=True,
            check=False,
        )
        assert shim.returncode == 0, shim.stderr
        assert shim.stderr == b""  # nothing lost, nothing to complain about
        with trio.fail_after(10):
            while True:
                tail = await cli(env, "tail", "myapp", "--json", "-n", "1000")
                messages = [json.loads(line) for line in tail.splitlines()]
                if any(m.get("msg", "").startswith("Process exited") for m in messages):
                    break
                await trio.sleep(0.1)
    by_source: dict[str, list[str]] = {}
    for message in messages:
        assert message["ps"] == "web.1"
        by_source.setdefault(message["source"], []).append(message["msg"])
    app_lines = by_source["app"]
    # stdout keeps its order; the stderr line may land anywhere between them.
    assert [m for m in app_lines if m != "oops"] == [f"line {n}" for n in range(300)]
    assert app_lines.count("oops") == 1
    one_line_code = code.replace("\n", " ")  # a notice is one line
    assert by_source["heroku"] == [
        f"Starting process with command `{sys.executable} -c {one_line_code} -- ignored`",
        "Process exited with status 0",
    ]
