"""The drain destination policy as pure decisions (DESIGN 2 ``--deny-private-drains``, 3).

Every spelling a resolver reads as a number is classified as the address it means; names
are compared after IDNA. ``socket.inet_aton`` (glibc) is the oracle for the IPv4 spellings,
so the table does not restate the parser. A resolver whose answer changes (DNS rebinding)
is refused at the check that precedes a connect even when an earlier check passed.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from drains._connect import parse_fib_trie, parse_if_inet6, resolve_checked
from drains._errors import DestinationRefused, describe_exception
from drains._metrics import DESTINATION_REFUSALS
from drains._policy import (
    LINK_LOCAL,
    LOCALHOST_NAME,
    LOOPBACK,
    MULTICAST,
    OWN_ADDRESS,
    PRIVATE,
    RESERVED,
    SITE_LOCAL,
    UNIQUE_LOCAL,
    UNSPECIFIED,
    DestinationPolicy,
    IPAddress,
    Listener,
    address_category,
    connect_refusal,
    host_name_category,
    normalize_host,
    parse_ip_literal,
    parse_ipv4_aton,
    policy_refusal,
)
from drains._url import InvalidDrainURL, parse_drain_url

OWN = {ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2a01:4f8::7")}


def fake_is_own(address: IPAddress) -> bool:
    return address in OWN or address.is_loopback


# -- spellings --------------------------------------------------------------------------

ASCII_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.1",
    "0x7f.0.0.0x1",
    "0177.0.0.1",
    "0177.1",
    "017700000001",
    "0",
    "0.0.0.0",
    "00",
    "0x",
    "0x0",
    "169.254.169.254",
    "0xa9.0xfe.0xa9.0xfe",
    "2852039166",
    "0251.0376.0251.0376",
    "10.1",
    "192.168.257",
    "255.255.255.255",
    "4294967295",
    "4294967296",  # one too many: not an address
    "1.2.3.4.5",
    "1..2",
    "08.1.2.3",  # 8 is no octal digit
    "0x1g",
    "256.1.1.1",
    "1.256.1.1",
    "1.2.65536",
    "example.com",
    "127.0.0.1x",
    "",
]


@pytest.mark.parametrize("spelling", ASCII_SPELLINGS)
def test_ipv4_spellings_read_as_inet_aton_reads_them(spelling: str) -> None:
    try:
        expected: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(spelling))
    except OSError:
        expected = None
    assert parse_ipv4_aton(spelling) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("[::1]", "::1"),
        ("[0:0::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("fe80::1%eth0", "fe80::1"),
        ("fe80::1%25eth0", "fe80::1"),  # as urlsplit leaves a percent-encoded zone id
        ("127.0.0.1.", "127.0.0.1"),  # the root label
        ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),  # fullwidth digits (IDNA)
        ("127\u30020\u30020\u30021", "127.0.0.1"),  # ideographic full stops
        ("::g", None),
        ("example.com", None),
    ],
)
def test_ip_literals_in_every_spelling(host: str, expected: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert (None if parsed is None else str(parsed)) == expected


@pytest.mark.parametrize(
    ("host", "normalized"),
    [
        ("LocalHost.", "localhost"),
        ("\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3", "localhost"),  # circled
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("[::1]", "::1"),
        ("Example.COM..", "example.com"),
    ],
)
def test_hosts_are_compared_after_idna(host: str, normalized: str) -> None:
    assert normalize_host(host) == normalized


# -- categories ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "category"),
    [
        # Every spelling of loopback from the attack.
        ("127.0.0.1", LOOPBACK),
        ("[::1]", LOOPBACK),
        ("localhost", LOCALHOST_NAME),
        ("127.1", LOOPBACK),
        ("2130706433", LOOPBACK),
        ("0x7f000001", LOOPBACK),
        ("0177.0.0.1", LOOPBACK),
        ("0", UNSPECIFIED),
        ("[::ffff:127.0.0.1]", LOOPBACK),
        ("169.254.169.254", LINK_LOCAL),
        # More spellings and neighbours.
        ("127.255.255.254", LOOPBACK),
        ("[0:0::1]", LOOPBACK),
        ("app.localhost", LOCALHOST_NAME),
        ("LOCALHOST.", LOCALHOST_NAME),
        ("\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3", LOCALHOST_NAME),
        ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", LOOPBACK),
        ("0.0.0.0", UNSPECIFIED),
        ("0.1.2.3", UNSPECIFIED),  # "this network"
        ("[::]", UNSPECIFIED),
        ("2852039166", LINK_LOCAL),  # 169.254.169.254 in decimal
        ("0xa9.0xfe.0xa9.0xfe", LINK_LOCAL),
        ("fe80::1%eth0", LINK_LOCAL),
        ("[fe80::1%25eth0]", LINK_LOCAL),
        ("10.0.0.1", PRIVATE),
        ("10.1", PRIVATE),
        ("172.16.0.1", PRIVATE),
        ("172.31.255.255", PRIVATE),
        ("192.168.1.1", PRIVATE),
        ("100.64.0.1", PRIVATE),  # shared address space (CGNAT)
        ("100.127.255.254", PRIVATE),
        ("198.18.0.1", PRIVATE),  # benchmarking
        ("198.19.255.254", PRIVATE),
        ("fd00::2", UNIQUE_LOCAL),
        ("fc00::1", UNIQUE_LOCAL),
        ("fec0::1", SITE_LOCAL),
        ("224.0.0.1", MULTICAST),
        ("239.255.255.250", MULTICAST),
        ("ff02::1", MULTICAST),
        ("255.255.255.255", RESERVED),
        ("240.0.0.1", RESERVED),
        ("192.0.2.1", RESERVED),  # documentation
        ("2001:db8::1", RESERVED),
        # IPv6 forms that carry an IPv4 address are judged by it.
        ("::ffff:7f00:1", LOOPBACK),  # IPv4-mapped
        ("::ffff:a9fe:a9fe", LINK_LOCAL),
        ("::127.0.0.1", LOOPBACK),  # IPv4-compatible
        ("::ffff:0:127.0.0.1", LOOPBACK),  # IPv4-translated
        ("2002:7f00:1::", LOOPBACK),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", PRIVATE),  # 6to4 of 10.0.0.1
        ("64:ff9b::127.0.0.1", LOOPBACK),  # NAT64
        ("64:ff9b::169.254.169.254", LINK_LOCAL),
        ("64:ff9b:1::a00:1", PRIVATE),  # local-use NAT64
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", LOOPBACK),  # Teredo client 127.0.0.1
        ("::8.8.8.8", RESERVED),  # IPv4-compatible is deprecated, even of a public address
        # Public addresses and names pass (names are judged by what they resolve to).
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("100.128.0.1", None),  # just past 100.64.0.0/10
        ("172.32.0.1", None),  # just past 172.16.0.0/12
        ("::ffff:8.8.8.8", None),
        ("2002:808:808::", None),  # 6to4 of 8.8.8.8
        ("64:ff9b::8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("example.com", None),
        ("localhost.example.com", None),
        ("08.1.2.3", None),  # not a number: a name, resolved later
    ],
)
def test_host_categories(host: str, category: str | None) -> None:
    assert host_name_category(host) == category


def test_own_addresses_are_refused_by_the_predicate() -> None:
    assert address_category(ipaddress.ip_address("203.0.113.7")) == RESERVED
    assert address_category(ipaddress.ip_address("2a01:4f8::7"), fake_is_own) == OWN_ADDRESS
    assert address_category(ipaddress.ip_address("2a01:4f8::8"), fake_is_own) is None
    assert address_category(ipaddress.ip_address("2a01:4f8::7")) is None


@pytest.mark.parametrize(
    ("host", "resolved", "refusal"),
    [
        ("logs.example.com", ["93.184.216.34"], None),
        ("logs.example.com", ["93.184.216.34", "2606:4700:4700::1111"], None),
        ("logs.example.com", ["10.0.0.5"], "logs.example.com resolves to a private address"),
        # One private address among public ones is enough: the resolver picks, not us.
        ("mixed.example", ["93.184.216.34", "127.0.0.1"], "resolves to a loopback address"),
        ("meta.example", ["169.254.169.254"], "meta.example resolves to a link-local address"),
        ("v6.example", ["fe80::1%eth0"], "resolves to a link-local address"),
        ("me.example", ["2a01:4f8::7"], "me.example resolves to one of this router's own"),
        ("127.1", ["127.0.0.1"], "127.1 is a loopback address"),
        ("LOCALHOST.", ["127.0.0.1"], "localhost is a localhost name"),
        ("odd.example", ["not-an-address"], "cannot be read"),
    ],
)
def test_policy_refusal(host: str, resolved: list[str], refusal: str | None) -> None:
    got = policy_refusal(host, resolved, fake_is_own)
    if refusal is None:
        assert got is None
    else:
        assert got is not None
        assert refusal in got


# -- connect decisions ----------------------------------------------------------------------

SHIM = Listener("shim", "0.0.0.0", 6001)
HTTP = Listener("http", "127.0.0.1", 8001)
GUARD_OFF = DestinationPolicy(own_listeners=(SHIM, HTTP))
GUARD_ON = DestinationPolicy(deny_private=True, own_listeners=(SHIM, HTTP))


@pytest.mark.parametrize(
    ("policy", "resolved", "port", "tcp", "refusal"),
    [
        (GUARD_OFF, ["127.0.0.1"], 8001, True, "destination is this router's own listener"),
        (GUARD_OFF, ["127.0.0.1"], 8001, False, None),  # UDP reaches no listener
        (GUARD_OFF, ["203.0.113.7"], 6001, True, "own listener (shim 0.0.0.0:6001)"),
        (GUARD_OFF, ["127.0.0.1"], 8002, True, None),  # local, but no listener there
        (GUARD_OFF, ["10.0.0.1"], 8001, True, None),
        (GUARD_ON, ["127.0.0.1"], 8001, True, "destination is this router's own listener"),
        (GUARD_ON, ["127.0.0.1"], 8002, True, "destination refused by policy: "),
        (GUARD_ON, ["127.0.0.1"], 8002, False, "destination refused by policy: "),
        (GUARD_ON, ["10.0.0.1"], 514, False, "resolves to a private address"),
        (GUARD_ON, ["93.184.216.34"], 443, True, None),
    ],
)
def test_connect_refusal(
    policy: DestinationPolicy, resolved: list[str], port: int, tcp: bool, refusal: str | None
) -> None:
    got = connect_refusal("drain.example", port, resolved, policy, fake_is_own, tcp=tcp)
    if refusal is None:
        assert got is None
    else:
        assert got is not None
        assert refusal in got


def test_policy_checks_destinations_only_when_it_has_something_to_check() -> None:
    assert not DestinationPolicy().checks_destinations
    assert DestinationPolicy(deny_private=True).checks_destinations
    assert DestinationPolicy(own_listeners=(HTTP,)).checks_destinations


# -- DNS rebinding --------------------------------------------------------------------------


class RebindingResolver:
    """Answers with each of ``answers`` in turn, as a name whose DNS record changes."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(
        self, host: str, port: int, socket_type: int
    ) -> list[tuple[int, int, int, str, tuple[object, ...]]]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [
            (
                socket.AF_INET6 if ":" in text else socket.AF_INET,
                socket_type,
                0,
                "",
                (text, port, 0, 0) if ":" in text else (text, port),
            )
            for text in answer
        ]


