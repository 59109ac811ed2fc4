"""The ``logplex`` console script: ``serve``, ``sink`` and the admin and developer commands.

DESIGN section 2. ``serve`` and ``sink`` hand over to ``logplex.serve.wiring`` and ``drains.sink``
(imported only when asked for, so admin commands start fast). The other commands talk to the
router's HTTP API (DESIGN section 3) with httpx:

    logplex channels create NAME [--token app --token heroku] [--json]
    logplex channels show NAME | delete NAME | list
    logplex tokens add CHANNEL NAME
    logplex drains add CHANNEL URL | list CHANNEL | remove CHANNEL ID
    logplex tail CHANNEL [-n NUM] [-t] [-s SRC] [-p PS] [--json]

Where the API is and which key it takes is resolved in ``logplex.cli.client``. Exit status:
0 done, 1 the API refused or could not be reached (the message says which and why), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from drains import InvalidDrainURL, parse_drain_url
from logplex.cli.client import (
    DEFAULT_API_URL,
    DEFAULT_DATA_DIR,
    ApiClient,
    CliError,
    resolve_api_url,
    resolve_auth_key,
)
from logplex.cli.tail import run_tail

# -- output -----------------------------------------------------------------------------------


def shown_drain_url(url: str) -> str:
    """A drain URL as printed on terminals: ``DrainURL.redacted`` keeping the user name
    (passwords and query values masked), so no secret lands in a scrollback or a screenshot."""
    try:
        return parse_drain_url(url).redacted(keep_username=True)
    except InvalidDrainURL:
        return "(hidden: the router returned a URL this CLI cannot parse; see --json)"


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
        out.write(f"drain  {drain['id']}  {drain['token']}  {shown_drain_url(drain['url'])}\n")


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
                shown_drain_url(str(drain["url"])),
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
        out.write(f"drain {drain['id']}  {drain['token']}  {shown_drain_url(drain['url'])}\n")
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


def cluster_tables(view: dict[str, object]) -> str:
    """``logplex cluster status``: the members, then one row per partition."""
    members = view.get("members") or {}
    assert isinstance(members, dict)
    rows: list[tuple[str, ...]] = [("MEMBER", "LIVE", "PARTITIONS", "HTTP")]
    for member, info in sorted(members.items()):
        info = info if isinstance(info, dict) else {}
        owned = info.get("partitions") or []
        assert isinstance(owned, list)
        rows.append(
            (
                member + (" (this router)" if member == view.get("member") else ""),
                "yes" if info.get("live") else "no",
                str(len(owned)),
                str(info.get("http") or "-"),
            )
        )
    text = _table(rows)
    partitions = view.get("partition_status") or {}
    assert isinstance(partitions, dict)
    rows = [("PARTITION", "OWNER", "LEASE AGE", "RENEWED", "STREAM SEQ", "READ SEQ", "LAG")]
    for key, entry in partitions.items():
        entry = entry if isinstance(entry, dict) else {}

        def cell(name: str, unit: str = "", entry: dict[str, object] = entry) -> str:
            value = entry.get(name)
            return "-" if value is None else f"{value}{unit}"

        rows.append(
            (
                str(key),
                cell("owner"),
                cell("lease_age_s", " s"),
                cell("lease_renewed_s_ago", " s ago"),
                cell("stream_last_seq"),
                cell("read_seq"),
                cell("lag_batches"),
            )
        )
    nats = view.get("nats") or {}
    assert isinstance(nats, dict)
    head = (
        f"cluster {view.get('cluster_id')}: {view.get('partitions')} partitions; "
        f"NATS {'connected to ' + str(nats.get('server')) if nats.get('connected') else 'DOWN'}\n"
    )
    return head + text + "\n" + _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )


def cmd_cluster_status(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    view = api.request("GET", "/v3/cluster").json()
    if args.json:
        print_json(view, out)
    else:
        out.write(cluster_tables(view))
    return 0


def cmd_tail(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
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
    commands.add_parser(
        "spool", help="verify a spool offline (`logplex spool check DIR`)", add_help=False
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

    cluster = commands.add_parser("cluster", help="the cluster mode (serve --nats)")
    cluster_commands = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)
    leaf(
        cluster_commands,
        "status",
        cmd_cluster_status,
        "members, partitions per member, lease ages and consumer lag per partition",
    )

    tail = leaf(commands, "tail", cmd_tail, "print a channel's recent lines, like `heroku logs`")
    tail.add_argument("channel", metavar="CHANNEL")
    tail.add_argument("-n", "--num", type=int, default=100, help="history lines (default 100)")
    tail.add_argument("-t", "--tail", action="store_true", help="keep printing live lines")
    tail.add_argument("-s", "--source", help="only lines of this source (token name)")
    tail.add_argument("-p", "--ps", help="only this process, or this type (web matches web.1)")
    return parser


def _delegate(name: str, argv: list[str]) -> int:
    """``logplex serve …`` / ``sink …`` / ``spool …``: the module owns its flags."""
    module = importlib.import_module(
        {"serve": "logplex.serve.wiring", "sink": "drains.sink", "spool": "logplex.spool.check"}[
            name
        ]
    )
    parser = argparse.ArgumentParser(prog=f"logplex {name}")
    module.add_arguments(parser)
    result: int = module.main(parser.parse_args(argv))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("serve", "sink", "spool"):
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "sink", "spool"):  # reached only with global options before
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
