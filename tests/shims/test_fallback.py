"""The plain supervisor that takes over after an internal error (``shims.fallback``).

It runs in its own process (it reaps every child, which the test process must not do),
started by ``apps/plain_supervisor.py`` exactly as ``shims.supervisor.supervise`` would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import trio
from shim_run import APPS, app, wait_for_file_line

PLAIN = [sys.executable, str(APPS / "plain_supervisor.py")]


async def run_plain(args: list[str], command: list[str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [*PLAIN, *args, "--", *command],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_exit_codes_output_and_e() -> None:
    done = await run_plain([], ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (done.returncode, done.stdout, done.stderr) == (7, b"out\n", b"err\n")
    assert (await run_plain([], ["sh", "-c", "kill -USR1 $$"])).returncode == 128 + 10
    assert (await run_plain(["-e", "7"], ["sh", "-c", "exit 7"])).returncode == 0


async def test_signals_are_forwarded_once(tmp_path: Path) -> None:
    record = tmp_path / "signals"
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            trio.run_process,
            [*PLAIN, "--", *app("record_signals.py", record, int(signal.SIGTERM))],
        )
        await wait_for_file_line(record, "ready")
        for signum in (signal.SIGUSR1, signal.SIGHUP, signal.SIGPIPE, signal.SIGSEGV):
            process.send_signal(signum)
            with trio.fail_after(10):
                while str(int(signum)) not in record.read_text().splitlines():
                    await trio.sleep(0.01)
        process.send_signal(signal.SIGTERM)
    assert process.returncode == 0
    received = Counter(int(x) for x in record.read_text().splitlines() if x.isdigit())
    assert received == Counter(
        [signal.SIGUSR1, signal.SIGHUP, signal.SIGPIPE, signal.SIGSEGV, signal.SIGTERM]
    )
