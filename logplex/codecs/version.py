"""The distribution's version, for the strings that carry it on the wire.

``User-Agent: Logplex/<version>`` on drain posts (DESIGN 5.2) and ``agent: logshim/<version>``
in HELLO (DESIGN 4) both name it; a source checkout that was never installed says ``0``.
"""

from __future__ import annotations

import functools
import importlib.metadata


@functools.cache
def package_version() -> str:
    try:
        return importlib.metadata.version("logplex")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - uninstalled checkout
        return "0"
