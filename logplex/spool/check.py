"""``logplex spool check DIR``: verify a spool offline and print what it found.

Reads every segment and the cursor journal without writing anything (a torn tail is reported,
not cut: the router cuts it at its next start). Exit status: 0 when nothing is damaged, 1 when
something is (each finding printed), 2 when DIR is not a spool directory.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import TextIO

from logplex.spool.cursors import JOURNAL_NAME, read_journal
from logplex.spool.recovery import scan_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="verify a spool directory without changing it")
    check.add_argument("directory", metavar="DIR", type=Path, help="the spool (DATA_DIR/spool)")


def check(directory: Path, out: TextIO) -> int:
    if not directory.is_dir():
        print(f"logplex spool check: {directory} is not a directory", file=sys.stderr)
        return 2
    if not any(directory.glob("*.seg")):
        print(f"logplex spool check: {directory} holds no spool segments (*.seg)", file=sys.stderr)
        return 2
    found = scan_directory(directory, repair=False)
    states, journal_damage = read_journal(directory / JOURNAL_NAME)
    size = sum(segment.size for segment in found.segments)
    messages = sum(b.count for batches in found.batches.values() for b in batches)
    print(f"spool {directory}", file=out)
    print(
        f"  {len(found.segments)} segments, {size} bytes of valid data, {found.records} records",
        file=out,
    )
    if found.segments:
        oldest = datetime.datetime.fromtimestamp(found.segments[0].created_us / 1e6, datetime.UTC)
        print(f"  oldest segment created {oldest.isoformat(timespec='seconds')}", file=out)
    print(f"  {len(found.batches)} channels, {messages} messages held", file=out)
    print(f"  {len(found.streams)} shim streams, {len(states)} drain cursors", file=out)
    for problem in found.problems:
        print(f"  problem: {problem}", file=out)
    if journal_damage:
        print(f"  problem: {JOURNAL_NAME}: {journal_damage} unreadable records", file=out)
    damaged = not found.clean or journal_damage
    print("  damage found" if damaged else "  no damage", file=out)
    return 1 if damaged else 0


def main(args: argparse.Namespace) -> int:
    return check(args.directory, sys.stdout)
