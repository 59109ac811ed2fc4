"""Types of the C frame formatter (logplex/codecs/_cframes.c)."""

from collections.abc import Callable

def frames_with_headers(
    messages: list[tuple[int, int, bytes, bytes, bytes]],
    parts_of: Callable[[int, bytes, bytes], tuple[bytes, bytes, int]],
    prefix_of: Callable[[int], bytes],
    /,
) -> list[bytes] | None: ...
