"""A drain run ending at ``logplex sink`` over real HTTPS (trustme CA) — DESIGN 5.2 and 5.4.

The sink runs as its own process (``python -m drains.sink``, what ``logplex sink`` calls),
prints its port-0 address, verifies each post strictly, de-duplicates by Frame-Id and writes
one JSON object per message.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from drains import DrainContext, DrainSettings, open_drain
from logplex.codecs.records import Batch

TOKEN = "d.5b9a8e0e-52f1-4c5e-9a53-5d2c1f0e8b77"
T0 = 1_795_000_000_000_000  # 2026-11-18T11:06:40Z


class SinkProcess:
    def __init__(self, process: subprocess.Popen[bytes], address: str, jsonl: Path) -> None:
        self.process = process
        self.address = address
        self.jsonl = jsonl

    def records(self) -> list[dict[str, object]]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines()]

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=10)
        return self.process.returncode, err.decode()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_path, cert_path, key_path = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(ca_path), str(cert_path), str(key_path)


@pytest.fixture
def sink(tmp_path: Path, tls_files: tuple[str, str, str]) -> Iterator[SinkProcess]:
    _, cert, key = tls_files
    jsonl = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drains.sink",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--jsonl",
            str(jsonl),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert process.stdout is not None
    first = process.stdout.readline().decode()
    if not first.startswith("listening http="):
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"sink did not start: {first!r} {err.decode()}")
    server = SinkProcess(process, first.split("=", 1)[1].strip(), jsonl)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


async def test_drain_delivers_to_logplex_sink_over_https(
    sink: SinkProcess, tls_files: tuple[str, str, str]
) -> None:
    ca_file = tls_files[0]
    port = sink.address.rsplit(":", 1)[1]
    ctx = DrainContext(
        channel="app1",
        drain_id=3,
        token=TOKEN,
        url=f"https://user:p%3Ass@localhost:{port}/drain",
        settings=DrainSettings(ca_file=ca_file, buffer_messages=10_000),
    )
    drain = open_drain(ctx)
    messages = [
        (T0 + i, 190, b"app", b"web.%d" % (i % 4), "line %d caf\u00e9".encode() % i)
        for i in range(3000)
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(drain.run)
        for start in range(0, 3000, 100):
            drain.push_batch(Batch(messages[start : start + 100]))
        with trio.fail_after(60):
            await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    with trio.fail_after(10):
        while len(sink.records()) < 3000:
            await trio.sleep(0.02)
    records = sink.records()
    # Under this backlog the drain posts on two connections: each post's messages are in
    # order, two posts may arrive in either order (docs/drains.md), none is lost or repeated.
    by_post: dict[object, list[str]] = {}
    for record in records:
        by_post.setdefault(record["frame_id"], []).append(str(record["msg"]))
    numbers = [[int(msg.split()[1]) for msg in msgs] for msgs in by_post.values()]
    for post in numbers:
        assert post == list(range(post[0], post[0] + len(post)))
    assert sorted(n for post in numbers for n in post) == list(range(3000))
    assert {r["msg"] for r in records} == {f"line {i} caf\u00e9" for i in range(3000)}
    records.sort(key=lambda r: int(str(r["msg"]).split()[1]))
    assert records[0] == {
        "ts": "2026-11-18T11:06:40.000000+00:00",
        "pri": 190,
        "source": "app",
        "ps": "web.0",
        "msg": "line 0 caf\u00e9",
        "drain_token": TOKEN,
        "frame_id": records[0]["frame_id"],
    }
    assert len({r["frame_id"] for r in records}) >= 3
    assert drain.status().delivered == 3000
    code, summary = sink.stop()
    assert code == 0
    assert "messages=3000" in summary


async def test_sink_deduplicates_by_frame_id_and_refuses_bad_posts(
    sink: SinkProcess, tls_files: tuple[str, str, str]
) -> None:
    body = b"63 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - hello\n"
    headers = {
        "Content-Type": "application/logplex-1",
        "Logplex-Msg-Count": "1",
        "Logplex-Frame-Id": "A" * 32,
        "Logplex-Drain-Token": TOKEN,
    }
    verify = ssl.create_default_context(cafile=tls_files[0])
    async with httpx.AsyncClient(verify=verify) as client:
        url = f"https://localhost:{sink.address.rsplit(':', 1)[1]}/"
        first = await client.post(url, content=body, headers=headers)
        again = await client.post(url, content=body, headers=headers)
        wrong_count = await client.post(
            url, content=body, headers={**headers, "Logplex-Msg-Count": "2"}
        )
        no_token = await client.post(
            url,
            content=body,
            headers={k: v for k, v in headers.items() if k != "Logplex-Drain-Token"},
        )
        get = await client.get(url)
    assert (first.status_code, again.status_code) == (204, 204)
    assert wrong_count.status_code == 400
    assert "Logplex-Msg-Count says 2" in wrong_count.json()["error"]
    assert no_token.status_code == 400
    assert no_token.json() == {"error": "missing header Logplex-Drain-Token"}
    assert get.status_code == 405
    with trio.fail_after(5):
        while not sink.records():
            await trio.sleep(0.02)
    assert [r["msg"] for r in sink.records()] == ["hello"]
    code, summary = sink.stop()
    assert code == 0
    assert "duplicates=1" in summary
    assert "rejected=2" in summary
