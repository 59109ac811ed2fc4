"""``logplex tail``: print a channel's lines exactly as ``heroku logs`` does.

DESIGN section 2 and 5.3. The command creates a session (``POST /v3/sessions``) and streams
its URL. Lines are printed byte for byte as the router sends them (``TS SOURCE[PS]: MSG``);
on a terminal each ps gets its own colour on the ``TS SOURCE[PS]:`` prefix, as the Heroku
CLI does, and ``--json`` prints one JSON object per line for machines. Ctrl-C ends it with
status 0, and so does a closed stdout (``logplex tail -t app | head``). Ctrl-C in a terminal
reaches a router started there too, which then cuts the stream: whichever the process sees
first, an interrupted tail exits 0. A live tail cut by the router at any other time (it
stopped or restarted) exits 1 saying so.

The line splitting and colouring are pure functions over bytes, tested by table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from types import FrameType
from typing import BinaryIO, NamedTuple

import httpx

from logplex.cli.client import ApiClient, CliError, api_error_message, connection_error

# Heroku's CLI colours dynos from a small palette; these are ANSI foreground colours that
# read well on dark and light terminals. Router notices (heroku[logplex]) come out like any ps.
PALETTE = (b"36", b"33", b"32", b"35", b"34", b"96", b"93", b"92", b"95", b"94")
RESET = b"\x1b[0m"
CONNECT_TIMEOUT_S = 10.0
HISTORY_READ_TIMEOUT_S = 60.0


class TailLine(NamedTuple):
    ts: bytes
    source: bytes
    ps: bytes
    msg: bytes


def split_tail_line(line: bytes) -> TailLine | None:
    """Split ``TS SP SOURCE[PS]: SP MSG`` (no LF) into its parts; None if it is not one."""
    ts, sep, rest = line.partition(b" ")
    if not sep:
        return None
    head, sep, msg = rest.partition(b"]: ")
    if not sep:
        return None
    source, sep, ps = head.partition(b"[")
    if not sep or not source:
        return None
    return TailLine(ts, source, ps, msg)


class Colourer:
    """Gives each ps the next colour of the palette the first time it is seen."""

    def __init__(self) -> None:
        self._by_ps: dict[bytes, bytes] = {}

    def colour_for(self, ps: bytes) -> bytes:
        colour = self._by_ps.get(ps)
        if colour is None:
            colour = PALETTE[len(self._by_ps) % len(PALETTE)]
            self._by_ps[ps] = colour
        return colour

    def paint(self, line: bytes) -> bytes:
        """``line`` (no LF) with its ``TS SOURCE[PS]:`` prefix in the ps's colour."""
        parts = split_tail_line(line)
        if parts is None:
            return line
        prefix_len = len(line) - len(parts.msg) - 1  # up to and including the ':'
        colour = self.colour_for(parts.ps)
        return b"\x1b[" + colour + b"m" + line[:prefix_len] + RESET + line[prefix_len:]


def line_as_json(line: bytes) -> bytes:
    """One JSON object for a tail line: ``{"ts", "source", "ps", "msg"}`` (text, UTF-8)."""
    parts = split_tail_line(line)
    if parts is None:
        record = {"line": line.decode("utf-8", "replace")}
    else:
        record = {
            "ts": parts.ts.decode("ascii", "replace"),
            "source": parts.source.decode("utf-8", "replace"),
            "ps": parts.ps.decode("utf-8", "replace"),
            "msg": parts.msg.decode("utf-8", "replace"),
        }
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


class LinePrinter:
    """Re-assembles lines from body chunks and writes them in the chosen style."""

    def __init__(self, out: BinaryIO, *, colour: bool, as_json: bool) -> None:
        self._out = out
        self._colourer = Colourer() if colour else None
        self._as_json = as_json
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        complete, sep, self._partial = data.rpartition(b"\n")
        if not sep:
            self._partial = data
            return
        if self._as_json:
            self._out.write(b"".join(line_as_json(line) + b"\n" for line in complete.split(b"\n")))
        elif self._colourer is not None:
            paint = self._colourer.paint
            self._out.write(b"".join(paint(line) + b"\n" for line in complete.split(b"\n")))
        else:
            self._out.write(complete + b"\n")
        self._out.flush()

    def finish(self) -> None:
        if self._partial:
            self.feed(b"\n")


def wants_colour(out: BinaryIO, environ: dict[str, str]) -> bool:
    return out.isatty() and "NO_COLOR" not in environ and environ.get("TERM") != "dumb"


class Interrupts:
    """Ctrl-C (SIGINT) ends the tail at once with status 0, wherever the main thread is.

    A ``KeyboardInterrupt`` raised at an arbitrary point of the HTTP client can land while
    it holds one of its locks, and its close then waits on that lock for ever (a tail that
    would not stop under load). So the handler does not unwind through the client: it
    flushes what was already printed and leaves the process, whose exit closes the stream.
    A flush refused because the signal came in the middle of a write loses only the part of
    a line not yet printed.
    """

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            self.out.flush()
        os._exit(0)


def run_tail(api: ApiClient, args: argparse.Namespace) -> int:
    if args.num < 0:
        raise CliError(f"-n/--num must be 0 or more, not {args.num}")
    body: dict[str, object] = {"channel_id": args.channel, "num": str(args.num)}
    if args.tail:
        body["tail"] = True
    if args.ps:
        body["ps"] = args.ps
    if args.source:
        body["source"] = args.source
    out = sys.stdout.buffer
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, Interrupts(out))
    url = api.request("POST", "/v3/sessions", json_body=body, expect=(201,)).json()["url"]
    printer = LinePrinter(
        out, colour=not args.json and wants_colour(out, dict(os.environ)), as_json=bool(args.json)
    )
    read_timeout = None if args.tail else HISTORY_READ_TIMEOUT_S
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=read_timeout)
    streaming = False
    try:
        # No API key on this request: the session URL is the credential (and may be on
        # another host, the router's --public-url).
        with httpx.stream("GET", url, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                raise CliError(api_error_message(response))
            streaming = True
            for chunk in response.iter_raw():
                printer.feed(chunk)
        printer.finish()
    except httpx.HTTPError as error:
        if streaming and isinstance(error, httpx.RemoteProtocolError):
            raise CliError(
                f"the router closed the stream of {url} ({error}): it was stopped or "
                "restarted; run logplex tail again once it is back"
            ) from None
        raise connection_error(url, error) from None
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining
        # about flushing the closed stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0
