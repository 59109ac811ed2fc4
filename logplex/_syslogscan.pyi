"""Types of the C frame scanner (logplex/_syslogscan.c)."""

def scan_common(
    data: bytes, max_frame_bytes: int, /
) -> tuple[int, list[bytes], list[int], list[bytes], list[bytes], int]: ...
