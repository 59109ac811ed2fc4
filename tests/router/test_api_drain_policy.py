"""Drain URLs under ``--deny-private-drains`` at creation and update (DESIGN 2 and 3).

Every spelling of a private destination from the black-box attack is refused with a 400
that names the category (and never anything about a port) while the guard is on, and
accepted while it is off; refusals count in ``logplex_drain_destination_refusals_total``;
no error quotes a credential.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from controlplane_helpers import ADMIN, ApiHarness, running_api
from prometheus_client import REGISTRY

# (URL, category named in the 400)
SPELLINGS = [
    ("http://127.0.0.1:9/logs", "127.0.0.1 is a loopback address"),
    ("https://[::1]:9/logs", "::1 is a loopback address"),
    ("syslog://localhost:9", "localhost is a localhost name"),
    ("syslog+tls://LocalHost.:9", "localhost is a localhost name"),
    ("http://127.1:9/", "127.1 is a loopback address"),
    ("http://2130706433:9/", "2130706433 is a loopback address"),
    ("http://0x7f000001:9/", "0x7f000001 is a loopback address"),
    ("http://0177.0.0.1:9/", "0177.0.0.1 is a loopback address"),
    ("http://0:9/", "0 is an unspecified address"),
    ("http://[::ffff:127.0.0.1]:9/", "::ffff:127.0.0.1 is a loopback address"),
    ("http://[0:0::1]:9/", "0:0::1 is a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://[fe80::1%25eth0]:9/", "is a link-local address"),
    ("syslog://10.0.0.1:514", "10.0.0.1 is a private address"),
    ("syslog://172.16.5.4:514", "172.16.5.4 is a private address"),
    ("syslog+udp://192.168.1.1:514", "192.168.1.1 is a private address"),
    ("syslog://100.64.0.1:514", "100.64.0.1 is a private address"),
    ("https://[fd00::2]/", "fd00::2 is a unique-local address"),
    ("syslog+udp://224.0.0.1:514", "224.0.0.1 is a multicast address"),
    ("https://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:9/", "localhost name"),
    ("https://vm:9/", "vm resolves to a loopback address"),  # /etc/hosts: 127.0.0.1
]


def refusals_at_create() -> float:
    value = REGISTRY.get_sample_value("logplex_drain_destination_refusals_total", {"at": "create"})
    return value or 0.0


def guard(api: ApiHarness, on: bool) -> None:
    api.state.config = dataclasses.replace(api.state.config, deny_private_drains=on)


async def test_every_private_spelling_is_refused_with_the_guard_and_accepted_without(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        guard(api, True)
        before = refusals_at_create()
        for url, category in SPELLINGS:
            response = await api.client.post(
                "/v3/channels/c/drains", json={"url": url}, headers=ADMIN
            )
            assert response.status_code == 400, (url, response.text)
            error = response.json()["error"]
            assert error.startswith("drain destination refused by policy: "), error
            assert category in error, (url, error)
            assert "--deny-private-drains" in error
        assert refusals_at_create() == before + len(SPELLINGS)
        config = await api.store.get_channel("c")
        assert config is not None
        assert config.drains == ()

        guard(api, False)
        for url, _ in SPELLINGS:
            response = await api.client.post(
                "/v3/channels/c/drains", json={"url": url}, headers=ADMIN
            )
            assert response.status_code == 201, (url, response.text)
            removed = await api.client.delete(
                f"/v3/channels/c/drains/{response.json()['id']}", headers=ADMIN
            )
            assert removed.status_code == 204


async def test_public_and_unresolvable_hosts_pass_and_an_update_is_checked_too(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        guard(api, True)
        accepted = {}
        # An unresolvable name is stored: DNS can change after any check, so the drain
        # checks again at every connect (and refuses there, as a status).
        for url in ("https://93.184.216.34/logs", "syslog://no-such-host.invalid:514"):
            response = await api.client.post(
                "/v3/channels/c/drains", json={"url": url}, headers=ADMIN
            )
            assert response.status_code == 201, (url, response.text)
            accepted[url] = response.json()["id"]
        drain_id = accepted["https://93.184.216.34/logs"]
        response = await api.client.put(
            f"/v3/channels/c/drains/{drain_id}",
            json={"url": "https://user:pw@0x7f.1:8443/x"},
            headers=ADMIN,
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert "0x7f.1 is a loopback address" in error
        assert "pw" not in error


@pytest.mark.parametrize("on", [False, True])
@pytest.mark.parametrize(
    "url",
    [
        "https://user:s3cr#tpw@logs.example/x",
        "https://user:s3cr?tpw@logs.example/x",
        "https://user:s3cr/tpw@logs.example/x",
        "https://user:9/s3cretpw@logs.example/x",
    ],
)
async def test_no_drain_error_quotes_the_password(tmp_path: Path, url: str, on: bool) -> None:
    async with running_api(tmp_path) as api:
        await api.create_channel("c", [])
        guard(api, on)
        response = await api.client.post("/v3/channels/c/drains", json={"url": url}, headers=ADMIN)
        assert response.status_code == 400
        assert "s3cr" not in response.text
        assert "tpw" not in response.text
        assert "percent-encode" in response.json()["error"]
