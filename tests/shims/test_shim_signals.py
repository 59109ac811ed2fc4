"""Black box: signal forwarding, the app's clean signal state, the grace period.

DESIGN section 6: every catchable signal reaches the app (or its group) exactly once; the
app starts with an empty mask and default dispositions; SIGTERM/SIGINT start the grace
period; SIGTSTP/SIGTTIN/SIGTTOU never stop the shim.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from shim_router_double import RouterDouble
from shim_run import (
    LOGSHIM,
    app,
    run_shim,
    signal_name,
    start_shim,
    wait_for_file_line,
)

from logplex.codecs.records import KIND_NOTICE, KIND_STDOUT

UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
CATCHABLE_1_31 = [s for s in range(1, 32) if s not in UNCATCHABLE | {signal.SIGCHLD}]
REALTIME = signal.SIGRTMIN + 6
GLIBC_INTERNAL_MASK = (1 << 31) | (1 << 32)  # signals 32 and 33


def received(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().splitlines() if line.isdigit()]


async def wait_received(path: Path, signum: int, count: int = 1) -> None:
    with trio.fail_after(10):
        while Counter(received(path))[signum] < count:
            await trio.sleep(0.005)


@pytest.mark.slow
async def test_every_catchable_signal_is_forwarded_exactly_once(tmp_path: Path) -> None:
    record = tmp_path / "signals"
    shim = await start_shim(
        ["--grace", "60"], app("record_signals.py", record, int(signal.SIGTERM)), tmp_path
    )
    await wait_for_file_line(record, "ready")
    # SIGPIPE, SIGTTOU and the fault signals are read through a signalfd (blocked, never caught);
    # everything else through the receiver's handlers.
    with trio.fail_after(10):  # the app may be ready before the shim's receiver is
        while _mask(shim.pid, "SigBlk") >> (signal.SIGTERM - 1) & 1:
            await trio.sleep(0.01)
    blocked, caught = _mask(shim.pid, "SigBlk"), _mask(shim.pid, "SigCgt")
    through_signalfd = {signal.SIGPIPE, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE}
    through_signalfd |= {signal.SIGILL, signal.SIGTRAP, signal.SIGSYS, signal.SIGTTOU}
    assert {s for s in CATCHABLE_1_31 if blocked >> (s - 1) & 1} == through_signalfd
    assert {s for s in CATCHABLE_1_31 if caught >> (s - 1) & 1} == set(CATCHABLE_1_31) - (
        through_signalfd
    )
    sent = [s for s in CATCHABLE_1_31 if s != signal.SIGTERM] + [REALTIME]
    for signum in sent:
        shim.send(signum)
        await wait_received(record, signum)
        # Job-control signals are forwarded and must never stop the shim itself.
        assert shim.state() != "T", f"the shim stopped on {signal_name(signum)}"
    await trio.sleep(0.3)  # time for a duplicate to show up
    shim.send(signal.SIGTERM)
    assert await shim.wait() == 0
    counts = Counter(received(record))
    assert counts == Counter([*sent, signal.SIGTERM]), {
        signal_name(s): n for s, n in counts.items() if n != 1
    }


async def test_sigterm_right_after_start_is_not_lost(tmp_path: Path) -> None:
    # Sent while the shim is still importing (before trio and before the app exist): it
    # stays pending and reaches the app once the app is spawned.
    shim = await start_shim([], ["sleep", "30"], tmp_path)
    with trio.fail_after(10):
        while not _signals_blocked(shim.pid):
            await trio.sleep(0)
    shim.send(signal.SIGTERM)
    assert await shim.wait(timeout_s=10) == 128 + signal.SIGTERM


def _mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _signals_blocked(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16) != 0
    return False


async def test_app_starts_with_empty_mask_and_default_dispositions() -> None:
    # Start the shim from a parent that blocks and ignores signals: none of that may leak.
    wrapper = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGUSR1, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGTERM})\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    result = await run_shim([], ["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"], timeout_s=30)
    direct = _sig_fields(result.stdout)
    done = await trio.run_process(
        [
            sys.executable,
            "-c",
            wrapper,
            LOGSHIM,
            "--",
            "grep",
            "-E",
            "^Sig(Blk|Ign):",
            "/proc/self/status",
        ],
        capture_stdout=True,
    )
    wrapped = _sig_fields(done.stdout)
    for fields in (direct, wrapped):
        assert fields["SigBlk"] == 0
        assert fields["SigIgn"] & ~GLIBC_INTERNAL_MASK == 0


def _sig_fields(output: bytes) -> dict[str, int]:
    fields = {}
    for line in output.decode().splitlines():
        name, value = line.split(":")
        fields[name] = int(value.strip(), 16)
    return fields


@pytest.mark.parametrize("single_child", [False, True])
async def test_group_forwarding_reaches_a_grandchild(tmp_path: Path, single_child: bool) -> None:
    record = tmp_path / "signals"
    args = ["--single-child"] if single_child else []
    shim = await start_shim(
        args, app("record_signals.py", record, int(signal.SIGUSR1), "--spawn-child"), tmp_path
    )
    child_record = Path(f"{record}.child")
    await wait_for_file_line(record, "ready")
    await wait_for_file_line(child_record, "ready")
    shim.send(signal.SIGUSR2)
    await wait_received(record, signal.SIGUSR2)
    if not single_child:
        await wait_received(child_record, signal.SIGUSR2)
    await trio.sleep(0.3)  # time for a stray or duplicate signal to show up
    expected_in_grandchild = [] if single_child else [signal.SIGUSR2]
    assert received(child_record) == expected_in_grandchild
    shim.send(signal.SIGUSR1)  # ends the app (which kills its child on the way out)
    assert await shim.wait() == 0
    # (SIGCHLD comes from the app's own child, killed by the app on its way out.)
    assert [s for s in received(record) if s != signal.SIGCHLD] == [
        signal.SIGUSR2,
        signal.SIGUSR1,
    ]


@pytest.mark.slow
async def test_grace_period_ends_with_sigkill_and_r12(
    tmp_path: Path, start_router: Callable[..., Awaitable[RouterDouble]]
) -> None:
    router = await start_router()
    shim = await start_shim(
        ["--url", router.url, "--token", "t.test", "--grace", "1", "--no-tee"],
        ["sh", "-c", "trap '' TERM; echo ready; sleep 30"],
        tmp_path,
    )
    await router.wait_for(
        lambda: router.streams and b"ready" in router.only_stream().lines(KIND_STDOUT)
    )
    started = trio.current_time()
    shim.send(signal.SIGTERM)
    assert await shim.wait() == 128 + signal.SIGKILL
    assert 1.0 <= trio.current_time() - started < 5.0
    notices = router.only_stream().lines(KIND_NOTICE)
    assert notices == [
        b"Starting process with command `sh -c trap '' TERM; echo ready; sleep 30`",
        b"Stopping all processes with SIGTERM",
        b"Error R12 (Exit timeout) -> At least one process failed to exit within 1 seconds "
        b"of SIGTERM",
        b"Stopping remaining processes with SIGKILL",
        b"Process exited with status 137",
    ]


async def test_sigterm_within_grace_needs_no_sigkill(
    tmp_path: Path, start_router: Callable[..., Awaitable[RouterDouble]]
) -> None:
    router = await start_router()
    shim = await start_shim(
        ["--url", router.url, "--token", "t.test", "--no-tee"],
        ["sh", "-c", "echo ready; sleep 30 & wait"],
        tmp_path,
    )
    await router.wait_for(
        lambda: router.streams and b"ready" in router.only_stream().lines(KIND_STDOUT)
    )
    shim.send(signal.SIGINT)
    assert await shim.wait(timeout_s=10) == 128 + signal.SIGINT
    assert router.only_stream().lines(KIND_NOTICE)[1:] == [
        b"Stopping all processes with SIGINT",  # the signal the app was sent
        b"Process exited with status 130",
    ]


async def test_an_app_that_left_its_group_still_gets_signals(tmp_path: Path) -> None:
    record = tmp_path / "signals"
    shim = await start_shim(
        [], app("record_signals.py", record, int(signal.SIGUSR1), "--leave-group"), tmp_path
    )
    await wait_for_file_line(record, "ready")
    shim.send(signal.SIGUSR1)
    assert await shim.wait() == 0
    assert received(record) == [signal.SIGUSR1]
