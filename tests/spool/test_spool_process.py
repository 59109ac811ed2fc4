"""The spool with a real ``logplex serve``: what survives SIGKILL, the disk budget, damage,
a disk that refuses writes, and ``logplex spool check`` (DESIGN 8, docs/reliability.md)."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import LOGPLEX, Serve, SyslogReceiver, child_env, free_port

pytestmark = pytest.mark.slow


def test_history_backlog_and_counters_survive_sigkill(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    serve = Serve(tmp_path / "data")
    serve_factory.append(serve)
    serve.start()
    token = serve.create_channel("shop")
    receiver_port = free_port()
    serve.add_drain("shop", f"syslog://127.0.0.1:{receiver_port}")  # nobody listens yet
    for batch in range(10):
        serve.post_lines(token, [f"line {batch * 20 + n}" for n in range(20)])
    status = serve.drain_status("shop")
    assert status["lag_messages"] == 200
    serve.kill()

    serve.start()
    assert serve.history("shop") == [f"line {n}" for n in range(200)]
    health = httpx.get(f"{serve.api}/healthcheck", timeout=30)
    assert health.headers["Logplex-Spool"] == "durable"
    spool = httpx.get(f"{serve.api}/healthcheck/spool", timeout=30).json()
    assert spool["mode"] == "durable"
    assert spool["bytes"] > 500  # two segments: the headers, snapshots and 200 lines
    assert spool["max_bytes"] == 1 << 30
    receiver = SyslogReceiver(receiver_port)
    try:
        texts = receiver.wait_for(200)
        assert sorted(texts, key=lambda t: int(t.split()[1])) == [f"line {n}" for n in range(200)]
        deadline = time.monotonic() + 30
        while serve.drain_status("shop")["delivered"] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert serve.drain_status("shop")["delivered"] == 200
        serve.post_lines(token, ["after"])
        assert receiver.wait_for(201)[-1] == "after"
        serve.kill()  # delivered and dropped counters continue across a restart
        serve.start()
        deadline = time.monotonic() + 30
        while serve.drain_status("shop")["delivered"] < 201 and time.monotonic() < deadline:
            time.sleep(0.1)
        status = serve.drain_status("shop")
        assert (status["delivered"], status["dropped"]) == (201, 0)
    finally:
        receiver.close()
    assert serve.stop() == 0


def test_the_disk_budget_drops_the_oldest_and_the_drain_is_told_exactly(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    serve = Serve(tmp_path / "data", "--spool-max-bytes", "1MiB", "--history", "10")
    serve_factory.append(serve)
    serve.start()
    token = serve.create_channel("shop")
    receiver_port = free_port()
    serve.add_drain("shop", f"syslog://127.0.0.1:{receiver_port}")
    published = 0
    for _ in range(60):  # about 4 MiB of lines that hardly compress
        serve.post_lines(
            token, [f"line {published + n} {os.urandom(400).hex()}" for n in range(100)]
        )
        published += 100
    deadline = time.monotonic() + 30
    while serve.metric("logplex_spool_bytes") > 1.3 * (1 << 20) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert serve.metric("logplex_spool_bytes") <= 1.3 * (1 << 20)
    receiver = SyslogReceiver(receiver_port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            texts = receiver.wait_for(0, 0)
            lines = [t for t in texts if t.startswith("line ")]
            told = sum(int(t.split(": ")[1].split()[0]) for t in texts if "Error L10" in t)
            if len(lines) + told >= published:
                break
            time.sleep(0.2)
        assert told > 0
        assert len(lines) + told == published
        assert len(set(lines)) == len(lines)
        assert serve.drain_status("shop")["dropped"] == told
    finally:
        receiver.close()


def test_a_torn_tail_is_cut_at_start_and_check_reports_it(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    serve = Serve(tmp_path / "data")
    serve_factory.append(serve)
    serve.start()
    token = serve.create_channel("shop")
    serve.post_lines(token, ["one", "two"])
    serve.kill()
    spool = tmp_path / "data" / "spool"
    newest = sorted(spool.glob("*.seg"))[-1]
    with newest.open("ab") as file:
        file.write(b"\xa7LPR\x00\x00\x01\x00torn")  # a record cut short by a crash
    check = subprocess.run(
        [LOGPLEX, "spool", "check", str(spool)], capture_output=True, text=True, env=child_env()
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert "torn tail of 12 bytes" in check.stdout
    serve.start()
    assert serve.history("shop") == ["one", "two"]
    assert "torn tail of 12 bytes" in serve.stderr()
    assert serve.metric("logplex_spool_torn_bytes_total") == 12
    assert serve.stop() == 0
    clean = subprocess.run(
        [LOGPLEX, "spool", "check", str(spool)], capture_output=True, text=True, env=child_env()
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no damage" in clean.stdout


def limit_file_size(size: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def test_a_disk_that_refuses_writes_degrades_to_memory_and_comes_back(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    """RLIMIT_FSIZE makes every write past 200 KB fail (EFBIG), as a full disk fails them
    with ENOSPC: the router keeps running, says so, delivers from memory, and goes back to
    the disk with a new segment when it can."""
    serve = Serve(tmp_path / "data", preexec_fn=lambda: limit_file_size(200_000))
    serve_factory.append(serve)
    serve.start()
    token = serve.create_channel("shop")
    receiver_port = free_port()
    receiver = SyslogReceiver(receiver_port)
    try:
        serve.add_drain("shop", f"syslog://127.0.0.1:{receiver_port}")
        published = 0
        modes = set()
        for _ in range(40):
            serve.post_lines(
                token, [f"line {published + n} {os.urandom(100).hex()}" for n in range(50)]
            )
            published += 50
            modes.add(httpx.get(f"{serve.api}/healthcheck/spool").json()["mode"])
        assert "memory" in modes
        texts = receiver.wait_for(published)
        lines = [t for t in texts if t.startswith("line ")]
        told = sum(int(t.split(": ")[1].split()[0]) for t in texts if "Error L10" in t)
        assert len(set(lines)) + told == published
        assert "cannot write" in serve.stderr()
        assert serve.metric("logplex_spool_write_errors_total") >= 1
        deadline = time.monotonic() + 20
        while "batches are durable again" not in serve.stderr() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "batches are durable again" in serve.stderr()
        assert httpx.get(f"{serve.api}/healthcheck").status_code == 200
    finally:
        receiver.close()
