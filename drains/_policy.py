"""Where a drain may connect: the destination policy, as pure decisions (DESIGN 2 and 3).

Two checks, both over a host name and the addresses it resolved to, so a caller resolves
once, decides here, and connects only to an address that was decided on (``drains._connect``
does that at every connect; ``logplex.api.drain_targets`` at creation):

- **Own listeners** (always on): a TCP drain whose address and port reach one of the router's
  own listeners (``Listener``) would re-ingest what it delivers without end. A listener
  bound to ``0.0.0.0`` or ``::`` counts as bound to every local address, and connecting to
  the unspecified address reaches this host's loopback (Linux connects ``0.0.0.0`` to
  ``127.0.0.1``), so ``listener_reached`` maps it there first.
- **Private destinations** (``--deny-private-drains``): refused when the host is
  ``localhost`` or ``*.localhost`` (RFC 6761 6.3) by name, or when any of its addresses is
  loopback, link-local (``169.254.0.0/16`` with the cloud metadata address, ``fe80::/10``),
  private (RFC 1918, shared ``100.64.0.0/10``, benchmarking ``198.18.0.0/15``, local-use
  NAT64 ``64:ff9b:1::/48``), unique-local ``fc00::/7``, site-local ``fec0::/10``, multicast,
  unspecified or "this network" ``0.0.0.0/8``, reserved (``240.0.0.0/4``, the IETF and
  documentation blocks, the limited broadcast) or one of this machine's own addresses. An
  IPv6 address that carries an IPv4 address (IPv4-mapped, -compatible and -translated,
  6to4, NAT64 ``64:ff9b::/96``, Teredo) is judged by the IPv4 address it leads to.

``parse_ip_literal`` reads a host the way ``inet_aton`` and ``getaddrinfo`` would: one to
four dot-separated parts in decimal, octal (leading ``0``) or hex (``0x``), the last part
filling the remaining bytes, so ``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and
``0`` are all loopback or unspecified; IPv6 with or without brackets and zone id. Names are
compared after IDNA (``normalize_host``): ``ⓛⓞⓒⓐⓛⓗⓞⓢⓣ`` is ``localhost``.

Nothing here does I/O: the machine's own addresses come in as a predicate (``is_own``).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IsOwnAddress = Callable[[IPAddress], bool]
# host, port, socket type -> getaddrinfo's (family, type, proto, canonname, sockaddr) tuples
Resolver = Callable[[str, int, int], Awaitable[list[tuple[int, int, int, str, tuple[object, ...]]]]]

REFUSED_BY_POLICY: Final = "destination refused by policy"
OWN_LISTENER: Final = "destination is this router's own listener"
NETWORK_ERROR: Final = "network error: could not connect"

LOOPBACK: Final = "a loopback address"
LINK_LOCAL: Final = "a link-local address"
PRIVATE: Final = "a private address"
UNIQUE_LOCAL: Final = "a unique-local address"
SITE_LOCAL: Final = "a site-local address"
MULTICAST: Final = "a multicast address"
UNSPECIFIED: Final = "an unspecified address"
RESERVED: Final = "a reserved address"
OWN_ADDRESS: Final = "one of this router's own addresses"
LOCALHOST_NAME: Final = "a localhost name"


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Checked in order: the first network an address is in names its category.
_CATEGORIES: Final = (
    (UNSPECIFIED, _nets("0.0.0.0/8", "::/128")),
    (LOOPBACK, _nets("127.0.0.0/8", "::1/128")),
    (LINK_LOCAL, _nets("169.254.0.0/16", "fe80::/10")),
    (PRIVATE, _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")),
    (PRIVATE, _nets("198.18.0.0/15", "64:ff9b:1::/48")),
    (UNIQUE_LOCAL, _nets("fc00::/7")),
    (SITE_LOCAL, _nets("fec0::/10")),
    (MULTICAST, _nets("224.0.0.0/4", "ff00::/8")),
    (
        RESERVED,
        _nets(
            "240.0.0.0/4",  # reserved, with the limited broadcast 255.255.255.255
            "192.0.0.0/24",  # IETF protocol assignments
            "192.0.2.0/24",  # documentation (TEST-NET-1, -2, -3)
            "198.51.100.0/24",
            "203.0.113.0/24",
            "192.88.99.0/24",  # the retired 6to4 relay anycast
            "::/96",  # IPv4-compatible (deprecated): only when it carries no IPv4 address
            "100::/64",  # discard-only
            "2001:db8::/32",  # documentation
            "2001:10::/28",  # ORCHID
            "3fff::/20",  # documentation
        ),
    ),
)
_MAPPED: Final = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class Listener:
    """One bound listener of the router: ``name`` (http, shim, syslog), address, port."""

    name: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """What a drain may connect to (``DrainSettings.destination_policy``).

    ``deny_private`` is ``--deny-private-drains``; ``own_listeners`` are the router's bound
    listeners (refused whether or not ``deny_private`` is on); ``resolve`` replaces
    ``getaddrinfo`` (tests give a resolver whose answer changes, as DNS rebinding does).
    """

    deny_private: bool = False
    own_listeners: tuple[Listener, ...] = ()
    resolve: Resolver | None = None

    @property
    def checks_destinations(self) -> bool:
        """Whether a connect must resolve and check first (else it connects as it always did)."""
        return self.deny_private or bool(self.own_listeners) or self.resolve is not None


NO_POLICY: Final = DestinationPolicy()  # connect as told, no checks (tools and tests)


def normalize_host(host: str) -> str:
    """``host`` as compared: IDNA-encoded, lower case, no brackets, no trailing dot.

    A name IDNA cannot encode is returned lower-cased as it is (it resolves nowhere).
    """
    text = host.strip().removeprefix("[").removesuffix("]")
    if not text.isascii():
        with contextlib.suppress(UnicodeError):
            text = text.encode("idna").decode("ascii")
    return text.lower().rstrip(".")


def _inet_aton_part(part: str) -> int | None:
    """One part of an ``inet_aton`` address: decimal, octal (leading 0) or hex (0x)."""
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        if not digits:
            return None  # glibc's inet_aton refuses a bare "0x"
        return int(digits, 16) if all(c in "0123456789abcdefABCDEF" for c in digits) else None
    if not part.isascii() or not part.isdigit():
        return None
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def parse_ipv4_aton(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``inet_aton`` reads from ``text`` (``127.1``, ``0x7f000001``…)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or any(not part for part in parts):
        return None
    values = [_inet_aton_part(part) for part in parts]
    if any(value is None for value in values):
        return None
    numbers = [value for value in values if value is not None]
    *leading, last = numbers
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    packed = 0
    for value in leading:
        packed = packed << 8 | value
    packed = packed << (8 * (4 - len(leading))) | last
    return ipaddress.IPv4Address(packed)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells in any form a resolver reads as a number, else None."""
    text = normalize_host(host)
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.partition("%")[0])
        except ValueError:
            return None
    return parse_ipv4_aton(text)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (mapped, compatible, translated, 6to4,
    NAT64, Teredo client), or None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _TRANSLATED or address in _NAT64:
        return low32
    if address in _COMPATIBLE and int(address) > 1:  # not :: or ::1
        return low32
    return None


