"""The accounting invariant of DESIGN 8, end to end, with every piece a real process.

``logshim`` runs an app that writes lines as fast as it can and ships them to ``logplex
serve``; the channel has an HTTPS drain to ``logplex sink`` (TLS verified against a trustme
CA given with ``--drain-ca-file``), a syslog TCP drain to a plain loopback receiver, and a
live tail session. The router runs memory-only (``--no-spool``) with a small drain buffer, so that drops really
happen.

For every output: messages published (app lines plus shim notices) = unique messages
delivered + the sum of N in the loss notices it received (L10 for drains, L11 for the tail,
L12/L13 from the shim). Nothing vanishes silently, and nothing is delivered twice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from processes import read_listening

from logplex.codecs.octet import OctetFrameDecoder

BIN = Path(sys.executable).parent
APP_LINES = 20_000
LOSS = re.compile(rb"Error L1[0-3] \([^)]*\)(?: -> This tail session dropped|:) (\d+) messages")

pytestmark = pytest.mark.slow


def child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX_", "LOGSHIM_"))}
    env.pop("PYTHONUNBUFFERED", None)
    env["LOGPLEX_DATA_DIR"] = str(tmp_path / "data")
    return env


@asynccontextmanager
async def running(
    argv: list[str], env: dict[str, str], names: int
) -> AsyncIterator[dict[str, str]]:
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        yield await read_listening(process.stdout, names)
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()


@dataclass
class Tally:
    """What one output received: message texts in arrival order and the losses it was told."""

    texts: list[bytes] = field(default_factory=list)
    told_lost: int = 0

    def add(self, msg: bytes) -> None:
        match = LOSS.match(msg)
        if match:
            self.told_lost += int(match.group(1))
        else:
            self.texts.append(msg)

    def accounted(self) -> int:
        return len(set(self.texts)) + self.told_lost


async def syslog_receiver(
    listeners: list[trio.SocketListener], tally: Tally, task_status: trio.TaskStatus[None]
) -> None:
    task_status.started()

    async def serve(stream: trio.SocketStream) -> None:
        decoder = OctetFrameDecoder(max_frame_bytes=20_000, policy="strict")
        async for chunk in stream:
            decoder.feed(chunk)
            for frame in decoder.frames():
                # <PRI>1 TS d.TOKEN SOURCE PS - - MSG LF
                tally.add(frame.rstrip(b"\n").split(b" ", 7)[7])

    await trio.serve_listeners(serve, listeners)


async def read_tail(url: str, tally: Tally, task_status: trio.TaskStatus[None]) -> None:
    async with httpx.AsyncClient(timeout=None) as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        task_status.started()
        async for line in response.aiter_lines():
            # TS SOURCE[PS]: MSG
            tally.add(line.encode().split(b": ", 1)[1])


def tls_files(tmp_path: Path) -> tuple[str, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = [str(tmp_path / name) for name in ("ca.pem", "cert.pem", "key.pem")]
    ca.cert_pem.write_to_path(paths[0])
    cert.cert_chain_pems[0].write_to_path(paths[1])
    cert.private_key_pem.write_to_path(paths[2])
    return paths[0], paths[1], paths[2]


async def test_every_output_accounts_for_every_published_message(tmp_path: Path) -> None:
    env = child_env(tmp_path)
    ca, cert, key = tls_files(tmp_path)
    jsonl = tmp_path / "sink.jsonl"
    sink_argv = [str(BIN / "logplex"), "sink", "--listen", "127.0.0.1:0"]
    sink_argv += ["--tls-cert", cert, "--tls-key", key, "--jsonl", str(jsonl)]
    # Memory only: the small per-drain buffers are where drops happen (with the spool,
    # nothing is dropped; tests/chaos holds the spool to zero loss).
    serve_argv = [
        *(str(BIN / "logplex"), "serve", "--no-spool", "--drain-ca-file", ca),
        *("--drain-buffer", "300"),
    ]
    serve_argv += [f"--{name}=127.0.0.1:0" for name in ("http", "shim", "syslog")]
    syslog_tally, tail_tally = Tally(), Tally()

    async with (
        running(sink_argv, env, 1) as sink,
        running(serve_argv, env, 3) as router,
        trio.open_nursery() as nursery,
    ):
        syslog_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        syslog_port = syslog_listeners[0].socket.getsockname()[1]
        await nursery.start(syslog_receiver, syslog_listeners, syslog_tally)

        key_text = (tmp_path / "data" / "auth-key").read_text().strip()
        api = httpx.AsyncClient(
            base_url=f"http://{router['http']}",
            headers={"Authorization": f"Bearer {key_text}"},
            timeout=10,
        )
        async with api:
            created = await api.put("/v3/channels/shop", json={"tokens": ["app", "heroku"]})
            assert created.status_code == 201, created.text
            tokens = created.json()["tokens"]
            for url in (f"https://{sink['http']}/logs", f"syslog://127.0.0.1:{syslog_port}"):
                added = await api.post("/v3/channels/shop/drains", json={"url": url})
                assert added.status_code == 201, added.text
            session = await api.post("/v3/sessions", json={"channel_id": "shop", "tail": True})
            assert session.status_code == 201, session.text
            await nursery.start(read_tail, session.json()["url"], tail_tally)

            code = f"import sys\nfor n in range({APP_LINES}): print('line', n)\n"
            shim = await trio.run_process(
                [
                    *(str(BIN / "logshim"), "--url", f"tcp://{router['shim']}", "--no-tee"),
                    *("--ps", "web.1", "--", sys.executable, "-c", code),
                ],
                # Tokens from the environment: in argv they would earn a warning on stderr.
                env={
                    **env,
                    "LOGPLEX_TOKEN": tokens["app"],
                    "LOGPLEX_PLATFORM_TOKEN": tokens["heroku"],
                },
                capture_stderr=True,
                check=False,
            )
            assert shim.returncode == 0, shim.stderr
            assert shim.stderr == b"", "the shim reports lines it could not deliver"

            sink_tally = Tally()
            published = APP_LINES + 2  # plus "Starting process …" and "Process exited …"
            with trio.move_on_after(60):
                while True:
                    sink_tally = Tally()
                    if jsonl.exists():
                        for row in jsonl.read_text().splitlines():
                            sink_tally.add(json.loads(row)["msg"].encode())
                    tallies = (sink_tally, syslog_tally, tail_tally)
                    if all(t.accounted() >= published for t in tallies):
                        break
                    await trio.sleep(0.2)
            statuses = (await api.get("/v3/channels/shop/drains")).json()
        nursery.cancel_scope.cancel()

    for name, tally in (("https", sink_tally), ("syslog", syslog_tally), ("tail", tail_tally)):
        assert len(tally.texts) == len(set(tally.texts)), f"{name}: a message arrived twice"
        assert tally.accounted() == published, (name, len(tally.texts), tally.told_lost)
        app = [t for t in tally.texts if t.startswith(b"line ")]
        numbers = [int(t.split()[1]) for t in app]
        assert numbers == sorted(numbers), f"{name}: app lines out of order"
    # The drains' own counters agree with what their receivers were told.
    dropped = {d["url"].split(":")[0]: d["status"]["dropped"] for d in statuses}
    assert dropped == {"https": sink_tally.told_lost, "syslog": syslog_tally.told_lost}
