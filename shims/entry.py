"""The ``logshim`` console script."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logshim", description="supervisor shim")
    parser.parse_args(argv)
    parser.print_help()
    return 0
