"""The listener fuzzer's short run: 30 s of mutated shim, syslog and HTTP traffic at a real
``logplex serve`` (``perf/fuzz_listeners.py``) must crash nothing, log no traceback or ERROR
line and cost the canary (a shim, a tail, a health probe) no line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZER = ROOT / "perf" / "fuzz_listeners.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("fuzz") / "report.json"
    done = subprocess.run(
        [sys.executable, str(FUZZER), "--duration", "30", "--seed", "7", "--report", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert path.exists(), f"the fuzzer wrote no report (exit {done.returncode}):\n{done.stderr}"
    result: dict[str, Any] = json.loads(path.read_text())
    result["summary"] = done.stdout
    return result


@pytest.mark.slow
def test_every_listener_was_fuzzed(report: dict[str, Any]) -> None:
    for listener in ("shim", "syslog", "http_logs", "http_api", "http_raw"):
        assert report["inputs_per_listener"].get(listener, 0) > 0, report["summary"]
    assert report["canary_printed"] > 0, report["summary"]


@pytest.mark.slow
def test_the_router_did_not_crash(report: dict[str, Any]) -> None:
    assert report["router_crashes"] == 0, report["summary"]


@pytest.mark.slow
def test_the_router_logged_no_traceback_or_error(report: dict[str, Any]) -> None:
    assert report["router_tracebacks"] == 0, report["summary"]
    assert report["router_error_lines"] == 0, report["summary"]


@pytest.mark.slow
def test_the_canary_lost_no_line(report: dict[str, Any]) -> None:
    assert report["canary_lines_lost"] == 0, report["summary"]
    assert report["probe_failures"] == 0, report["summary"]
