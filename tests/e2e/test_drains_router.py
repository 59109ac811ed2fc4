"""Drains through the real router: publish -> drains -> receivers (DESIGN 7, 8, 5.5).

The router (``logplex.fanout.router.Router`` with ``drains.open_drain`` as its factory) fans one
channel out to an HTTPS drain ending at a ``logplex sink`` process over real TLS and to a
syslog+tls drain whose certificate names another host: the first delivers everything, the
second delivers nothing and puts exactly one L14 into the channel's history.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import trio
import trustme

from drains import DrainSettings, open_drain
from logplex.config.records import ChannelConfig, DrainConfig
from logplex.fanout.router import Router

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_795_000_000_000_000


async def test_router_fans_out_to_https_sink_and_reports_l14_for_bad_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_file, cert_file, key_file = (str(tmp_path / n) for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(ca_file)
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    jsonl = tmp_path / "sink.jsonl"
    sink = subprocess.Popen(
        [
            *(sys.executable, "-m", "drains.sink", "--listen", "127.0.0.1:0"),
            *("--tls-cert", cert_file, "--tls-key", key_file, "--jsonl", str(jsonl)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    try:
        assert sink.stdout is not None
        sink_port = sink.stdout.readline().decode().strip().rsplit(":", 1)[1]
        wrong = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("elsewhere.example").configure_cert(wrong)

        async def tls_handler(stream: trio.SocketStream) -> None:
            tls = trio.SSLStream(stream, wrong, server_side=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                pass
            finally:
                await trio.aclose_forcefully(tls)

        router = Router(
            history_lines=5000,  # the L14 must not scroll out behind the 2000 lines
            drain_factory=open_drain,
            drain_settings=DrainSettings(ca_file=ca_file, buffer_messages=5000),
        )
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, tls_handler, 0)
            tls_port = listeners[0].socket.getsockname()[1]
            config = ChannelConfig(
                name="shop",
                tokens={"app": "t.00000000-0000-4000-8000-000000000001"},
                drains=(
                    DrainConfig(
                        1,
                        "d.00000000-0000-4000-8000-00000000000a",
                        f"https://localhost:{sink_port}/in",
                    ),
                    DrainConfig(
                        2,
                        "d.00000000-0000-4000-8000-00000000000b",
                        f"syslog+tls://localhost:{tls_port}",
                    ),
                ),
            )
            router.apply_channel(config)
            await nursery.start(router.run)
            for start in range(0, 2000, 200):
                router.publish(
                    "shop",
                    [
                        (T0 + i, 190, b"app", b"web.1", b"order %d" % i)
                        for i in range(start, start + 200)
                    ],
                )
                await trio.sleep(0.01)
            with trio.move_on_after(30):
                while router.drain_statuses("shop")[1]["delivered"] != 2000:
                    await trio.sleep(0.05)
            with trio.move_on_after(30):
                while not any(m[4].startswith(b"Error L14") for m in router.history("shop")):
                    await trio.sleep(0.05)
            await trio.sleep(2.5)  # more reconnect attempts: still one L14 per failure streak
            statuses = router.drain_statuses("shop")
            history = router.history("shop")
            nursery.cancel_scope.cancel()
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.communicate(timeout=10)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["msg"] for r in records] == [f"order {i}" for i in range(2000)]
    assert {r["drain_token"] for r in records} == {"d.00000000-0000-4000-8000-00000000000a"}
    l14 = [m for m in history if m[4].startswith(b"Error L14")]
    assert len(l14) == 1, statuses[2]["last_error"]
    assert l14[0][1:4] == (172, b"heroku", b"logplex")
    assert l14[0][4].endswith(b'uri="syslog+tls://localhost:%d"' % tls_port)
    assert statuses[1]["state"] == "up"
    assert statuses[2]["state"] == "down"
    assert statuses[2]["delivered"] == 0
    assert "certificate" in str(statuses[2]["last_error"])
