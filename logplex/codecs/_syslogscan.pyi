"""Types of the C frame scanner (logplex/codecs/_syslogscan.c)."""

def scan_common(
    data: bytes, max_frame_bytes: int, start: int = 0, /
) -> tuple[int, list[bytes], list[int], list[bytes], list[bytes], int]: ...