def refusals_at_connect() -> float:
    return DESTINATION_REFUSALS.labels("connect")._value.get()


async def test_a_name_rebound_to_loopback_after_a_check_is_refused_at_the_next_connect() -> None:
    resolver = RebindingResolver(["93.184.216.34"], ["127.0.0.1"], ["93.184.216.34"])
    policy = DestinationPolicy(deny_private=True, resolve=resolver)
    before = refusals_at_connect()
    allowed = await resolve_checked("rebind.example", 443, policy, socket_type=socket.SOCK_STREAM)
    assert [sockaddr[0] for _, sockaddr in allowed] == ["93.184.216.34"]  # the pinned address
    with pytest.raises(DestinationRefused) as refused:
        await resolve_checked("rebind.example", 443, policy, socket_type=socket.SOCK_STREAM)
    assert str(refused.value) == (
        "destination refused by policy: rebind.example resolves to a loopback address"
    )
    assert describe_exception(refused.value) == str(refused.value)
    assert refusals_at_connect() == before + 1
    again = await resolve_checked("rebind.example", 443, policy, socket_type=socket.SOCK_STREAM)
    assert again == allowed  # valid again: the drain retries and gets through
    assert resolver.calls == 3


async def test_one_private_answer_among_several_refuses_the_connect() -> None:
    resolver = RebindingResolver(["93.184.216.34", "::ffff:169.254.169.254"])
    policy = DestinationPolicy(deny_private=True, resolve=resolver)
    with pytest.raises(DestinationRefused, match="link-local"):
        await resolve_checked("two.example", 80, policy, socket_type=socket.SOCK_STREAM)


