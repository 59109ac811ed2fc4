"""Real ``nats-server`` processes for the cluster tests: one node or a routed cluster, each with
JetStream on, its own config file and store directory under the test's ``tmp_path``.

A node keeps its ports and store directory across ``restart()``, so a test can take NATS away
and bring the same server (and its streams) back. Readiness is polled on the monitoring port
(``/healthz``, and ``/jsz`` for an elected JetStream meta leader in a cluster), never assumed
after a fixed sleep. Every process started here is killed at interpreter exit at the latest,
so a failed or interrupted test leaves none behind.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
CLUSTER_NAME = "logplex-test"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.02

_live: dict[int, subprocess.Popen[bytes]] = {}


def _kill_leftovers() -> None:
    for process in list(_live.values()):
        if process.poll() is None:
            process.kill()
            process.wait()
    _live.clear()


atexit.register(_kill_leftovers)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class NatsNode:
    """One ``nats-server`` with JetStream: ``start``, ``stop``, ``kill``, ``pause``, ``resume``,
    ``restart`` (same ports, same store)."""

    def __init__(
        self,
        base_dir: Path,
        name: str,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
        extra_config: str = "",
    ) -> None:
        self.name = name
        self.dir = base_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store_dir = self.dir / "store"
        self.config_path = self.dir / "nats.conf"
        self.log_path = self.dir / "nats.log"
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _config(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 4GB",
            "}",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.routes)
            lines += [
                "cluster {",
                f"  name: {CLUSTER_NAME}",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, *, wait: bool = True) -> None:
        """Write the config and start the server; with ``wait``, return once it is healthy."""
        if self.running:
            raise RuntimeError(f"nats node {self.name} is already running")
        self.config_path.write_text(self._config())
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        _live[self.process.pid] = self.process
        if wait:
            self.wait_ready()

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-max_bytes:].decode(errors="replace")

    def _poll(self, what: str, timeout_s: float, probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(
                    f"nats node {self.name} exited while waiting for {what}:\n{self.log_tail()}"
                )
            try:
                if probe():
                    return
            except (OSError, http.client.HTTPException, ValueError) as error:
                last = error
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nats node {self.name}: no {what} within {timeout_s} s (last: {last!r}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_POLL_S)

    def healthy(self) -> bool:
        status, _ = _http_get(self.monitor_port, "/healthz?js-enabled-only=true")
        return status == 200

    def jsz(self) -> dict[str, object]:
        status, body = _http_get(self.monitor_port, "/jsz")
        if status != 200:
            raise ValueError(f"/jsz answered {status}")
        value = json.loads(body)
        assert isinstance(value, dict)
        return value

    def meta_leader(self) -> str | None:
        """The server name of the JetStream meta leader as this node sees it (None: none)."""
        meta = self.jsz().get("meta_cluster")
        if not isinstance(meta, dict):
            return None
        leader = meta.get("leader")
        return leader if isinstance(leader, str) and leader else None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        self._poll("health", timeout_s, self.healthy)

    def wait_meta_leader(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        self._poll("JetStream meta leader", timeout_s, lambda: self.meta_leader() is not None)

    def _wait_exit(self) -> None:
        assert self.process is not None
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        _live.pop(self.process.pid, None)

    def stop(self) -> None:
        """SIGTERM and wait for the exit (SIGKILL after ``STOP_TIMEOUT_S``)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.resume()
            self.process.send_signal(signal.SIGTERM)
        self._wait_exit()

    def kill(self) -> None:
        """SIGKILL and wait: the server gets no chance to flush or say goodbye."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self._wait_exit()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing."""
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self, *, wait: bool = True) -> None:
        """Stop (if running) and start again on the same ports with the same store."""
        self.stop()
        self.start(wait=wait)


def start_node(tmp_path: Path, name: str = "n1", *, extra_config: str = "") -> NatsNode:
    """A single JetStream node under ``tmp_path/name``, healthy on return."""
    node = NatsNode(tmp_path, name, extra_config=extra_config)
    try:
        node.start()
    except BaseException:
        node.kill()
        raise
    return node


def start_cluster(tmp_path: Path, size: int = 3, *, prefix: str = "n") -> list[NatsNode]:
    """``size`` routed JetStream nodes (``n1``..), returned once every node is healthy and
    sees the same elected JetStream meta leader."""
    cluster_ports = [free_port() for _ in range(size)]
    nodes = [
        NatsNode(
            tmp_path,
            f"{prefix}{index + 1}",
            cluster_port=cluster_ports[index],
            routes=[port for other, port in enumerate(cluster_ports) if other != index],
        )
        for index in range(size)
    ]
    try:
        for node in nodes:
            node.start(wait=False)
        wait_cluster(nodes)
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


def wait_cluster(nodes: Sequence[NatsNode], timeout_s: float = READY_TIMEOUT_S) -> str:
    """Wait until every running node is healthy and all agree on one meta leader; its name."""
    running = [node for node in nodes if node.running]
    for node in running:
        node.wait_meta_leader(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        leaders = {node.meta_leader() for node in running}
        if len(leaders) == 1 and None not in leaders and all(n.healthy() for n in running):
            leader = leaders.pop()
            assert leader is not None
            return leader
        if time.monotonic() > deadline:
            raise TimeoutError(f"the nats cluster did not agree on a meta leader: {leaders}")
        time.sleep(_POLL_S)