def address_category(address: IPAddress, is_own: IsOwnAddress | None = None) -> str | None:
    """Why ``address`` is refused under the policy (e.g. ``a loopback address``), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # drop a zone id
        inner = embedded_ipv4(address)
        if inner is not None:
            category = address_category(inner, is_own)
            if category is not None:
                return category
    for category, networks in _CATEGORIES:
        if any(address in network for network in networks):
            return category
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return RESERVED
    if is_own is not None and is_own(address):
        return OWN_ADDRESS
    return None


def host_name_category(host: str) -> str | None:
    """Why ``host`` is refused by its name or spelling alone, before any resolution."""
    name = normalize_host(host)
    if name == "localhost" or name.endswith(".localhost"):
        return LOCALHOST_NAME
    literal = parse_ip_literal(name)
    return address_category(literal) if literal is not None else None


def address_of(text: str) -> IPAddress | None:
    """An address as ``getaddrinfo`` returns it (``fe80::1%eth0`` included), else None."""
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


def policy_refusal(host: str, resolved: Iterable[str], is_own: IsOwnAddress) -> str | None:
    """Why ``--deny-private-drains`` refuses ``host`` with these addresses, or None.

    Every address must pass: a name that resolves to one public and one private address is
    refused (the resolver decides which one a connection uses). The text names the category
    and the host, never a port or what is listening there.
    """
    shown = normalize_host(host)
    by_name = host_name_category(shown)
    if by_name is not None:
        verb = "is" if by_name == LOCALHOST_NAME or parse_ip_literal(shown) else "resolves to"
        return f"{shown} {verb} {by_name}"
    for text in resolved:
        address = address_of(text)
        if address is None:
            return f"{shown} resolves to an address that cannot be read ({text!r})"
        category = address_category(address, is_own)
        if category is not None:
            return f"{shown} resolves to {category}"
    return None


_LOOPBACK_OF_UNSPECIFIED: Final[dict[IPAddress, IPAddress]] = {
    ipaddress.ip_address("0.0.0.0"): ipaddress.ip_address("127.0.0.1"),
    ipaddress.ip_address("::"): ipaddress.ip_address("::1"),
}


def _unmapped(text: str) -> IPAddress | None:
    address = address_of(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _destination(text: str) -> IPAddress | None:
    address = _unmapped(text)
    return _LOOPBACK_OF_UNSPECIFIED.get(address, address) if address is not None else None


def listener_reached(
    resolved: Iterable[str], port: int, listeners: Iterable[Listener], is_local: IsOwnAddress
) -> Listener | None:
    """The first listener a connection to one of ``resolved`` on ``port`` would reach."""
    addresses = [a for a in map(_destination, resolved) if a is not None]
    for listener in listeners:
        if listener.port != port:
            continue
        bound = _unmapped(listener.host)
        if bound is None:
            continue
        if bound.is_unspecified:
            if any(is_local(address) for address in addresses):
                return listener
        elif bound in addresses:
            return listener
    return None


def connect_refusal(
    host: str,
    port: int,
    resolved: Sequence[str],
    policy: DestinationPolicy,
    is_own: IsOwnAddress,
    *,
    tcp: bool,
) -> str | None:
    """The ``last_error`` reason a connect to ``host:port`` at ``resolved`` is refused, or None.

    Own listeners first (any policy; TCP only: no listener is UDP), then, with
    ``deny_private``, the private-destination rules.
    """
    if tcp:
        reached = listener_reached(resolved, port, policy.own_listeners, is_own)
        if reached is not None:
            return f"{OWN_LISTENER} ({reached.name} {reached})"
    if policy.deny_private:
        refusal = policy_refusal(host, resolved, is_own)
        if refusal is not None:
            return f"{REFUSED_BY_POLICY}: {refusal}"
    return None
