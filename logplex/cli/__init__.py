"""The ``logplex`` console script: admin commands, the API client and ``logplex tail``."""

from __future__ import annotations

from logplex.cli.admin import main

__all__ = ["main"]
