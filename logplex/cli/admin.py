"""The ``logplex`` console script: ``serve``, ``sink`` and the admin and developer commands.

DESIGN section 2. ``serve`` and ``sink`` hand over to ``logplex.serve.wiring`` and ``drains.sink``
(imported only when asked for, so admin commands start fast). The other commands talk to the
router's HTTP API (DESIGN section 3) with httpx:

    logplex channels create NAME [--token app --token heroku] [--json]
    logplex channels show NAME | delete NAME | list
    logplex tokens add CHANNEL NAME
    logplex drains add CHANNEL URL | list CHANNEL | remove CHANNEL ID
    logplex tail CHANNEL [-n NUM] [-t] [-s SRC] [-p PS] [--json]

The API is ``--api URL`` / ``LOGPLEX_API_URL`` (default ``http://127.0.0.1:8001``); the key is
``--auth-key`` / ``LOGPLEX_AUTH_KEY``, else the local router's ``DATA_DIR/auth-key`` (DATA_DIR
from ``--data-dir`` / ``LOGPLEX_DATA_DIR``, default ``./.logplex``). Exit status: 0 done,
1 the API refused or could not be reached (the message says which and why), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8001"
DEFAULT_DATA_DIR = "./.logplex"
REQUEST_TIMEOUT_S = 30.0


class CliError(Exception):
    """Printed as ``logplex: error: MESSAGE``; exit status 1."""


# -- configuration ----------------------------------------------------------------------------


def resolve_api_url(args: argparse.Namespace, environ: dict[str, str]) -> str:
    url: str = args.api or environ.get("LOGPLEX_API_URL") or DEFAULT_API_URL
    return url.rstrip("/")


def resolve_auth_key(args: argparse.Namespace, environ: dict[str, str]) -> str:
    """``--auth-key``, else ``LOGPLEX_AUTH_KEY``, else the data dir's ``auth-key`` file."""
    if args.auth_key:
        return str(args.auth_key)
    if environ.get("LOGPLEX_AUTH_KEY"):
        return environ["LOGPLEX_AUTH_KEY"]
    data_dir = Path(args.data_dir or environ.get("LOGPLEX_DATA_DIR") or DEFAULT_DATA_DIR)
    key_file = data_dir / "auth-key"
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CliError(
            f"no API key: pass --auth-key or set LOGPLEX_AUTH_KEY, or run where the router's "
            f"data dir is ({key_file} does not exist; set --data-dir or LOGPLEX_DATA_DIR)"
        ) from None
    except OSError as error:
        raise CliError(f"cannot read the API key from {key_file}: {error.strerror}") from None
    if not key:
        raise CliError(f"the API key file {key_file} is empty")
    return key


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for tables printed on terminals)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# -- HTTP -------------------------------------------------------------------------------------


class ApiClient:
    """Small synchronous client of the router API; every failure becomes a ``CliError``."""

    def __init__(self, base_url: str, auth_key: str) -> None:
        self.base_url = base_url
        self._client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {auth_key}"},
            timeout=REQUEST_TIMEOUT_S,
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self, method: str, path: str, *, json_body: object = None, expect: Sequence[int] = (200,)
    ) -> httpx.Response:
        try:
            response = self._client.request(method, path, json=json_body)
        except httpx.HTTPError as error:
            raise connection_error(self.base_url, error) from None
        if response.status_code not in expect:
            raise CliError(api_error_message(response))
        return response


def connection_error(base_url: str, error: httpx.HTTPError) -> CliError:
    if isinstance(error, httpx.ConnectError):
        return CliError(
            f"cannot connect to the logplex API at {base_url} ({error}); the router may not "
            "be running: start it with `logplex serve`, or point --api / LOGPLEX_API_URL at it"
        )
    if isinstance(error, httpx.TimeoutException):
        return CliError(f"the logplex API at {base_url} did not answer in time ({error!r})")
    return CliError(f"talking to the logplex API at {base_url} failed: {error}")


