"""Connecting a drain only where the destination policy allows (DESIGN 2 and 3).

``resolve_checked`` resolves a drain's host once, decides on every address with
``drains._policy.connect_refusal`` and returns only addresses that passed, so the connection
goes to an address that was checked (pinned): DNS rebinding between the check and the
connect cannot move it. ``open_tcp_stream`` connects to those addresses in order (TLS
still verifies the URL's host name and sends it as SNI; HTTP still sends it as ``Host``). A
refusal raises ``DestinationRefused`` and counts into
``logplex_drain_destination_refusals_total{at="connect"}``.

The router's own addresses are read from the kernel: every ``LOCAL`` entry of
``/proc/net/fib_trie`` (all IPv4 addresses of all interfaces, secondary ones included, and the
whole of ``127.0.0.0/8``) and every address of ``/proc/net/if_inet6``, re-read at most every
``OWN_ADDRESSES_TTL_S``. Where ``/proc`` cannot be read (not Linux), binding a socket to the
address is the test: it succeeds only for one of this host's own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Sequence
from typing import Final

import trio

from drains._errors import DestinationRefused
from drains._metrics import count_destination_refusal
from drains._policy import (
    DestinationPolicy,
    IPAddress,
    Resolver,
    address_of,
    connect_refusal,
)

OWN_ADDRESSES_TTL_S: Final = 10.0
HAPPY_EYEBALLS_DELAY_S: Final = 0.25
FIB_TRIE: Final = "/proc/net/fib_trie"
IF_INET6: Final = "/proc/net/if_inet6"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SockAddr = tuple[int, tuple[object, ...]]  # (family, sockaddr) as getaddrinfo gives them

_own_networks: tuple[float, frozenset[Network] | None] = (-OWN_ADDRESSES_TTL_S, None)


def parse_fib_trie(text: str) -> set[Network]:
    """The ``LOCAL`` routes of ``/proc/net/fib_trie``: this host's IPv4 addresses."""
    found: set[Network] = set()
    address: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            address = stripped[3:].strip()
        elif address is not None and stripped.startswith("/") and stripped.endswith(" LOCAL"):
            prefix = stripped[1:].split(" ", 1)[0]
            with contextlib.suppress(ValueError):
                found.add(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
    return found


def parse_if_inet6(text: str) -> set[Network]:
    """The addresses of ``/proc/net/if_inet6`` (32 hex digits first on each line)."""
    found: set[Network] = set()
    for line in text.splitlines():
        digits = line.split(" ", 1)[0]
        if len(digits) == 32:
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv6Network(int(digits, 16)))
    return found


def _read_own_networks() -> frozenset[Network] | None:
    try:
        with open(FIB_TRIE, encoding="ascii", errors="replace") as fib:
            networks = parse_fib_trie(fib.read())
    except OSError:
        return None
    try:
        with open(IF_INET6, encoding="ascii", errors="replace") as inet6:
            networks |= parse_if_inet6(inet6.read())
    except OSError:
        pass  # no IPv6 on this host
    return frozenset(networks)


def _bind_probe(address: IPAddress) -> bool:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
    except OSError:  # EADDRNOTAVAIL: not ours; EAFNOSUPPORT: no IPv6 here
        return False
    return True


def is_local_address(address: IPAddress) -> bool:
    """Whether ``address`` is one of this host's own (loopback and unspecified included)."""
    global _own_networks
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or ipaddress.IPv6Address(int(address))
    if address.is_loopback or address.is_unspecified:
        return True
    read_at, networks = _own_networks
    now_s = time.monotonic()
    if now_s - read_at >= OWN_ADDRESSES_TTL_S:
        networks = _read_own_networks()
        _own_networks = (now_s, networks)
    if networks is None:
        return _bind_probe(address)
    return any(address in network for network in networks if network.version == address.version)


async def getaddrinfo_resolver(
    host: str, port: int, socket_type: int
) -> list[tuple[int, int, int, str, tuple[object, ...]]]:
    """``getaddrinfo`` in a worker thread (trio's), as a ``Resolver``."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket_type)
    return [(int(f), int(t), p, name, tuple(sa)) for f, t, p, name, sa in infos]


async def resolve_checked(
    host: str, port: int, policy: DestinationPolicy, *, socket_type: int
) -> list[SockAddr]:
    """The addresses of ``host:port`` that a drain may connect to, all checked.

    Raises ``DestinationRefused`` (and counts it) when the policy or the own-listener rule
    refuses any of them, ``OSError`` when the host does not resolve.
    """
    resolve: Resolver = policy.resolve or getaddrinfo_resolver
    infos = await resolve(host, port, socket_type)
    if not infos:
        raise OSError(f"no address for {host}")
    resolved = [str(sockaddr[0]) for _, _, _, _, sockaddr in infos]
    tcp = socket_type == socket.SOCK_STREAM
    refusal = connect_refusal(host, port, resolved, policy, is_local_address, tcp=tcp)
    if refusal is None and any(address_of(text) is None for text in resolved):
        refusal = f"{host} resolved to an address that cannot be read"
    if refusal is not None:
        count_destination_refusal("connect")
        raise DestinationRefused(refusal)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


async def _attempt(
    family: int,
    sockaddr: tuple[object, ...],
    socket_type: int,
    outcome: _Attempts,
    failed: trio.Event,
) -> None:
    sock = trio.socket.socket(family, socket_type)
    try:
        await sock.connect(sockaddr)
    except OSError as exc:
        sock.close()
        outcome.errors.append(exc)
        failed.set()
        return
    except BaseException:
        sock.close()
        raise
    if outcome.connected is None:
        outcome.connected = sock
        outcome.scope.cancel()
    else:
        sock.close()


class _Attempts:
    """The race of ``connect_socket``: the first socket connected, and every failure."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.connected: trio.socket.SocketType | None = None
        self.errors: list[OSError] = []


async def connect_socket(addresses: Sequence[SockAddr], socket_type: int) -> trio.socket.SocketType:
    """A socket connected to one of ``addresses``, all of them checked.

    As ``trio.open_tcp_stream`` does with the addresses it resolves (happy eyeballs, RFC
    8305): one attempt at a time in order, the next starting when the last failed or after
    ``HAPPY_EYEBALLS_DELAY_S``, the first to connect winning; so an unreachable IPv6 address
    ahead of a working IPv4 one costs a quarter second, not the connect timeout. Raises the
    last failure when none connects.
    """
    async with trio.open_nursery() as nursery:
        outcome = _Attempts(nursery.cancel_scope)
        for family, sockaddr in addresses:
            failed = trio.Event()
            nursery.start_soon(_attempt, family, sockaddr, socket_type, outcome, failed)
            with trio.move_on_after(HAPPY_EYEBALLS_DELAY_S):
                await failed.wait()
    if outcome.connected is not None:
        return outcome.connected
    assert outcome.errors  # resolve_checked never returns an empty list
    raise outcome.errors[-1]


async def open_tcp_stream(host: str, port: int, policy: DestinationPolicy) -> trio.SocketStream:
    """TCP to ``host:port``: checked and pinned when the policy checks destinations, else
    ``trio.open_tcp_stream`` as before (no listeners known, no policy: tests and tools)."""
    if not policy.checks_destinations:
        return await trio.open_tcp_stream(host, port)
    addresses = await resolve_checked(host, port, policy, socket_type=socket.SOCK_STREAM)
    return trio.SocketStream(await connect_socket(addresses, socket.SOCK_STREAM))
