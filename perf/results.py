"""The one way every benchmark records a result: a row appended to perf/RESULTS.md.

A row holds the date (UTC), the machine (architecture, CPU count, Python), the commit, the
command that produced it and its JSON results, so a figure can always be traced and rerun.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "perf" / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "| date | machine | commit | command | results |\n"
    "|---|---|---|---|---|\n"
)


def commit() -> str:
    """The short hash of HEAD, or ``unknown`` outside a git checkout."""
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cpu {platform.python_version()}"


def append_results(command: str, results: dict[str, Any]) -> None:
    """Append one row for ``command`` with ``results`` (JSON) to perf/RESULTS.md."""
    if not RESULTS.exists():
        RESULTS.write_text(HEADER)
    now = datetime.datetime.now(datetime.UTC)
    row = json.dumps(results, separators=(",", ":"))
    with RESULTS.open("a") as file:
        file.write(f"| {now:%Y-%m-%d %H:%M} | {machine()} | {commit()} | `{command}` | `{row}` |\n")
