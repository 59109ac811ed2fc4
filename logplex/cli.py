"""The ``logplex`` console script."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logplex", description="log router and admin CLI")
    parser.parse_args(argv)
    parser.print_help()
    return 0