def api_error_message(response: httpx.Response) -> str:
    try:
        reason = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        reason = response.text.strip() or response.reason_phrase
    hint = ""
    if response.status_code == 401:
        hint = " (check --auth-key / LOGPLEX_AUTH_KEY or the data dir's auth-key)"
    request = response.request
    return f"{request.method} {request.url.path}: {response.status_code} {reason}{hint}"


# -- output -----------------------------------------------------------------------------------


def print_json(value: object, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def print_channel(channel: dict[str, object], out: TextIO) -> None:
    out.write(f"channel {channel['channel']}\n")
    tokens = channel.get("tokens") or {}
    assert isinstance(tokens, dict)
    width = max((len(name) for name in tokens), default=0)
    for name, token in sorted(tokens.items()):
        out.write(f"token  {name:<{width}}  {token}\n")
    drains = channel.get("drains") or []
    assert isinstance(drains, list)
    for drain in drains:
        out.write(f"drain  {drain['id']}  {drain['token']}  {redact_url(drain['url'])}\n")


def drains_table(drains: list[dict[str, object]]) -> str:
    """The ``drains list`` table: one row per drain with its delivery status."""
    header = ("ID", "STATE", "DELIVERED", "DROPPED", "BUFFERED", "URL", "LAST ERROR")
    rows = [header]
    for drain in drains:
        status = drain.get("status") or {}
        assert isinstance(status, dict)
        rows.append(
            (
                str(drain["id"]),
                str(status.get("state", "?")),
                str(status.get("delivered", 0)),
                str(status.get("dropped", 0)),
                str(status.get("buffered", 0)),
                redact_url(str(drain["url"])),
                str(status.get("last_error") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    ]
    return "\n".join(lines) + "\n"


# -- commands ---------------------------------------------------------------------------------


def cmd_channels_create(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    """With ``--token``: the channel gets exactly those tokens (the API's PUT). Without: a
    new channel gets an ``app`` token and an existing one is left as it is, so re-running
    the command never revokes tokens that writers hold."""
    path = f"/v3/channels/{args.name}"
    if args.token:
        tokens = args.token
    else:
        existing = api.request("GET", path, expect=(200, 404))
        tokens = list(existing.json()["tokens"]) if existing.status_code == 200 else ["app"]
    response = api.request("PUT", path, json_body={"tokens": tokens}, expect=(200, 201))
    if args.json:
        print_json(response.json(), out)
    else:
        print_channel(response.json(), out)
    return 0


def cmd_channels_show(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    response = api.request("GET", f"/v3/channels/{args.name}")
    if args.json:
        print_json(response.json(), out)
    else:
        print_channel(response.json(), out)
    return 0


def cmd_channels_delete(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    api.request("DELETE", f"/v3/channels/{args.name}", expect=(204,))
    out.write(f"deleted channel {args.name}\n")
    return 0


def cmd_channels_list(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    names = api.request("GET", "/v3/channels").json()
    if args.json:
        print_json(names, out)
    else:
        out.writelines(f"{name}\n" for name in names)
    return 0


def cmd_tokens_add(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    response = api.request(
        "POST",
        f"/v3/channels/{args.channel}/tokens",
        json_body={"name": args.name},
        expect=(200, 201),
    )
    if args.json:
        print_json(response.json(), out)
    else:
        out.write(f"{response.json()['token']}\n")
    return 0


def cmd_drains_add(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    response = api.request(
        "POST", f"/v3/channels/{args.channel}/drains", json_body={"url": args.url}, expect=(201,)
    )
    drain = response.json()
    if args.json:
        print_json(drain, out)
    else:
        out.write(f"drain {drain['id']}  {drain['token']}  {redact_url(drain['url'])}\n")
    return 0


def cmd_drains_list(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    drains = api.request("GET", f"/v3/channels/{args.channel}/drains").json()
    if args.json:
        print_json(drains, out)
    else:
        out.write(drains_table(drains))
    return 0


def cmd_drains_remove(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    api.request("DELETE", f"/v3/channels/{args.channel}/drains/{args.id}", expect=(204,))
    out.write(f"removed drain {args.id} from channel {args.channel}\n")
    return 0


def cmd_tail(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    from logplex.cli.tail import run_tail

    return run_tail(api, args)


Command = Callable[[ApiClient, argparse.Namespace, TextIO], int]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", default=argparse.SUPPRESS, help="API base URL")
    common.add_argument("--auth-key", default=argparse.SUPPRESS, help="API key")
    common.add_argument("--data-dir", default=argparse.SUPPRESS, help="router data dir")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    parser = argparse.ArgumentParser(
        prog="logplex",
        description="Log router (logplex serve), drain receiver (logplex sink) and admin CLI.",
    )
    parser.add_argument(
        "--api", help=f"API base URL (env LOGPLEX_API_URL, default {DEFAULT_API_URL})"
    )
    parser.add_argument("--auth-key", help="API key (env LOGPLEX_AUTH_KEY, else DATA_DIR/auth-key)")
    parser.add_argument(
        "--data-dir",
        help=f"router data dir holding auth-key (env LOGPLEX_DATA_DIR, default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("serve", help="run the router (see `logplex serve --help`)", add_help=False)
    commands.add_parser(
        "sink", help="run a drain receiver (see `logplex sink --help`)", add_help=False
    )

    def leaf(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        command: Command,
        help_text: str,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=command)
        return sub

    channels = commands.add_parser("channels", help="create, show, delete and list channels")
    channel_commands = channels.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = leaf(channel_commands, "create", cmd_channels_create, "create or update a channel")
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "--token",
        action="append",
        metavar="NAME",
        help="token names, repeatable; the channel's full set (default: app for a new "
        "channel, the existing tokens kept for an existing one)",
    )
    leaf(channel_commands, "show", cmd_channels_show, "show a channel").add_argument(
        "name", metavar="NAME"
    )
    leaf(channel_commands, "delete", cmd_channels_delete, "delete a channel").add_argument(
        "name", metavar="NAME"
    )
    leaf(channel_commands, "list", cmd_channels_list, "list channel names")

    tokens = commands.add_parser("tokens", help="add tokens")
    token_commands = tokens.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_token = leaf(token_commands, "add", cmd_tokens_add, "add a token to a channel")
    add_token.add_argument("channel", metavar="CHANNEL")
    add_token.add_argument("name", metavar="NAME")

    drains = commands.add_parser("drains", help="add, list and remove drains")
    drain_commands = drains.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_drain = leaf(drain_commands, "add", cmd_drains_add, "add a drain to a channel")
    add_drain.add_argument("channel", metavar="CHANNEL")
    add_drain.add_argument("url", metavar="URL")
    leaf(
        drain_commands, "list", cmd_drains_list, "list a channel's drains with their status"
    ).add_argument("channel", metavar="CHANNEL")
    remove_drain = leaf(drain_commands, "remove", cmd_drains_remove, "remove a drain")
    remove_drain.add_argument("channel", metavar="CHANNEL")
    remove_drain.add_argument("id", metavar="ID", type=int)

    tail = leaf(commands, "tail", cmd_tail, "print a channel's recent lines, like `heroku logs`")
    tail.add_argument("channel", metavar="CHANNEL")
    tail.add_argument("-n", "--num", type=int, default=100, help="history lines (default 100)")
    tail.add_argument("-t", "--tail", action="store_true", help="keep printing live lines")
    tail.add_argument("-s", "--source", help="only lines of this source (token name)")
    tail.add_argument("-p", "--ps", help="only this process, or this type (web matches web.1)")
    return parser


def _delegate(name: str, argv: list[str]) -> int:
    """``logplex serve …`` / ``logplex sink …``: the module owns its flags."""
    module = importlib.import_module("logplex.serve.wiring" if name == "serve" else "drains.sink")
    parser = argparse.ArgumentParser(prog=f"logplex {name}")
    module.add_arguments(parser)
    result: int = module.main(parser.parse_args(argv))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("serve", "sink"):
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "sink"):  # reached only with global options before it
        parser.error(f"put options of `{args.command}` after the word {args.command}")
    environ = dict(os.environ)
    try:
        api = ApiClient(resolve_api_url(args, environ), resolve_auth_key(args, environ))
        try:
            handler: Command = args.handler
            return handler(api, args, sys.stdout)
        finally:
            api.close()
    except CliError as error:
        print(f"logplex: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
