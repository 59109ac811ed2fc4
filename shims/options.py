"""Command line and environment of ``logshim`` (DESIGN section 6, the options table).

Parsed before the app is spawned, so this module stays cheap to import: ``argparse`` and
``os`` only (no dataclasses, no urllib). Every option with an environment twin takes the
flag first, then the environment, then the default.

A PID 1 shim must never keep the app from running. Problems with where and how lines are
shipped (a malformed ``--url``, no token, an unreadable token or CA file) are reported on
stderr (``ShimOptions.warnings``) and the shim supervises without shipping; an invalid
``--ps`` is replaced by the default and reported on stderr and as a notice
(``ShimOptions.notices``, see ``check_ps``), so lines still ship. Only errors in the
supervision options themselves (no command, a bad ``--grace`` or ``-e``) exit with status 2
and a message that says which option was wrong and what it expects.

Tokens are secrets. They are read from the environment or from a file (``--token-file``,
``--platform-token-file`` or their ``*_FILE`` variables; contents stripped), never needed in
argv: ``--token`` still works but every process of the container can read argv, so it is
reported once on stderr. ``app_environment`` removes the shim's secret variables from what
the app inherits, so the app cannot post notices under the platform token.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

DEFAULT_GRACE_S = 25.0
DEFAULT_FLUSH_TIMEOUT_S = 3.0
DEFAULT_BUFFER_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_LINE_BYTES = 10000
MIN_BUFFER_BYTES = 64 * 1024
URL_SCHEMES = ("tcp", "tls")
MAX_TOKEN_FILE_BYTES = 4096
FALLBACK_PS = "shim"
# The shim's own secrets: read by the shim, never passed on to the app.
SECRET_VARIABLES = frozenset(
    {
        "LOGPLEX_TOKEN",
        "LOGPLEX_TOKEN_FILE",
        "LOGPLEX_PLATFORM_TOKEN",
        "LOGPLEX_PLATFORM_TOKEN_FILE",
    }
)
ARGV_TOKEN_WARNING = (
    "logshim: {flag} puts a secret in argv, which every process in the container can read "
    "(/proc/PID/cmdline); use {file_flag} FILE or the {variable} variable instead"
)


class RouterAddress:
    """Where the router's shim listener is: ``tcp://host:port`` or ``tls://host:port``."""

    __slots__ = ("host", "port", "tls")

    def __init__(self, host: str, port: int, *, tls: bool) -> None:
        self.host = host
        self.port = port
        self.tls = tls

    def __repr__(self) -> str:
        scheme = "tls" if self.tls else "tcp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


class ShimOptions:
    """The parsed options; ``command`` is the app's argv (never empty).

    ``warnings`` are start-up problems for stderr; ``notices`` are those also shipped as
    notices once the shim ships (each a one-line ``logshim: …`` text).
    """

    __slots__ = (
        "block",
        "buffer_bytes",
        "ca_file",
        "command",
        "flush_timeout_s",
        "grace_s",
        "max_line_bytes",
        "notices",
        "platform_token",
        "ps",
        "router",
        "single_child",
        "success_codes",
        "tee",
        "token",
        "warnings",
    )

    def __init__(
        self,
        *,
        command: list[str],
        router: RouterAddress | None = None,
        token: str | None = None,
        ca_file: str | None = None,
        ps: str = "shim",
        platform_token: str | None = None,
        tee: bool = True,
        single_child: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
        flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        block: bool = False,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        success_codes: frozenset[int] = frozenset(),
        warnings: tuple[str, ...] = (),
        notices: tuple[str, ...] = (),
    ) -> None:
        self.command = command
        self.router = router
        self.token = token
        self.ca_file = ca_file
        self.ps = ps
        self.platform_token = platform_token
        self.tee = tee
        self.single_child = single_child
        self.grace_s = grace_s
        self.flush_timeout_s = flush_timeout_s
        self.buffer_bytes = buffer_bytes
        self.block = block
        self.max_line_bytes = max_line_bytes
        self.success_codes = success_codes
        self.warnings = warnings
        self.notices = notices


