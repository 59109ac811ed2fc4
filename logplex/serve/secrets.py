"""Where the router's secrets live, and who else may read them (docs/security.md).

The data dir holds the config database (every channel's tokens), the spool (every accepted
log line) and, unless one is given, the generated API key; ``--auth-key-file`` and
``--tls-key`` name files holding keys. A directory or file that other users of the machine
may read (or, for the directory, enter or write) gives those users the keys and the logs,
so at start each is checked (``check_private``): group or world permission bits refuse the
start with the exact ``chmod`` to run, unless ``--allow-insecure-permissions`` is given, in
which case a warning is logged and the router starts.

``--auth-key KEY`` on the command line is visible to every local user in ``ps``
(``/proc/PID/cmdline`` is world-readable); ``warn_key_in_argv`` says so and names the
alternatives: ``--auth-key-file FILE`` or ``LOGPLEX_AUTH_KEY`` (a process's environment is
readable by its owner only). ``read_key_file`` reads a key file, refusing an empty one.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from logplex.serve.settings import ServeConfigError

log = logging.getLogger(__name__)

# Permission bits that let anyone but the owner in: read, write or search for group/others.
SHARED_BITS: Final = stat.S_IRWXG | stat.S_IRWXO
MAX_KEY_FILE_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Exposure:
    """A path others may access: what it is, its mode and the mode it should have."""

    what: str
    path: Path
    mode: int
    wanted: int

    def describe(self) -> str:
        return (
            f"{self.what} {self.path} has mode {self.mode:04o}: other users of this machine "
            f"can {'enter' if self.wanted == 0o700 else 'read'} it"
        )

    def fix(self) -> str:
        return f"chmod {self.wanted:o} {self.path}"


def exposure(path: Path, what: str) -> Exposure | None:
    """The exposure of ``path`` (following symlinks) if group or others have any access."""
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if not mode & SHARED_BITS:
        return None
    wanted = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
    return Exposure(what, path, mode, wanted)


def check_private(paths: list[tuple[Path, str]], *, allow_insecure: bool) -> list[str]:
    """Check each (path, what) that exists; the warnings logged (with ``allow_insecure``).

    Raises ServeConfigError naming every exposed path and its ``chmod`` when
    ``allow_insecure`` is false.
    """
    found = [e for path, what in paths if path.exists() and (e := exposure(path, what))]
    if not found:
        return []
    if not allow_insecure:
        lines = "; ".join(f"{e.describe()} (run: {e.fix()})" for e in found)
        raise ServeConfigError(
            f"{lines}. Fix the permissions, or start with --allow-insecure-permissions to "
            "accept the exposure"
        )
    warnings = [f"{e.describe()}; started anyway (--allow-insecure-permissions)" for e in found]
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def read_key_file(path: Path) -> str:
    """The API key in ``path`` (surrounding whitespace removed); ServeConfigError when the
    file cannot be read, is empty, or is too large to be a key."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ServeConfigError(
            f"cannot read --auth-key-file {path}: {exc.strerror or exc}"
        ) from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise ServeConfigError(
            f"--auth-key-file {path} is larger than {MAX_KEY_FILE_BYTES} bytes; it should "
            "hold only the key"
        )
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ServeConfigError(f"--auth-key-file {path} is not UTF-8 text") from None
    if not key:
        raise ServeConfigError(f"--auth-key-file {path} is empty; write the key into it")
    if "\n" in key or "\r" in key:
        raise ServeConfigError(
            f"--auth-key-file {path} holds more than one line; it should hold only the key"
        )
    return key


def key_given_in_argv(argv: list[str]) -> bool:
    """Whether ``--auth-key`` (not ``--auth-key-file``) appears among the arguments."""
    return any(arg == "--auth-key" or arg.startswith("--auth-key=") for arg in argv)


def warn_key_in_argv() -> str:
    line = (
        "--auth-key on the command line is visible to every local user (ps, "
        "/proc/PID/cmdline); use --auth-key-file FILE or the LOGPLEX_AUTH_KEY environment "
        "variable instead"
    )
    log.warning("%s", line)
    return line
