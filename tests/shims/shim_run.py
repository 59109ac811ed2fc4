"""Running the real ``logshim`` console script as a black box, around the apps in ``apps/``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trio

LOGSHIM = str(Path(sys.executable).with_name("logshim"))
APPS = Path(__file__).resolve().parent / "apps"


def app(name: str, *args: object) -> list[str]:
    """argv of a helper app, run with the test interpreter (the project venv)."""
    return [sys.executable, str(APPS / name), *map(str, args)]


@dataclass
class ShimResult:
    returncode: int
    stdout: bytes
    stderr: bytes
    elapsed_s: float


async def run_shim(
    shim_args: list[str],
    command: list[str],
    *,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
) -> ShimResult:
    """Run ``logshim SHIM_ARGS -- COMMAND`` to completion, capturing its output.

    ``env`` is added to the test's own environment."""
    started = time.monotonic()
    with trio.fail_after(timeout_s):
        done = await trio.run_process(
            [LOGSHIM, *shim_args, "--", *command],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )
    return ShimResult(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def shim_signal_mask_is_set(pid: int) -> bool:
    """True once the shim has blocked its signals (its ``SigBlk`` is not zero)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    blocked = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    return int(blocked.split()[1], 16) != 0


def children_of(pid: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of every process whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0]))
    return found


async def wait_for_file_line(path: Path, prefix: str, timeout_s: float = 20.0) -> str:
    with trio.fail_after(timeout_s):
        while True:
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.startswith(prefix):
                        return line
            await trio.sleep(0.01)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


class RunningShim:
    """A ``logshim`` started in the background; its stdout/stderr go to files."""

    def __init__(self, process: trio.Process, stdout_path: Path, stderr_path: Path) -> None:
        self.process = process
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    async def wait(self, timeout_s: float = 30.0) -> int:
        with trio.fail_after(timeout_s):
            return await self.process.wait()

    def stdout(self) -> bytes:
        return self.stdout_path.read_bytes()

    def stderr(self) -> bytes:
        return self.stderr_path.read_bytes()

    def state(self) -> str:
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat[stat.rindex(")") + 2]


async def start_shim(
    shim_args: list[str], command: list[str], tmp_path: Path, *, prefix: list[str] | None = None
) -> RunningShim:
    stdout_path, stderr_path = tmp_path / "shim.stdout", tmp_path / "shim.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = await trio.lowlevel.open_process(
            [*(prefix or []), LOGSHIM, *shim_args, "--", *command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    return RunningShim(process, stdout_path, stderr_path)
