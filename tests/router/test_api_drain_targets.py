"""Drain URLs that lead back into the router's own listeners are refused (DESIGN section 3).

A drain aimed at the router's own ``POST /logs`` (or its syslog listener) re-ingests what it
delivers without end. The decision is table-tested over resolved addresses; the endpoints
are tested against the harness's own HTTP port and against a real ``logplex serve``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from pathlib import Path

import httpx
import pytest
from controlplane_helpers import ADMIN, logplex_serve, running_api

from logplex.api.drain_targets import (
    IPAddress,
    Listener,
    drain_target,
    is_local_address,
    listener_reached,
    parse_listener,
)

HTTP = Listener("http", "127.0.0.1", 8001)
SYSLOG_ANY = Listener("syslog", "0.0.0.0", 6601)
SHIM_ANY6 = Listener("shim", "::", 6001)
SPECIFIC = Listener("http", "10.1.2.3", 8002)
LISTENERS = [HTTP, SYSLOG_ANY, SHIM_ANY6, SPECIFIC]
LOCAL = {"127.0.0.1", "127.0.0.2", "::1", "10.1.2.3", "10.9.9.9"}


def fake_is_local(address: IPAddress) -> bool:
    return str(address) in LOCAL


@pytest.mark.parametrize(
    ("resolved", "port", "reached"),
    [
        (["127.0.0.1"], 8001, HTTP),
        (["::1", "127.0.0.1"], 8001, HTTP),  # localhost: any of its addresses
        (["::ffff:127.0.0.1"], 8001, HTTP),  # IPv4-mapped is the same address
        (["127.0.0.2"], 8001, None),  # the listener is bound to 127.0.0.1 only
        # Connecting to the unspecified address reaches this host's loopback of its family.
        (["0.0.0.0"], 8001, HTTP),
        (["0.0.0.0"], 6601, SYSLOG_ANY),
        (["::"], 8001, None),  # ::1, where no listener of port 8001 is bound
        (["::"], 6001, SHIM_ANY6),
        (["127.0.0.1"], 8003, None),  # another port
        (["93.184.216.34"], 8001, None),
        (["10.9.9.9"], 6601, SYSLOG_ANY),  # 0.0.0.0: every local address
        (["127.0.0.2"], 6601, SYSLOG_ANY),
        (["93.184.216.34"], 6601, None),  # a remote host on the same port
        (["127.0.0.1"], 6001, SHIM_ANY6),  # :: counts every local address too
        (["10.1.2.3"], 8002, SPECIFIC),
        (["10.9.9.9"], 8002, None),
        (["fe80::1%eth0"], 8002, None),
        ([], 8001, None),
    ],
)
def test_listener_reached(resolved: list[str], port: int, reached: Listener | None) -> None:
    assert listener_reached(resolved, port, LISTENERS, fake_is_local) == reached


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://127.0.0.1:8001/logs", ("127.0.0.1", 8001)),
        ("https://user:pass@Example.COM/logplex?k=v", ("example.com", 443)),
        ("http://example.com/", ("example.com", 80)),
        ("syslog://[::1]", ("::1", 601)),
        ("SYSLOG+TLS://logs.example.com#insecure", ("logs.example.com", 6514)),
        ("syslog+udp://127.0.0.1:6601", None),  # no listener speaks UDP
        ("ftp://127.0.0.1:8001", None),
        ("http://127.0.0.1:99999", None),  # the validator refuses it first
    ],
)
def test_drain_target(url: str, target: tuple[str, int] | None) -> None:
    assert drain_target(url) == target


def test_parse_listener() -> None:
    assert parse_listener("http", "127.0.0.1:8001") == HTTP
    assert parse_listener("shim", "[::]:6001") == SHIM_ANY6
    assert str(SHIM_ANY6) == "[::]:6001"
    with pytest.raises(ValueError, match="not HOST:PORT"):
        parse_listener("http", "127.0.0.1")


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("0.0.0.0", True),
        ("192.0.2.1", False),  # TEST-NET-1: never assigned to a host
        ("2001:db8::1", False),  # the IPv6 documentation prefix
    ],
)
def test_is_local_address(address: str, local: bool) -> None:
    assert is_local_address(ipaddress.ip_address(address)) is local


def test_is_local_address_sees_a_non_loopback_address_of_this_host() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            pytest.skip("no IPv4 route off this host")
        own = probe.getsockname()[0]
    assert is_local_address(ipaddress.ip_address(own))


async def test_drains_to_the_routers_own_http_port_are_refused(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        port = httpx.URL(api.base_url).port
        for url in (
            f"http://127.0.0.1:{port}/logs",
            f"http://localhost:{port}/logs",
            f"https://user:pw@127.0.0.1:{port}/x",
            f"syslog://localhost:{port}",
        ):
            response = await api.client.post(
                "/v3/channels/c/drains", json={"url": url}, headers=ADMIN
            )
            assert response.status_code == 400, url
            error = response.json()["error"]
            assert f"own http listener (127.0.0.1:{port})" in error
            assert "pw" not in error
        accepted = await api.client.post(
            "/v3/channels/c/drains",
            json={"url": f"http://127.0.0.1:{port + 1}/logs"},
            headers=ADMIN,
        )
        assert accepted.status_code == 201, accepted.text
        drain_id = accepted.json()["id"]
        response = await api.client.put(
            f"/v3/channels/c/drains/{drain_id}",
            json={"url": f"http://localhost:{port}/logs"},
            headers=ADMIN,
        )
        assert response.status_code == 400
        assert "own http listener" in response.json()["error"]
        config = await api.store.get_channel("c")
        assert config is not None
        assert [d.url for d in config.drains] == [f"http://127.0.0.1:{port + 1}/logs"]


async def test_a_wildcard_listener_counts_every_local_address(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        api.state.config = dataclasses.replace(
            api.state.config, listen_addresses=(("syslog", "0.0.0.0:6601"),)
        )
        for url in ("syslog://127.0.0.1:6601", "syslog://127.0.0.53:6601", "http://[::1]:6601/"):
            response = await api.client.post(
                "/v3/channels/c/drains", json={"url": url}, headers=ADMIN
            )
            assert response.status_code == 400, url
            assert "own syslog listener (0.0.0.0:6601)" in response.json()["error"]
        for url in ("syslog://192.0.2.1:6601", "syslog+udp://127.0.0.1:6601"):
            response = await api.client.post(
                "/v3/channels/c/drains", json={"url": url}, headers=ADMIN
            )
            assert response.status_code == 201, (url, response.text)


async def test_logplex_serve_refuses_drains_into_its_own_listeners(tmp_path: Path) -> None:
    async with logplex_serve(tmp_path) as router:
        key = (router.data_dir / "auth-key").read_text().strip()
        admin = {"Authorization": f"Bearer {key}"}
        http_port = httpx.URL(router.http_url).port
        syslog_port = int(router.syslog_address.rpartition(":")[2])
        shim_port = int(router.shim_address.rpartition(":")[2])
        with socket.socket() as spare:  # a local port that is none of the router's
            spare.bind(("127.0.0.1", 0))
            other_port = spare.getsockname()[1]
        async with httpx.AsyncClient(base_url=router.http_url, headers=admin) as client:
            assert (await client.put("/v3/channels/c", json={"tokens": []})).status_code == 201
            refused = {
                f"http://127.0.0.1:{http_port}/logs": "http",
                f"http://localhost:{http_port}/logs": "http",
                f"syslog://localhost:{syslog_port}": "syslog",
                f"syslog+tls://127.0.0.1:{shim_port}": "shim",
            }
            for url, listener in refused.items():
                response = await client.post("/v3/channels/c/drains", json={"url": url})
                assert response.status_code == 400, url
                assert f"own {listener} listener" in response.json()["error"]
            accepted = await client.post(
                "/v3/channels/c/drains", json={"url": f"http://127.0.0.1:{other_port}/logs"}
            )
            assert accepted.status_code == 201, accepted.text
            response = await client.put(
                f"/v3/channels/c/drains/{accepted.json()['id']}",
                json={"url": f"http://localhost:{http_port}/logs"},
            )
            assert response.status_code == 400
            drains = (await client.get("/v3/channels/c/drains")).json()
            assert [d["url"] for d in drains] == [f"http://127.0.0.1:{other_port}/logs"]
