"""Black box: the shim exits like the app (DESIGN section 6, exit codes)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
from shim_run import run_shim

# Sampled over the whole range: both ends, the shell's special values, powers of two.
EXIT_CODES = [0, 1, 2, 3, 7, 42, 64, 100, 125, 126, 127, 128, 129, 137, 143, 200, 254, 255]
DEATH_SIGNALS = [
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGKILL,
    signal.SIGSEGV,
    signal.SIGUSR1,
]


async def run_all(commands: list[tuple[list[str], list[str]]]) -> list[int]:
    """Run several shims at once (each one spends most of its life importing)."""
    codes = [0] * len(commands)
    limiter = trio.CapacityLimiter(6)

    async def one(index: int, shim_args: list[str], command: list[str]) -> None:
        async with limiter:
            codes[index] = (await run_shim(shim_args, command)).returncode

    async with trio.open_nursery() as nursery:
        for index, (shim_args, command) in enumerate(commands):
            nursery.start_soon(one, index, shim_args, command)
    return codes


@pytest.mark.slow
async def test_exit_codes_pass_through() -> None:
    codes = await run_all([([], ["sh", "-c", f"exit {code}"]) for code in EXIT_CODES])
    assert codes == EXIT_CODES


@pytest.mark.slow
async def test_death_by_signal_is_128_plus_n() -> None:
    commands: list[tuple[list[str], list[str]]] = [
        ([], ["sh", "-c", f"kill -{sig.name[3:]} $$"]) for sig in DEATH_SIGNALS
    ]
    assert await run_all(commands) == [128 + int(sig) for sig in DEATH_SIGNALS]


async def test_command_not_found_is_127(tmp_path: Path) -> None:
    result = await run_shim([], ["no-such-command-anywhere"])
    assert result.returncode == 127
    assert result.stderr.count(b"\n") == 1
    assert b"no-such-command-anywhere" in result.stderr
    assert b"not found" in result.stderr
    result = await run_shim([], [str(tmp_path / "missing")])
    assert result.returncode == 127


async def test_not_executable_is_126(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o644)
    result = await run_shim([], [str(script)])
    assert result.returncode == 126
    assert result.stderr.count(b"\n") == 1
    assert str(script).encode() in result.stderr
    result = await run_shim([], [str(tmp_path)])  # a directory
    assert result.returncode == 126


@pytest.mark.slow
async def test_e_maps_listed_codes_to_zero() -> None:
    codes = await run_all(
        [
            (["-e", "3"], ["sh", "-c", "exit 3"]),
            (["-e", "3", "-e", "4"], ["sh", "-c", "exit 4"]),
            (["-e", "3"], ["sh", "-c", "exit 5"]),
            (["-e", "143"], ["sh", "-c", "kill -TERM $$"]),
            (["-e", "127"], ["no-such-command-anywhere"]),
        ]
    )
    assert codes == [0, 0, 5, 0, 0]


@pytest.mark.parametrize(
    "args",
    [
        [],  # no command
        ["--buffer-bytes", "10"],
        ["-e", "256"],
    ],
)
async def test_usage_errors_exit_2_and_say_why(args: list[str]) -> None:
    result = await run_shim(args, ["true"] if args else [])
    assert result.returncode == 2
    assert b"logshim: error:" in result.stderr