def parse_router_url(url: str) -> RouterAddress:
    """``tcp://host:port`` / ``tls://host:port`` (IPv6 hosts in brackets) → ``RouterAddress``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in URL_SCHEMES:
        raise ValueError(f"router URL {url!r} must start with tcp:// or tls://")
    hostport = rest.rstrip("/")
    if hostport.startswith("["):
        host, bracket, port_text = hostport[1:].partition("]")
        port_text = port_text.removeprefix(":") if bracket and port_text.startswith(":") else ""
    else:
        host, _, port_text = hostport.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"router URL {url!r} must name a host and a port, e.g. tcp://router:6001")
    return RouterAddress(host, int(port_text), tls=scheme == "tls")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def _exit_code(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 255:
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logshim",
        usage="logshim [OPTIONS] -- COMMAND [ARGS...]",
        description="Run COMMAND as a supervised child: forward signals, reap zombies, exit "
        "with its status, and ship its stdout/stderr lines to a logplex router.",
    )
    add = parser.add_argument
    add("--url", help="router shim listener, tcp://HOST:PORT or tls://HOST:PORT (LOGPLEX_URL)")
    add(
        "--token",
        help="channel token t.<uuid> the lines are written under (LOGPLEX_TOKEN); visible to "
        "every process in argv, prefer --token-file",
    )
    add(
        "--token-file",
        metavar="FILE",
        help="read the channel token from FILE (LOGPLEX_TOKEN_FILE)",
    )
    add("--ca-file", help="CA bundle that verifies a tls:// router (LOGPLEX_CA_FILE)")
    add("--ps", help="process name, e.g. web.1 (LOGPLEX_PS, else DYNO, else the hostname)")
    add(
        "--platform-token",
        help="token for lifecycle notices (LOGPLEX_PLATFORM_TOKEN); prefer --platform-token-file",
    )
    add(
        "--platform-token-file",
        metavar="FILE",
        help="read the platform token from FILE (LOGPLEX_PLATFORM_TOKEN_FILE)",
    )
    add("--no-tee", action="store_true", help="do not copy the app's output (LOGSHIM_TEE=0)")
    add("--single-child", action="store_true", help="signal the app only, not its group")
    add(
        "--grace",
        type=_positive_float,
        metavar="SECONDS",
        help="SIGTERM to SIGKILL, default 25 (LOGSHIM_GRACE)",
    )
    add(
        "--flush-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="shipping time after the app exits, default 3",
    )
    add("--buffer-bytes", type=int, metavar="N", help="memory for unshipped lines, default 8 MiB")
    add("--block", action="store_true", help="let the app block instead of dropping lines")
    add("--max-line-bytes", type=int, metavar="N", help="split longer lines, default 10000")
    add(
        "-e",
        dest="success_codes",
        type=_exit_code,
        action="append",
        metavar="CODE",
        help="exit 0 when the exit code is CODE (repeatable)",
    )
    add("command", nargs=argparse.REMAINDER, help="the app and its arguments, after --")
    return parser


def read_token_file(path: str) -> str:
    """The token in ``path``, surrounding whitespace stripped; ``ValueError`` saying why not."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r} ({exc.strerror or exc})") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"{path!r} is over {MAX_TOKEN_FILE_BYTES} bytes; it must hold one token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path!r} holds non-ASCII bytes; it must hold one token") from None
    if not token:
        raise ValueError(f"{path!r} is empty; it must hold one token")
    return token


def _token(
    name: str,
    *,
    flag_value: str | None,
    file_flag_value: str | None,
    environ: Mapping[str, str],
    warnings: list[str],
) -> str | None:
    """One token, from the first of: ``--NAME``, ``--NAME-file``, ``VAR``, ``VAR_FILE``."""
    flag = f"--{name}"
    variable = "LOGPLEX_" + name.upper().replace("-", "_")
    if flag_value:
        warnings.append(
            ARGV_TOKEN_WARNING.format(flag=flag, file_flag=f"{flag}-file", variable=variable)
        )
        return flag_value
    path, source = file_flag_value, f"{flag}-file"
    if not path:
        if environ.get(variable):
            return environ[variable]
        path, source = environ.get(f"{variable}_FILE"), f"{variable}_FILE"
    if not path:
        return None
    try:
        return read_token_file(path)
    except ValueError as exc:
        warnings.append(f"logshim: {source}: {exc}")
        return None


