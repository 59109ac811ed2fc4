"""The ``logplex`` console script, run as a real subprocess against a real API on loopback."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from controlplane_helpers import AUTH_KEY, ApiHarness, running_api

pytestmark = pytest.mark.slow  # real subprocesses, seconds each

LOGPLEX = str(Path(sys.executable).with_name("logplex"))
T0_US = int(datetime(2026, 11, 27, 20, 39, 33, tzinfo=UTC).timestamp()) * 1_000_000 + 123456
TOKEN = r"t\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def cli_env(api: ApiHarness | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEX_")}
    env.pop("PYTHONUNBUFFERED", None)
    if api is not None:
        env["LOGPLEX_API_URL"] = api.base_url
    env["LOGPLEX_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


async def run_cli(
    args: list[str], env: dict[str, str], *, expect_status: int = 0
) -> subprocess.CompletedProcess[bytes]:
    result = await trio.run_process(
        [LOGPLEX, *args], capture_stdout=True, capture_stderr=True, check=False, env=env
    )
    assert result.returncode == expect_status, (result.stdout, result.stderr)
    return result


def write_key_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "auth-key").write_text(AUTH_KEY + "\n")


async def test_channels_tokens_and_drains_round_trip(tmp_path: Path) -> None:
    write_key_file(tmp_path)  # the key comes from the data dir's auth-key file
    async with running_api(tmp_path) as api:
        env = cli_env(api, tmp_path)
        result = await run_cli(
            ["channels", "create", "shop", "--token", "app", "--token", "heroku"], env
        )
        lines = result.stdout.decode().splitlines()
        assert lines[0] == "channel shop"
        assert re.fullmatch(r"token  app     " + TOKEN, lines[1])
        assert re.fullmatch(r"token  heroku  " + TOKEN, lines[2])
        app_token = lines[1].split()[-1]
        info = api.router.lookup_token(app_token)
        assert info is not None
        assert info.channel == "shop"

        result = await run_cli(["channels", "show", "shop", "--json"], env)
        shown = json.loads(result.stdout)
        assert shown["channel"] == "shop"
        assert shown["tokens"]["app"] == app_token

        await run_cli(["channels", "create", "blog", "--json"], env)
        result = await run_cli(["channels", "list"], env)
        assert result.stdout == b"blog\nshop\n"

        result = await run_cli(["tokens", "add", "shop", "router"], env)
        assert re.fullmatch(TOKEN + "\n", result.stdout.decode())

        result = await run_cli(
            ["drains", "add", "shop", "https://user:secret@logs.example/in", "--json"], env
        )
        drain = json.loads(result.stdout)
        assert drain["url"] == "https://user:secret@logs.example/in"
        result = await run_cli(["drains", "list", "shop"], env)
        header, row = result.stdout.decode().splitlines()
        assert header.split()[:6] == ["ID", "STATE", "DELIVERED", "DROPPED", "BUFFERED", "URL"]
        assert row.split()[0] == str(drain["id"])
        assert "https://user:***@logs.example/in" in row
        assert "secret" not in row

        result = await run_cli(["drains", "remove", "shop", str(drain["id"])], env)
        assert result.stdout == f"removed drain {drain['id']} from channel shop\n".encode()
        result = await run_cli(["channels", "delete", "blog"], env)
        assert result.stdout == b"deleted channel blog\n"
        assert await api.store.list_channel_names() == ["shop"]


async def test_errors_are_clear_and_exit_1(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        env = cli_env(api, tmp_path, LOGPLEX_AUTH_KEY=AUTH_KEY)
        result = await run_cli(["channels", "show", "nope"], env, expect_status=1)
        assert (
            result.stderr
            == b"logplex: error: GET /v3/channels/nope: 404 channel 'nope' not found\n"
        )
        result = await run_cli(["drains", "add", "nope", "ftp://x"], env, expect_status=1)
        assert b"400" in result.stderr
        assert b"ftp" in result.stderr

        wrong = cli_env(api, tmp_path)
        result = await run_cli(["--auth-key", "wrong", "channels", "list"], wrong, expect_status=1)
        assert b"401" in result.stderr
        assert b"--auth-key" in result.stderr
        result = await run_cli(["channels", "list"], wrong, expect_status=1)
        assert b"no API key" in result.stderr


async def test_unreachable_router_names_the_url(tmp_path: Path) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = cli_env(None, tmp_path, LOGPLEX_AUTH_KEY="k")
    result = await run_cli(["--api", url, "channels", "list"], env, expect_status=1)
    stderr = result.stderr.decode()
    assert f"cannot connect to the logplex API at {url}" in stderr
    assert "may not be running" in stderr
    result = await run_cli(["channels", "list", "--api", url], env, expect_status=1)
    assert url in result.stderr.decode()


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    env = cli_env(None, tmp_path)
    result = await run_cli(["drains", "remove", "c", "notanumber"], env, expect_status=2)
    assert b"invalid int value" in result.stderr
    await run_cli([], env, expect_status=2)


def publish_sample(api: ApiHarness) -> None:
    api.router.publish(
        "c",
        [
            (T0_US, 190, b"app", b"web.1", b"one"),
            (T0_US + 1, 190, b"app", b"worker.1", b"two"),
            (T0_US + 2, 172, b"heroku", b"router", b"three"),
        ],
    )


async def test_tail_prints_like_heroku_logs(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", ["app"])
        publish_sample(api)
        env = cli_env(api, tmp_path, LOGPLEX_AUTH_KEY=AUTH_KEY)
        result = await run_cli(["tail", "c"], env)
        assert result.stdout == (
            b"2026-11-27T20:39:33.123456+00:00 app[web.1]: one\n"
            b"2026-11-27T20:39:33.123457+00:00 app[worker.1]: two\n"
            b"2026-11-27T20:39:33.123458+00:00 heroku[router]: three\n"
        )
        result = await run_cli(["tail", "c", "-n", "1", "-p", "worker"], env)
        assert result.stdout == b"2026-11-27T20:39:33.123457+00:00 app[worker.1]: two\n"
        result = await run_cli(["tail", "c", "--source", "heroku", "--json"], env)
        assert json.loads(result.stdout) == {
            "ts": "2026-11-27T20:39:33.123458+00:00",
            "source": "heroku",
            "ps": "router",
            "msg": "three",
        }
        result = await run_cli(["tail", "nope"], env, expect_status=1)
        assert b"422" in result.stderr


async def test_tail_follow_sees_live_lines_and_exits_0_on_ctrl_c(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", ["app"])
        publish_sample(api)
        env = cli_env(api, tmp_path, LOGPLEX_AUTH_KEY=AUTH_KEY)
        process = await trio.lowlevel.open_process(
            [LOGPLEX, "tail", "c", "-t", "-n", "1"], stdout=subprocess.PIPE, env=env
        )
        assert process.stdout is not None
        try:
            received = b""
            with trio.fail_after(20):
                while not received.endswith(b"three\n"):
                    received += await process.stdout.receive_some(4096)
                api.router.publish("c", [(T0_US + 3, 190, b"app", b"web.2", b"live")])
                while not received.endswith(b"live\n"):
                    received += await process.stdout.receive_some(4096)
            assert received == (
                b"2026-11-27T20:39:33.123458+00:00 heroku[router]: three\n"
                b"2026-11-27T20:39:33.123459+00:00 app[web.2]: live\n"
            )
            process.send_signal(signal.SIGINT)
            with trio.fail_after(10):
                assert await process.wait() == 0
        finally:  # a failure above must not leak the pipe or the process
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()


async def test_tail_colours_each_ps_on_a_terminal(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", ["app"])
        publish_sample(api)
        env = cli_env(api, tmp_path, LOGPLEX_AUTH_KEY=AUTH_KEY, TERM="xterm")
        env.pop("NO_COLOR", None)
        controller, terminal = pty.openpty()
        try:
            process = await trio.lowlevel.open_process(
                [LOGPLEX, "tail", "c"], stdout=terminal, env=env
            )
            os.close(terminal)
            with trio.fail_after(20):
                assert await process.wait() == 0
            output = b""
            while True:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO once the terminal side is closed and drained
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            os.close(controller)
        lines = output.replace(b"\r\n", b"\n").splitlines()
        assert lines == [
            b"\x1b[36m2026-11-27T20:39:33.123456+00:00 app[web.1]:\x1b[0m one",
            b"\x1b[33m2026-11-27T20:39:33.123457+00:00 app[worker.1]:\x1b[0m two",
            b"\x1b[32m2026-11-27T20:39:33.123458+00:00 heroku[router]:\x1b[0m three",
        ]


async def test_serve_and_sink_are_handed_to_their_modules(tmp_path: Path) -> None:
    env = cli_env(None, tmp_path)
    result = await run_cli(["serve", "--help"], env)
    assert result.stdout.startswith(b"usage: logplex serve")
    assert b"--max-drains-per-channel" in result.stdout
    result = await run_cli(["sink", "--help"], env)
    assert result.stdout.startswith(b"usage: logplex sink")
    assert b"--listen" in result.stdout
    result = await run_cli(["--help"], env)
    for command in (b"serve", b"sink", b"channels", b"tokens", b"drains", b"tail"):
        assert command in result.stdout


async def test_channels_create_again_never_revokes_tokens_unless_told(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        env = cli_env(api, tmp_path, LOGPLEX_AUTH_KEY=AUTH_KEY)
        first = json.loads(
            (
                await run_cli(
                    ["channels", "create", "c", "--token", "app", "--token", "heroku", "--json"],
                    env,
                )
            ).stdout
        )
        again = json.loads((await run_cli(["channels", "create", "c", "--json"], env)).stdout)
        assert again["tokens"] == first["tokens"]
        fresh = json.loads((await run_cli(["channels", "create", "new", "--json"], env)).stdout)
        assert list(fresh["tokens"]) == ["app"]
        narrowed = json.loads(
            (await run_cli(["channels", "create", "c", "--token", "app", "--json"], env)).stdout
        )
        assert narrowed["tokens"] == {"app": first["tokens"]["app"]}
        assert api.router.lookup_token(first["tokens"]["heroku"]) is None


async def test_drain_tables_mask_query_string_secrets(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", ["app"])
        env = cli_env(api, tmp_path, LOGPLEX_AUTH_KEY=AUTH_KEY)
        added = await run_cli(["drains", "add", "c", "https://logs.example/in?key=qs3cret"], env)
        assert added.stdout.decode().endswith("  https://logs.example/in?key=…\n")
        for command in (["drains", "list", "c"], ["channels", "show", "c"]):
            shown = (await run_cli(command, env)).stdout.decode()
            assert "https://logs.example/in?key=…" in shown
            assert "qs3cret" not in shown
        listed = json.loads((await run_cli(["drains", "list", "c", "--json"], env)).stdout)
        assert listed[0]["url"] == "https://logs.example/in?key=qs3cret"  # --json is whole
