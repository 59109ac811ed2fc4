"""Refusing drain URLs at creation and update: the router's own listeners, and with
``--deny-private-drains`` every private destination (DESIGN sections 2 and 3, drain URLs).

A drain pointed at the router's own ingest (``http://127.0.0.1:8001/logs`` of the same router,
or its syslog listener) would re-ingest every line it delivers, and deliver it again, forever:
one line became 1.4 million in 10 s with three drains. So a drain URL is refused, on create
and on update, when its host resolves to an address one of the router's own listeners
(http, shim, syslog) is bound to on the URL's port. A listener bound to ``0.0.0.0`` or ``::``
counts as bound to every local address. UDP drains are never refused by this rule: no
listener is UDP.

With ``deny_private`` (``--deny-private-drains``) a URL is also refused when its host is a
localhost name, an address in any spelling, or a name that resolves to a loopback,
link-local, private, unique-local, multicast, unspecified, reserved or own address
(``drains`` decides: ``drains._policy``), with a 400 naming the category and counted in
``logplex_drain_destination_refusals_total{at="create"}``. No port is probed.

The decisions are plain functions over resolved addresses (table-tested without DNS);
``drain_destination_refusal`` resolves the host once with ``trio.socket.getaddrinfo`` (in a
worker thread, so the event loop never blocks) under a deadline. A host that does not
resolve in time, or at all, is accepted: DNS can be changed after any check, so the drains
check again at every connect (and refuse there, as a drain status); refusing an unresolvable
name here would only stop names that do not exist yet.
"""

from __future__ import annotations

import socket
import urllib.parse

import trio

from drains import (
    DestinationPolicy,
    InvalidDrainURL,
    IPAddress,
    Listener,
    count_destination_refusal,
    destination_policy_refusal,
    is_local_address,
    listener_reached,
    parse_drain_url,
)

__all__ = [
    "IPAddress",
    "Listener",
    "drain_destination_refusal",
    "drain_target",
    "is_local_address",
    "listener_reached",
    "parse_listener",
]

RESOLVE_TIMEOUT_S = 5.0
# Default ports of the TCP drain schemes (DESIGN section 3); syslog+udp reaches no listener.
TCP_DEFAULT_PORTS = {"https": 443, "http": 80, "syslog": 601, "syslog+tls": 6514}


def parse_listener(name: str, address: str) -> Listener:
    """``HOST:PORT`` or ``[V6]:PORT`` as printed in the ``listening`` lines."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise ValueError(f"listener address {address!r} is not HOST:PORT")
    return Listener(name, host.removeprefix("[").removesuffix("]"), int(port))


def drain_target(url: str) -> tuple[str, int] | None:
    """The host and TCP port a drain URL connects to, or None (UDP, or no host)."""
    parts = urllib.parse.urlsplit(url)
    default_port = TCP_DEFAULT_PORTS.get(parts.scheme.lower())
    if default_port is None or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, port if port is not None else default_port


def own_listener_message(reached: Listener) -> str:
    return (
        f"the drain URL leads back to this router's own {reached.name} listener "
        f"({reached}): every line it delivers would be ingested and delivered again, "
        "without end; point the drain at another host or port"
    )


def policy_message(refusal: str) -> str:
    return (
        f"drain destination refused by policy: {refusal}; this router runs with "
        "--deny-private-drains, so drains may reach public addresses only"
    )


async def _resolve(host: str, port: int, socket_type: int) -> list[str] | None:
    """The addresses of ``host`` (None: it did not resolve in time or at all)."""
    with trio.move_on_after(RESOLVE_TIMEOUT_S):
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket_type)
        except OSError:  # socket.gaierror included: does not resolve
            return None
        return [str(info[4][0]) for info in infos]
    return None


async def drain_destination_refusal(
    url: str, listeners: list[Listener], *, deny_private: bool
) -> str | None:
    """Why ``url`` must not be stored (the 400's text), or None (see the module doc)."""
    try:
        parsed = parse_drain_url(url)
    except InvalidDrainURL:
        return None  # the URL validator says why
    tcp = parsed.kind != "syslog+udp"
    candidates = [listener for listener in listeners if tcp and listener.port == parsed.port]
    if not candidates and not deny_private:
        return None
    policy = DestinationPolicy(deny_private=deny_private, own_listeners=tuple(candidates))
    if deny_private:  # by name or spelling alone: no resolution needed, none trusted
        refusal = destination_policy_refusal(parsed.host, [], is_local_address)
        if refusal is not None:
            count_destination_refusal("create")
            return policy_message(refusal)
    socket_type = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    resolved = await _resolve(parsed.host, parsed.port, socket_type)
    if resolved is None:
        return None
    reached = listener_reached(resolved, parsed.port, policy.own_listeners, is_local_address)
    if reached is not None:
        return own_listener_message(reached)
    if deny_private:
        refusal = destination_policy_refusal(parsed.host, resolved, is_local_address)
        if refusal is not None:
            count_destination_refusal("create")
            return policy_message(refusal)
    return None
