"""Refusing drain URLs that lead back into the router itself (DESIGN section 3, drain URLs).

A drain pointed at the router's own ingest (``http://127.0.0.1:8001/logs`` of the same router,
or its syslog listener) would re-ingest every line it delivers, and deliver it again, forever:
one line became 1.4 million in 10 s with three drains. So a drain URL is refused, on create
and on update, when its host resolves to an address one of the router's own listeners
(http, shim, syslog) is bound to on the URL's port. A listener bound to ``0.0.0.0`` or ``::``
counts as bound to every local address. UDP drains are never refused: no listener is UDP.

The decision is a plain function (``listener_reached``) over resolved addresses, table-tested
without DNS; ``own_listener_reached`` resolves the host with ``trio.socket.getaddrinfo``
(in a worker thread, so the event loop never blocks) under a deadline. A host that does not
resolve in time, or at all, is accepted: it cannot be checked now and the drain reports its
connection errors like any other.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

RESOLVE_TIMEOUT_S = 5.0
# Default ports of the TCP drain schemes (DESIGN section 3); syslog+udp reaches no listener.
TCP_DEFAULT_PORTS = {"https": 443, "http": 80, "syslog": 601, "syslog+tls": 6514}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Listener:
    """One bound listener of the router: ``name`` (http, shim, syslog), address, port."""

    name: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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


_LOOPBACK_OF_UNSPECIFIED = {
    ipaddress.ip_address("0.0.0.0"): ipaddress.ip_address("127.0.0.1"),
    ipaddress.ip_address("::"): ipaddress.ip_address("::1"),
}


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _destination(text: str) -> IPAddress | None:
    """Where a connection to ``text`` goes: the unspecified address means this host's
    loopback (Linux connects ``0.0.0.0`` to ``127.0.0.1`` and ``::`` to ``::1``)."""
    address = _address(text)
    return _LOOPBACK_OF_UNSPECIFIED.get(address, address) if address is not None else None


def listener_reached(
    resolved: Iterable[str],
    port: int,
    listeners: Iterable[Listener],
    is_local: Callable[[IPAddress], bool],
) -> Listener | None:
    """The first listener a connection to one of ``resolved`` on ``port`` would reach."""
    addresses = [a for a in map(_destination, resolved) if a is not None]
    for listener in listeners:
        if listener.port != port:
            continue
        bound = _address(listener.host)
        if bound is None:
            continue
        if bound.is_unspecified:
            if any(is_local(address) for address in addresses):
                return listener
        elif bound in addresses:
            return listener
    return None


def is_local_address(address: IPAddress) -> bool:
    """Whether ``address`` is one of this host's own (binding to it succeeds)."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
    except OSError:  # EADDRNOTAVAIL: not ours; EAFNOSUPPORT: no IPv6 here
        return False
    return True


async def own_listener_reached(url: str, listeners: Iterable[Listener]) -> Listener | None:
    """The router's own listener ``url`` would connect to, or None (see the module doc)."""
    target = drain_target(url)
    if target is None:
        return None
    host, port = target
    candidates = [listener for listener in listeners if listener.port == port]
    if not candidates:
        return None
    with trio.move_on_after(RESOLVE_TIMEOUT_S):
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:  # socket.gaierror included: does not resolve
            return None
        resolved = [str(info[4][0]) for info in infos]
        return listener_reached(resolved, port, candidates, is_local_address)
    return None
