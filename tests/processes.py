"""Helpers for tests that run the real console scripts as subprocesses."""

from __future__ import annotations

import trio


async def read_listening(stdout: trio.abc.ReceiveStream, count: int) -> dict[str, str]:
    """Read a server's ``listening NAME=HOST:PORT`` lines until ``count`` of them arrived
    (DESIGN 2: printed and flushed before serving); ``{NAME: "HOST:PORT"}``."""
    output = b""
    with trio.fail_after(30):
        while output.count(b"listening ") < count:
            chunk = await stdout.receive_some(4096)
            assert chunk, f"the server exited early: {output!r}"
            output += chunk
    return dict(
        line.removeprefix("listening ").split("=", 1)
        for line in output.decode().splitlines()
        if line.startswith("listening ")
    )
