"""End to end: a real ``logshim`` across a SIGKILL of the real ``logplex serve --no-spool``.

DESIGN 8, first bullet: a restarted router that does not know the shim's stream answers
READY ``acked`` 0 and takes the shim's resend as the start of the stream, so a restart never
cuts a shim off; without the spool, what the killed router held in memory is gone with it.
The shim backs off while the router is down and says so once, not once per attempt.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from processes import read_listening

LOGPLEX = str(Path(sys.executable).with_name("logplex"))
LOGSHIM = str(Path(sys.executable).with_name("logshim"))
LISTENERS = ("http", "shim", "syslog")
LINES = 400  # 50 lines/s for 8 s
# Numbered lines on stdout; beside them, the app's own record of when it wrote each.
APP = (
    "import sys, time\n"
    "with open(sys.argv[1], 'w') as written:\n"
    f"    for n in range({LINES}):\n"
    "        print(f'line {n}', flush=True)\n"
    "        written.write(f'{n} {time.time():.6f}\\n')\n"
    "        written.flush()\n"
    "        time.sleep(0.02)\n"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli_env(tmp_path: Path, addresses: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX_", "LOGSHIM_"))}
    env.pop("PYTHONUNBUFFERED", None)
    env["LOGPLEX_DATA_DIR"] = str(tmp_path / "data")
    env["LOGPLEX_API_URL"] = f"http://{addresses['http']}"
    return env


@asynccontextmanager
async def router(
    tmp_path: Path, addresses: dict[str, str], log_name: str
) -> AsyncIterator[trio.Process]:
    """``logplex serve --no-spool`` on ``addresses``, with the test's data dir; stopped with
    SIGKILL at the end unless the test killed it already."""
    with (tmp_path / log_name).open("wb") as log:
        process = await trio.lowlevel.open_process(
            [LOGPLEX, "serve", "--no-spool", *(f"--{n}={addresses[n]}" for n in LISTENERS)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=cli_env(tmp_path, addresses),
        )
    assert process.stdout is not None
    try:
        bound = await read_listening(process.stdout, 3)
        assert bound == addresses
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with trio.fail_after(30):
            await process.wait()
        await process.stdout.aclose()


async def cli(env: dict[str, str], *args: str) -> str:
    done = await trio.run_process([LOGPLEX, *args], env=env, capture_stdout=True)
    return str(done.stdout.decode())


async def history(env: dict[str, str]) -> list[str]:
    tail = await cli(env, "tail", "myapp", "--json", "-n", "1500")
    return [json.loads(line)["msg"] for line in tail.splitlines()]


def line_numbers(messages: list[str]) -> list[int]:
    return [int(m.split()[1]) for m in messages if m.startswith("line ")]


def written_since(record: Path, since_s: float) -> list[int]:
    """The lines the app wrote at or after ``since_s`` (wall clock), from its own record."""
    rows = (line.split() for line in record.read_text().splitlines())
    return [int(n) for n, at in rows if float(at) >= since_s]


async def wait_for_history(env: dict[str, str], done: object, timeout_s: float = 60.0) -> list[str]:
    """Poll the router's history until ``done(messages)`` holds."""
    assert callable(done)
    with trio.fail_after(timeout_s):
        while not done(messages := await history(env)):
            await trio.sleep(0.1)
    return messages


@pytest.mark.slow
async def test_a_sigkilled_router_restarted_on_its_ports_gets_the_shims_new_lines(
    tmp_path: Path,
) -> None:
    addresses = {name: f"127.0.0.1:{free_port()}" for name in LISTENERS}
    env = cli_env(tmp_path, addresses)
    shim_stderr = tmp_path / "shim.stderr"
    written = tmp_path / "written"
    async with router(tmp_path, addresses, "router1.log") as first:
        await cli(env, "channels", "create", "myapp")
        token = (await cli(env, "tokens", "add", "myapp", "app")).strip()
        with shim_stderr.open("wb") as stderr:
            shim = await trio.lowlevel.open_process(
                [
                    *(LOGSHIM, "--url", f"tcp://{addresses['shim']}", "--ps", "web.1"),
                    *("--no-tee", "--flush-timeout", "30", "--", sys.executable, "-c", APP),
                    str(written),
                ],
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                env={**env, "LOGPLEX_TOKEN": token},
            )
        try:
            await wait_for_history(env, lambda messages: len(line_numbers(messages)) >= 100)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            # The router is gone: the shim notices, the app writes on, the shim retries.
            with trio.fail_after(30):
                while b"failed" not in shim_stderr.read_bytes():
                    await trio.sleep(0.05)
            await trio.sleep(1.5)  # the outage: several reconnect attempts fail
            async with router(tmp_path, addresses, "router2.log"):
                restarted_at = time.time()
                with trio.fail_after(60):
                    assert await shim.wait() == 0, shim_stderr.read_bytes()
                messages = await wait_for_history(
                    env, lambda messages: "Process exited with status 0" in messages
                )
        finally:
            if shim.returncode is None:
                shim.kill()
                await shim.wait()
    stderr = shim_stderr.read_bytes()
    numbers = set(line_numbers(messages))
    assert numbers, "no app line reached the restarted router"
    # Every line written once the new router listened reached it ...
    missing = sorted(set(written_since(written, restarted_at)) - numbers)
    assert missing == [], f"lines written after the restart missing from its history: {missing}"
    # ... and what it holds is the rest of the stream from the shim's resend on: no hole.
    assert numbers == set(range(min(numbers), LINES)), sorted(set(range(LINES)) - numbers)
    # The shim was not refused and lost nothing; it said each thing once.
    assert b"bad_frame" not in stderr, stderr
    assert b"not delivered" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == len(set(lines)), f"a line repeated on the shim's stderr: {stderr!r}"
    assert sum(b"failed: " in line for line in lines) <= 2, stderr
    assert sum(b" again after " in line for line in lines) == 1, stderr
