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

from logplex.codecs.octet import OctetFrameDecoder

LOGPLEX = str(Path(sys.executable).with_name("logplex"))
LOGSHIM = str(Path(sys.executable).with_name("logshim"))


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX_", "LOGSHIM_"))}
    env.pop("PYTHONUNBUFFERED", None)
    env["LOGPLEX_DATA_DIR"] = str(tmp_path / "data")
    return env


LISTENERS = ("http", "shim", "syslog")


@asynccontextmanager
async def logplex_serve(
    tmp_path: Path, addresses: dict[str, str] | None = None
) -> AsyncIterator[dict[str, str]]:
    """Run the router (on port 0, or on ``addresses`` again); yield the CLI environment plus
    each listener's address under its name (``shim``, ``http``, ``syslog``)."""
    env = cli_env(tmp_path)
    where = addresses or dict.fromkeys(LISTENERS, "127.0.0.1:0")
    process = await trio.lowlevel.open_process(
        [LOGPLEX, "serve", *(f"--{name}={where[name]}" for name in LISTENERS)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    try:
        bound = await read_listening(process.stdout, 3)
        yield {**env, "LOGPLEX_API_URL": f"http://{bound['http']}", **bound}
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
        await process.stdout.aclose()


async def cli(env: dict[str, str], *args: str) -> str:
    done = await trio.run_process(
        [LOGPLEX, *args],
        env={k: v for k, v in env.items() if k not in LISTENERS},
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


async def syslog_receiver(
    listeners: list[trio.SocketListener], received: list[bytes], task_status: trio.TaskStatus[None]
) -> None:
    """A syslog TCP drain's receiver: collects each frame's MSG, across router restarts."""
    task_status.started()

    async def serve(stream: trio.SocketStream) -> None:
        decoder = OctetFrameDecoder(max_frame_bytes=20_000, policy="strict")
        async for chunk in stream:
            decoder.feed(chunk)
            # <PRI>1 TS HOST SOURCE PS - - MSG (LF)
            received.extend(frame.rstrip(b"\n").split(b" ", 7)[7] for frame in decoder.frames())

    await trio.serve_listeners(serve, listeners)


@pytest.mark.slow
async def test_a_router_restart_does_not_cut_a_connected_shim_off(tmp_path: Path) -> None:
    """DESIGN 8: the restarted router does not know the shim's stream, answers READY acked 0
    and takes the shim's resend as the start of the stream: no line is lost (duplicates
    are allowed), nothing is refused."""
    lines = 1500
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        drain_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        drain_port = drain_listeners[0].socket.getsockname()[1]
        await nursery.start(syslog_receiver, drain_listeners, received)
        async with logplex_serve(tmp_path) as env:
            await cli(env, "channels", "create", "myapp")
            token = (await cli(env, "tokens", "add", "myapp", "app")).strip()
            await cli(env, "drains", "add", "myapp", f"syslog://127.0.0.1:{drain_port}")
            addresses = {name: env[name] for name in LISTENERS}
            code = (
                "import sys, time\n"
                f"for n in range({lines}):\n"
                "    print(f'line {n}', flush=True)\n"
                "    time.sleep(0.004)\n"
            )
            shim = await trio.lowlevel.open_process(
                [
                    *(LOGSHIM, "--url", f"tcp://{env['shim']}", "--token", token),
                    *("--ps", "web.1", "--no-tee", "--flush-timeout", "60"),
                    *("--", sys.executable, "-c", code),
                ],
                stderr=subprocess.PIPE,
                env={k: v for k, v in env.items() if k not in LISTENERS},
            )
            assert shim.stderr is not None
            with trio.fail_after(60):
                while len(received) < 200:  # the shim is connected and shipping
                    await trio.sleep(0.02)
        # The first router is gone; the shim keeps running and buffering.
        async with logplex_serve(tmp_path, addresses):
            with trio.fail_after(120):
                await shim.wait()
                stderr = b""
                while chunk := await shim.stderr.receive_some(65536):
                    stderr += chunk
            await shim.stderr.aclose()
            assert shim.returncode == 0, stderr
            with trio.fail_after(60):
                while b"Process exited with status 0" not in received:
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert b"bad_frame" not in stderr, stderr
    assert b"not delivered" not in stderr, stderr
    app_lines = [m for m in received if m.startswith(b"line ")]
    assert set(app_lines) == {b"line %d" % n for n in range(lines)}  # none lost
    assert not [m for m in received if b"L13" in m or b"L12" in m]