# -- this machine's addresses ----------------------------------------------------------------

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 198.51.100.0/24 2 0 2
           |-- 198.51.100.0
              /24 link UNICAST
           |-- 198.51.100.20
              /32 host LOCAL
           |-- 198.51.100.21
              /32 host LOCAL
"""
IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
2a0104f8000000000000000000000007 02 40 00 80     eth0
fe8000000000000000fc00fffe000001 02 40 20 80     eth0
"""


def test_own_addresses_come_from_the_local_routes_and_the_ipv6_table() -> None:
    networks = {str(network) for network in parse_fib_trie(FIB_TRIE) | parse_if_inet6(IF_INET6)}
    assert networks == {
        "127.0.0.0/8",
        "127.0.0.1/32",
        "198.51.100.20/32",  # a secondary address too: every LOCAL route counts
        "198.51.100.21/32",
        "::1/128",
        "2a01:4f8::7/128",
        "fe80::fc:ff:fe00:1/128",
    }


# -- credentials never echoed ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://user:s3cr#tpw@logs.example/x",
        "https://user:s3cr?tpw@logs.example/x",
        "https://user:s3cr/tpw@logs.example/x",
        "https://user:1234/s3cretpw@logs.example/x",  # reads as port 1234 and a path
        "https://user:s3cr#insecure@logs.example/x",
        "http://s3cr/tpw@logs.example/",
        "https://user:s3cr[tpw@logs.example/x",
    ],
)
def test_a_password_with_unencoded_delimiters_is_refused_without_being_quoted(url: str) -> None:
    with pytest.raises(InvalidDrainURL) as refused:
        parse_drain_url(url)
    message = str(refused.value)
    for secret in ("s3cr", "tpw", "1234", "insecure@"):
        assert secret not in message
    assert "percent-encode" in message or "cannot be split" in message


def test_an_encoded_password_and_an_at_in_the_authority_still_parse() -> None:
    parsed = parse_drain_url("https://user:s3cr%23t%3F%2F@logs.example/x")
    assert parsed.password == "s3cr#t?/"
    assert parsed.host == "logs.example"
