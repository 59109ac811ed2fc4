"""Black box: capture and shipping to a router double (DESIGN sections 4, 5.5, 6 and 8)."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trustme
from shim_router_double import RouterDouble, StreamLog
from shim_run import LOGSHIM, app, run_shim

from logplex.codecs.records import KIND_NOTICE, KIND_STDERR, KIND_STDOUT

SMALL_BUFFER = ["--buffer-bytes", "65536"]
StartRouter = Callable[..., Awaitable[RouterDouble]]
UNDELIVERED = re.compile(rb"logshim: (\d+) lines not delivered")
L12 = re.compile(rb"Error L12 \(Local buffer overflow\): (\d+) messages dropped since \S+\.")
L13 = re.compile(rb"Error L13 \(Local delivery error\): (\d+) messages lost since \S+\.")


def python_app(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def shim_args(router: RouterDouble, *extra: str) -> list[str]:
    return ["--url", router.url, "--token", "t.test", "--ps", "web.1", *extra]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def loss_counts(log: StreamLog, pattern: re.Pattern[bytes]) -> list[int]:
    return [int(m.group(1)) for line in log.lines(KIND_NOTICE) if (m := pattern.fullmatch(line))]


async def test_stdout_and_stderr_lines_shipped_exactly_once_in_order(
    start_router: StartRouter,
) -> None:
    router = await start_router()
    # Tokens from the environment: in argv they would earn a warning on the shim's stderr.
    result = await run_shim(
        ["--url", router.url, "--ps", "web.1"],
        app("write_lines.py", 10000, 100),
        env={"LOGPLEX_TOKEN": "t.test", "LOGPLEX_PLATFORM_TOKEN": "t.platform"},
    )
    assert result.returncode == 0
    log = router.only_stream()
    assert log.violations == []
    assert log.lines(KIND_STDOUT) == [b"out %d " % n for n in range(10000)]
    assert log.lines(KIND_STDERR) == [b"err %d" % n for n in range(100)]
    notices = log.lines(KIND_NOTICE)
    assert notices[0].startswith(b"Starting process with command `")
    assert notices[-1] == b"Process exited with status 0"
    assert log.records()[-1][2] == b"Process exited with status 0"
    hello = log.hello
    assert (hello.token, hello.ps, hello.platform_token) == ("t.test", "web.1", "t.platform")
    assert hello.agent.startswith("logshim/")
    assert uuid.UUID(hello.stream).version == 4
    # The tee copies the app's output byte for byte.
    assert result.stdout == b"".join(b"out %d \n" % n for n in range(10000))
    assert result.stderr == b"".join(b"err %d\n" % n for n in range(100))


async def test_line_rules_partial_last_line_invalid_bytes_long_lines(
    start_router: StartRouter,
) -> None:
    router = await start_router()
    long_line = "é" * 12500  # 25,000 bytes of two-byte characters
    code = (
        "import sys; out = sys.stdout.buffer\n"
        "out.write(b'\\xff\\xfe\\x80 invalid \\xc3\\r\\n')\n"
        "out.write(b'two CRs\\r\\r\\n')\n"
        f"out.write({long_line!r}.encode() + b'\\n')\n"
        "out.write(b'no newline at the end')\n"
    )
    result = await run_shim(shim_args(router, "--no-tee"), python_app(code))
    assert result.returncode == 0
    lines = router.only_stream().lines(KIND_STDOUT)
    assert lines[:2] == [b"\xff\xfe\x80 invalid \xc3", b"two CRs\r"]
    chunks = lines[2:-1]
    assert [len(c) for c in chunks] == [10000, 10000, 5000]
    assert "".join(c.decode("utf-8") for c in chunks) == long_line
    assert lines[-1] == b"no newline at the end"


@pytest.mark.slow
async def test_partial_line_is_flushed_after_one_second(start_router: StartRouter) -> None:
    router = await start_router()
    code = (
        "import sys, time; out = sys.stdout\n"
        "out.write('partial'); out.flush(); time.sleep(2.5)\n"
        "out.write(' rest\\n'); out.flush()\n"
    )
    result = await run_shim(shim_args(router, "--no-tee"), python_app(code))
    assert result.returncode == 0
    records = [r for r in router.only_stream().records() if r[1] == KIND_STDOUT]
    assert [r[2] for r in records] == [b"partial", b" rest"]
    assert records[1][0] - records[0][0] >= 1_000_000


@pytest.mark.slow
async def test_stalled_router_never_blocks_the_app(start_router: StartRouter) -> None:
    # The router accepts and answers READY, then never reads: the window fills, the
    # socket buffers fill, and the shim must keep reading the app's 50 MB and drop.
    router = await start_router(stall_after_ready=True)
    lines = 500_000
    result = await run_shim(
        shim_args(router, "--no-tee", "--flush-timeout", "1"),
        app("write_lines.py", lines, 0, 0, 92),  # 100-byte lines: 50 MB
    )
    assert result.returncode == 0
    assert result.elapsed_s < 20
    undelivered = UNDELIVERED.search(result.stderr)
    assert undelivered, result.stderr
    # Nothing was acknowledged: every line and both notices are reported lost.
    assert int(undelivered.group(1)) == lines + 2


async def test_router_down_leaves_the_app_alone(tmp_path: Path) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    result = await run_shim(
        ["--url", url, "--token", "t.test", "--flush-timeout", "1"],
        ["sh", "-c", "echo hello; exit 5"],
    )
    assert result.returncode == 5
    assert result.stdout == b"hello\n"
    assert result.elapsed_s < 6
    assert b"logshim: 3 lines not delivered" in result.stderr  # Starting, hello, Exited


@pytest.mark.slow
async def test_router_restart_mid_stream_loses_and_duplicates_nothing(
    start_router: StartRouter, nursery: trio.Nursery
) -> None:
    router = await start_router()
    lines = 30_000

    async def kill_and_restart() -> None:
        for threshold in (5_000, 15_000):
            await router.wait_for(
                lambda t=threshold: (
                    router.streams and len(router.only_stream().lines(KIND_STDOUT)) >= t
                )
            )
            router.kill()
            await trio.sleep(0.5)
            await nursery.start(router.serve, router.port)

    nursery.start_soon(kill_and_restart)
    result = await run_shim(shim_args(router, "--no-tee"), app("write_lines.py", lines, 0, 10_000))
    assert result.returncode == 0
    log = router.only_stream()
    assert log.violations == []
    assert router.connections >= 3
    assert log.lines(KIND_STDOUT) == [b"out %d " % n for n in range(lines)]
    assert UNDELIVERED.search(result.stderr) is None


@pytest.mark.slow
async def test_refused_batch_becomes_l13(start_router: StartRouter) -> None:
    router = await start_router(refuse_seqs=frozenset({2}))
    result = await run_shim(shim_args(router, "--no-tee"), app("write_lines.py", 3000, 0))
    assert result.returncode == 0
    log = router.only_stream()
    assert log.violations == []
    assert sorted(log.batches) == list(range(1, len(log.batches) + 1))
    lost = loss_counts(log, L13)
    assert len(lost) == 1
    assert lost[0] > 0
    delivered = len(log.records()) - len(lost)
    assert delivered + sum(lost) == 3000 + 2  # the app's lines and two lifecycle notices
    stdout = log.lines(KIND_STDOUT)
    assert stdout == sorted(stdout, key=lambda line: int(line.split()[1]))


@pytest.mark.slow
async def test_overflow_drops_the_oldest_and_reports_l12(
    start_router: StartRouter, nursery: trio.Nursery
) -> None:
    port = free_port()
    router = RouterDouble()
    lines = 5000

    async def start_later() -> None:
        await trio.sleep(1.5)
        await nursery.start(router.serve, port)

    nursery.start_soon(start_later)
    code = f"import time\nfor n in range({lines}): print('line %d ' % n + 'x' * 80)\n"
    code += "import sys; sys.stdout.flush(); time.sleep(3)\n"
    result = await run_shim(
        ["--url", f"tcp://127.0.0.1:{port}", "--token", "t.test", "--no-tee", *SMALL_BUFFER],
        python_app(code),
    )
    assert result.returncode == 0
    log = router.only_stream()
    dropped = loss_counts(log, L12)
    assert len(dropped) == 1
    stdout = log.lines(KIND_STDOUT)
    # The oldest were dropped: what arrived is the newest lines, in order, without a gap.
    first = int(stdout[0].split()[1])
    assert stdout == [b"line %d " % n + b"x" * 80 for n in range(first, lines)]
    delivered = len(log.records()) - len(dropped)
    assert delivered + sum(dropped) == lines + 2
    assert UNDELIVERED.search(result.stderr) is None


@pytest.mark.slow
async def test_block_makes_the_app_wait_instead_of_dropping(
    nursery: trio.Nursery,
) -> None:
    port = free_port()
    router = RouterDouble()
    lines = 5000

    async def start_later() -> None:
        await trio.sleep(1.5)
        await nursery.start(router.serve, port)

    nursery.start_soon(start_later)
    result = await run_shim(
        ["--url", f"tcp://127.0.0.1:{port}", "--token", "t.test", "--block", *SMALL_BUFFER],
        app("write_lines.py", lines, 0, 0, 80),
    )
    assert result.returncode == 0
    log = router.only_stream()
    assert loss_counts(log, L12) == []
    assert log.lines(KIND_STDOUT) == [b"out %d " % n + b"x" * 80 for n in range(lines)]


async def test_ping_is_answered_with_pong(start_router: StartRouter) -> None:
    router = await start_router(send_ping=True)
    result = await run_shim(shim_args(router), ["sh", "-c", "echo hi; sleep 0.5"])
    assert result.returncode == 0
    assert router.pongs == 1


@pytest.mark.slow
async def test_tls_router_verified_with_ca_file(start_router: StartRouter, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    router = await start_router(ssl_context=server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    result = await run_shim(
        shim_args(router, "--ca-file", str(ca_file)), ["sh", "-c", "echo over tls"]
    )
    assert result.returncode == 0
    assert router.only_stream().lines(KIND_STDOUT) == [b"over tls"]
    # Without the CA the router is not trusted: nothing is shipped, the app is unaffected.
    untrusted = await run_shim(
        shim_args(router, "--flush-timeout", "1"), ["sh", "-c", "echo secret; exit 4"]
    )
    assert untrusted.returncode == 4
    assert b"TLS certificate not trusted" in untrusted.stderr
    assert b"logshim: 3 lines not delivered" in untrusted.stderr


async def test_an_unusable_ca_file_still_runs_the_app(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate\n")
    result = await run_shim(
        ["--url", "tls://localhost:1", "--token", "t.test", "--ca-file", str(ca_file)],
        ["sh", "-c", "echo still here; exit 9"],
    )
    assert result.returncode == 9
    assert result.stdout == b"still here\n"
    assert b"supervising only" in result.stderr


@pytest.mark.parametrize("with_router", [False, True])
async def test_closed_shim_stdout_is_survived(start_router: StartRouter, with_router: bool) -> None:
    # sh keeps the default SIGPIPE action: if the shim forwarded the SIGPIPE its own tee
    # write raised, the app would die of it (141) instead of exiting 3.
    args = ["--url", (await start_router()).url, "--ps", "web.1"] if with_router else []
    pipe_read, pipe_write = os.pipe()
    os.close(pipe_read)  # nobody will ever read the shim's stdout
    try:
        with trio.fail_after(30):
            done = await trio.run_process(
                [LOGSHIM, *args, "--", "sh", "-c", "seq 1 20000; echo done >&2; sleep 0.3; exit 3"],
                stdin=subprocess.DEVNULL,
                stdout=pipe_write,
                capture_stderr=True,
                check=False,
                env={**os.environ, "LOGPLEX_TOKEN": "t.test"},
            )
    finally:
        os.close(pipe_write)
    assert done.returncode == 3, done.stderr
    assert done.stderr == b"done\n"  # the stderr tee goes on when the stdout tee stopped


@pytest.mark.slow
async def test_a_grandchild_holding_the_pipes_delays_exit_by_one_second_at_most(
    start_router: StartRouter,
) -> None:
    router = await start_router()
    result = await run_shim(
        shim_args(router, "--no-tee"), ["sh", "-c", "sleep 8 & echo started; exit 4"]
    )
    assert result.returncode == 4
    assert result.elapsed_s < 6  # not 8: read until EOF or 1 s, then leave
    assert router.only_stream().lines(KIND_STDOUT) == [b"started"]


async def test_closed_stdout_and_stderr_with_the_router_down_keep_the_exit_code() -> None:
    # Every message the shim has for its stderr (connection failures, the undelivered
    # count) meets a broken pipe; none of that may change how the shim exits.
    pipe_read, pipe_write = os.pipe()
    os.close(pipe_read)
    try:
        with trio.fail_after(30):
            done = await trio.run_process(
                [
                    *(LOGSHIM, "--url", f"tcp://127.0.0.1:{free_port()}", "--token", "t.test"),
                    *("--flush-timeout", "0.5", "--"),
                    *("sh", "-c", "seq 1 1000; seq 1 10 >&2; exit 6"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=pipe_write,
                stderr=pipe_write,
                check=False,
            )
    finally:
        os.close(pipe_write)
    assert done.returncode == 6


async def test_never_more_than_window_batches_unacknowledged(start_router: StartRouter) -> None:
    router = await start_router(window=3, hold_acks=True)
    async with trio.open_nursery() as nursery:
        # A long flush timeout: the app is done long before the ACKs are released.
        args = shim_args(router, "--no-tee", "--flush-timeout", "60")
        nursery.start_soon(run_shim, args, app("write_lines.py", 5000, 0))
        await router.wait_for(lambda: router.streams and len(router.only_stream().batches) >= 3)
        await trio.sleep(0.5)  # time for a fourth batch to arrive, if the window leaked
        assert len(router.only_stream().batches) == 3
        await router.release_acks()
    assert router.only_stream().lines(KIND_STDOUT) == [b"out %d " % n for n in range(5000)]


@pytest.mark.slow
async def test_resends_after_a_reconnect_respect_the_new_window(
    start_router: StartRouter, nursery: trio.Nursery
) -> None:
    router = await start_router(window=6, hold_acks=True)
    async with trio.open_nursery() as shims:
        args = shim_args(router, "--no-tee", "--flush-timeout", "60")
        shims.start_soon(run_shim, args, app("write_lines.py", 5000, 0))
        await router.wait_for(lambda: router.streams and len(router.only_stream().batches) >= 6)
        # The router dies before acknowledging anything, and comes back with a smaller window.
        router.kill(forget_unacked=True)
        assert router.only_stream().batches == {}
        router.window = 2
        await nursery.start(router.serve, router.port)
        await router.wait_for(lambda: len(router.only_stream().batches) >= 2)
        await trio.sleep(0.5)  # time for a third resend to arrive, if the window leaked
        assert sorted(router.only_stream().batches) == [1, 2]
        await router.release_acks()
    log = router.only_stream()
    assert log.violations == []
    assert log.lines(KIND_STDOUT) == [b"out %d " % n for n in range(5000)]


async def test_a_refused_token_is_reported_once_and_the_app_runs_on(
    start_router: StartRouter,
) -> None:
    router = await start_router(refuse_hello="unauthorized")
    result = await run_shim(
        shim_args(router, "--flush-timeout", "1.5"), ["sh", "-c", "echo hi; sleep 1; exit 3"]
    )
    assert result.returncode == 3
    assert result.stdout == b"hi\n"
    assert router.refusals >= 2  # it keeps trying, with backoff
    assert result.stderr.count(b"router refused the stream: unauthorized") == 1
    assert b"logshim: 3 lines not delivered" in result.stderr
