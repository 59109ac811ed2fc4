"""Black box: start-up of the real ``logshim`` (DESIGN section 6).

Secrets stay with the shim (never in the app's environment; tokens from files), start-up
problems never keep the app from running, and lifecycle notices are stamped and worded
after what actually happened.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from shim_router_double import RouterDouble
from shim_run import run_shim, start_shim

from logplex.codecs.records import KIND_NOTICE, KIND_STDOUT

StartRouter = Callable[..., Awaitable[RouterDouble]]
SECRETS = (
    "LOGPLEX_TOKEN",
    "LOGPLEX_TOKEN_FILE",
    "LOGPLEX_PLATFORM_TOKEN",
    "LOGPLEX_PLATFORM_TOKEN_FILE",
)


def environment_names(output: bytes) -> set[str]:
    return {entry.split(b"=", 1)[0].decode() for entry in output.split(b"\0") if entry}


async def test_the_app_inherits_no_token(start_router: StartRouter, tmp_path: Path) -> None:
    router = await start_router()
    platform_file = tmp_path / "platform"
    platform_file.write_text("t.platform\n")
    env = {
        "LOGPLEX_URL": router.url,
        "LOGPLEX_TOKEN": "t.channel",
        "LOGPLEX_PLATFORM_TOKEN_FILE": str(platform_file),
        "APP_SETTING": "kept",
    }
    # The app dumps its environment NUL-separated, as /proc/self/environ holds it.
    result = await run_shim(["--ps", "web.1"], ["cat", "/proc/self/environ"], env=env)
    assert result.returncode == 0
    names = environment_names(result.stdout)
    assert not names & set(SECRETS)
    assert {"APP_SETTING", "LOGPLEX_URL", "PATH"} <= names
    # The shim itself did read them.
    hello = router.only_stream().hello
    assert (hello.token, hello.platform_token) == ("t.channel", "t.platform")
    assert result.stderr == b""


async def test_tokens_from_files(start_router: StartRouter, tmp_path: Path) -> None:
    router = await start_router()
    token_file, platform_file = tmp_path / "token", tmp_path / "platform"
    token_file.write_text("t.from-file\n")
    platform_file.write_text("  t.platform-file  \n")
    args = ["--url", router.url, "--token-file", str(token_file), "--ps", "web.1"]
    args += ["--platform-token-file", str(platform_file)]
    result = await run_shim(args, ["echo", "hello"])
    assert (result.returncode, result.stderr) == (0, b"")
    log = router.only_stream()
    assert (log.hello.token, log.hello.platform_token) == ("t.from-file", "t.platform-file")
    assert log.lines(KIND_STDOUT) == [b"hello"]


async def test_a_token_in_argv_works_and_is_warned_about_once(start_router: StartRouter) -> None:
    router = await start_router()
    result = await run_shim(
        ["--url", router.url, "--token", "t.argv", "--ps", "web.1"], ["echo", "hello"]
    )
    assert result.returncode == 0
    assert router.only_stream().hello.token == "t.argv"
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1
    assert b"--token" in warnings[0]
    assert b"--token-file" in warnings[0]


async def test_a_malformed_url_still_runs_the_app(tmp_path: Path) -> None:
    for args, env in [
        (["--url", "http://router:80", "--token", "t.x"], None),
        ([], {"LOGPLEX_URL": "router:6001", "LOGPLEX_TOKEN": "t.x"}),
        (["--url", "tcp://127.0.0.1:9"], None),  # no token anywhere
    ]:
        result = await run_shim(args, ["sh", "-c", "echo ran; exit 3"], env=env)
        assert (result.returncode, result.stdout) == (3, b"ran\n"), args
        assert b"without shipping" in result.stderr
        assert b"logshim: error" not in result.stderr


async def test_an_invalid_ps_falls_back_to_the_hostname(start_router: StartRouter) -> None:
    router = await start_router()
    result = await run_shim(
        ["--url", router.url, "--token", "t.x", "--ps", "web 1"], ["echo", "hello"]
    )
    assert result.returncode == 0
    assert b"'web 1'" in result.stderr
    log = router.only_stream()
    assert log.hello.ps == os.uname().nodename
    assert log.lines(KIND_STDOUT) == [b"hello"]
    notices = log.lines(KIND_NOTICE)
    assert notices[0].startswith(b"Starting process with command `echo hello`")
    assert b"'web 1'" in notices[1]
    assert notices[-1] == b"Process exited with status 0"


async def test_starting_process_is_stamped_at_spawn(start_router: StartRouter) -> None:
    router = await start_router()
    # sh writes at once, well before the shim has imported trio.
    result = await run_shim(
        ["--url", router.url, "--token", "t.x", "--ps", "web.1"], ["sh", "-c", "echo first"]
    )
    assert result.returncode == 0
    records = router.only_stream().records()
    starting = next(r for r in records if r[1] == KIND_NOTICE)
    first_line = next(r for r in records if r[1] == KIND_STDOUT)
    assert starting[2].startswith(b"Starting process")
    assert first_line[2] == b"first"
    assert starting[0] <= first_line[0]
    timestamps = [r[0] for r in records]
    assert timestamps == sorted(timestamps)


async def test_sigint_grace_notices_name_sigint(tmp_path: Path, start_router: StartRouter) -> None:
    router = await start_router()
    shim = await start_shim(
        ["--url", router.url, "--token", "t.x", "--ps", "web.1", "--grace", "1", "--no-tee"],
        ["sh", "-c", "trap '' INT; echo ready; sleep 30"],
        tmp_path,
    )
    await router.wait_for(
        lambda: router.streams and b"ready" in router.only_stream().lines(KIND_STDOUT)
    )
    shim.send(signal.SIGINT)
    assert await shim.wait() == 128 + signal.SIGKILL
    assert router.only_stream().lines(KIND_NOTICE)[1:] == [
        b"Stopping all processes with SIGINT",
        b"Error R12 (Exit timeout) -> At least one process failed to exit within 1 seconds "
        b"of SIGINT",
        b"Stopping remaining processes with SIGKILL",
        b"Process exited with status 137",
    ]