def app_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What the app inherits: the shim's environment without the shim's own secrets."""
    return {name: value for name, value in environ.items() if name not in SECRET_VARIABLES}


def parse_options(argv: Sequence[str], environ: Mapping[str, str]) -> ShimOptions:
    """Parse argv (without the program name); exits with status 2 on a usage error that
    leaves nothing sensible to run. Shipping problems become ``warnings`` instead."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given; usage: logshim [OPTIONS] -- COMMAND [ARGS...]")

    def env(name: str) -> str | None:
        value = environ.get(name)
        return value if value else None

    warnings: list[str] = []
    token = _token(
        "token",
        flag_value=args.token,
        file_flag_value=args.token_file,
        environ=environ,
        warnings=warnings,
    )
    platform_token = _token(
        "platform-token",
        flag_value=args.platform_token,
        file_flag_value=args.platform_token_file,
        environ=environ,
        warnings=warnings,
    )

    url_flag = "--url" if args.url else "LOGPLEX_URL"
    url = args.url or env("LOGPLEX_URL")
    router = None
    if url:
        try:
            router = parse_router_url(url)
        except ValueError as exc:
            warnings.append(f"logshim: {url_flag}: {exc}; running the app without shipping")
    if router is not None and not token:
        warnings.append(
            f"logshim: {url_flag} needs a channel token: set LOGPLEX_TOKEN_FILE (or "
            "--token-file FILE, or LOGPLEX_TOKEN); running the app without shipping"
        )
        router = None

    ca_file = args.ca_file or env("LOGPLEX_CA_FILE")
    if ca_file and not os.path.isfile(ca_file):
        if router is not None:
            warnings.append(
                f"logshim: --ca-file {ca_file!r} is not a readable file; give a PEM CA bundle; "
                "running the app without shipping"
            )
        router = None

    grace_s = args.grace
    if grace_s is None:
        grace_env = env("LOGSHIM_GRACE")
        try:
            grace_s = _positive_float(grace_env) if grace_env else DEFAULT_GRACE_S
        except ValueError:
            parser.error(f"LOGSHIM_GRACE={grace_env!r} is not a number of seconds")
    buffer_bytes = DEFAULT_BUFFER_BYTES if args.buffer_bytes is None else args.buffer_bytes
    if buffer_bytes < MIN_BUFFER_BYTES:
        parser.error(f"--buffer-bytes must be at least {MIN_BUFFER_BYTES} (64 KiB)")
    max_line_bytes = DEFAULT_MAX_LINE_BYTES if args.max_line_bytes is None else args.max_line_bytes
    if not 4 <= max_line_bytes <= DEFAULT_MAX_LINE_BYTES:
        parser.error(f"--max-line-bytes must be between 4 and {DEFAULT_MAX_LINE_BYTES}")

    return ShimOptions(
        command=command,
        router=router,
        token=token,
        ca_file=ca_file,
        ps=args.ps or env("LOGPLEX_PS") or env("DYNO") or os.uname().nodename,
        platform_token=platform_token,
        tee=not args.no_tee and environ.get("LOGSHIM_TEE", "1") != "0",
        single_child=args.single_child,
        grace_s=grace_s,
        flush_timeout_s=(
            DEFAULT_FLUSH_TIMEOUT_S if args.flush_timeout is None else args.flush_timeout
        ),
        buffer_bytes=buffer_bytes,
        block=args.block,
        max_line_bytes=max_line_bytes,
        success_codes=frozenset(args.success_codes or ()),
        warnings=tuple(warnings),
    )


def ps_problem(ps: str) -> str | None:
    """Why ``ps`` cannot be a process name (the router's PROCID rule), or None if it can."""
    from logplex.codecs.errors import EncodeError
    from logplex.codecs.rfc5424 import PROCID_MAX, check_header_field

    try:
        check_header_field("PROCID (ps)", ps.encode("utf-8", "surrogateescape"), PROCID_MAX)
    except EncodeError as exc:
        return str(exc)
    return None


def check_ps(options: ShimOptions) -> str | None:
    """Replace an invalid ``options.ps`` by the default so lines still ship; the warning.

    Called once the app runs (the syslog codec is not cheap to import); the warning is also
    added to ``options.notices``.
    """
    problem = ps_problem(options.ps)
    if problem is None:
        return None
    fallback = os.uname().nodename
    if ps_problem(fallback) is not None:
        fallback = FALLBACK_PS
    warning = (
        f"logshim: process name (--ps, LOGPLEX_PS or DYNO) {options.ps!r} is not valid: "
        f"{problem}; using {fallback!r} so lines still ship"
    )
    options.ps = fallback
    options.notices = (*options.notices, warning)
    return warning
