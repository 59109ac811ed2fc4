"""The synthetic log line every throughput benchmark sends, so their figures compare."""

from __future__ import annotations

LINE_BYTES = 100


def line(n: int) -> bytes:
    """Line ``n``: an access-log-shaped line of exactly ``LINE_BYTES`` bytes, no LF."""
    head = b"%08d GET /api/v1/items/%d status=200 bytes=%d duration_ms=%d " % (
        n,
        n % 9973,
        n % 65536,
        n % 997,
    )
    return (head + b"x" * LINE_BYTES)[:LINE_BYTES]
