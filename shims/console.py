"""The shim's own messages on its stderr (DESIGN sections 6 and 8).

The shim's stderr may be a closed pipe, a full one, or a terminal the shim is no longer in
the foreground of; none of that may disturb supervision. ``warn`` writes one line and
swallows any error: a message that cannot be shown is not worth crashing the shim (or
changing its exit code) over.
"""

from __future__ import annotations

import contextlib
import os


def warn(message: str) -> None:
    """Write ``logshim: …`` as one line to fd 2, best effort."""
    line = message if message.startswith("logshim: ") else f"logshim: {message}"
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode("utf-8", "backslashreplace"))
