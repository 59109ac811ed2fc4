"""Black box: orphaned grandchildren are reaped (DESIGN section 6), as PID 1 and as a subreaper.

The app double-forks 50 orphans, lets them all exit together 0.5 s later, and lives on for a
while. The orphans must be re-parented to the shim and, once they exit, leave no zombie.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import trio
from shim_run import RunningShim, app, children_of, start_shim

ORPHANS = 50


async def check_orphans_reaped(shim: RunningShim, reaper_pid: int) -> None:
    # Phase 1: the orphans exist and their parent is the shim (the app is the +1).
    with trio.fail_after(20):
        while len(children_of(reaper_pid)) < ORPHANS + 1:
            await trio.sleep(0.02)
    # Phase 2: they exit after 0.5 s; only the app may remain, and no zombie.
    with trio.fail_after(5):
        while True:
            children = children_of(reaper_pid)
            if len(children) == 1 and all(state != "Z" for _, state in children):
                break
            await trio.sleep(0.05)
    assert await shim.wait() == 0


@pytest.mark.slow
async def test_orphans_reaped_by_a_subreaper(tmp_path: Path) -> None:
    shim = await start_shim(["--no-tee"], app("orphans.py", ORPHANS, 0.5, 3), tmp_path)
    await check_orphans_reaped(shim, shim.pid)


@pytest.mark.slow
async def test_orphans_reaped_as_pid_1(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "running logshim as PID 1 needs root for unshare -pf"
    unshare = shutil.which("unshare")
    assert unshare, "install util-linux (unshare) to run the PID 1 test"
    shim = await start_shim(
        ["--no-tee"],
        app("orphans.py", ORPHANS, 0.5, 3),
        tmp_path,
        prefix=[unshare, "--pid", "--fork", "--mount-proc"],
    )
    with trio.fail_after(10):
        while not (inner := children_of(shim.pid)):
            await trio.sleep(0.01)
    shim_pid_outside = inner[0][0]
    await check_orphans_reaped(shim, shim_pid_outside)


@pytest.mark.slow
async def test_as_pid_1_signals_are_still_forwarded(tmp_path: Path) -> None:
    # The kernel drops signals PID 1 has no handler for; the shim has handlers for all.
    unshare = shutil.which("unshare")
    assert unshare, "install util-linux (unshare) to run the PID 1 test"
    shim = await start_shim(
        ["--no-tee"], ["sleep", "30"], tmp_path, prefix=[unshare, "--pid", "--fork", "--mount-proc"]
    )
    with trio.fail_after(10):
        while not (inner := children_of(shim.pid)) or not children_of(inner[0][0]):
            await trio.sleep(0.01)
    os.kill(inner[0][0], signal.SIGTERM)  # the shim, PID 1 inside its namespace
    assert await shim.wait(timeout_s=10) == 128 + signal.SIGTERM
