"""A canary for the guard tests: a real shim, a live tail and a health probe that must stay
unaffected while a test attacks the same router.

``Canary(api, shim, token, channel)`` runs, in threads and one subprocess:

- a real ``logshim`` whose app prints ``canary N`` lines at ``rate_per_s`` to the router's
  shim listener under ``token``;
- a tail session (``POST /v3/sessions`` with ``tail``) read line by line;
- a probe that fetches ``/healthcheck`` every ``probe_interval_s`` and records its latency.

``stop()`` ends the shim (it exits after shipping everything, DESIGN 6) and then checks:
every ``canary N`` line the app printed arrived in the tail, in order and without a gap;
every probe answered 200; the slowest probe took under ``max_probe_s``. It raises
AssertionError saying what went wrong. Use it as a context manager around the attack:

    with Canary(api, shim, token, "canary") as canary:
        ...attack...
    # leaving the block stops it and runs the checks
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx

LOGSHIM = str(Path(sys.executable).with_name("logshim"))
ADMIN_HEADER = "Authorization"


def _app(rate_per_s: float) -> str:
    return (
        "import sys, time\n"
        "n = 0\n"
        "while True:\n"
        "    print(f'canary {n}', flush=True)\n"
        "    n += 1\n"
        f"    time.sleep({1 / rate_per_s!r})\n"
    )


class Canary:
    """A shim, a tail and a health probe beside an attack (see the module docstring)."""

    def __init__(
        self,
        api: str,
        shim: str,
        token: str,
        channel: str,
        *,
        auth_key: str,
        rate_per_s: float = 20.0,
        probe_interval_s: float = 0.2,
        max_probe_s: float = 3.0,
    ) -> None:
        self.api = api.rstrip("/")
        self.shim = shim
        self.token = token
        self.channel = channel
        self.auth_key = auth_key
        self.rate_per_s = rate_per_s
        self.probe_interval_s = probe_interval_s
        self.max_probe_s = max_probe_s
        self.tail_lines: list[str] = []
        self.probe_latencies_s: list[float] = []
        self.probe_failures: list[str] = []
        self.tail_error: BaseException | None = None
        self._stop = threading.Event()
        self._tail_ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._shim: subprocess.Popen[bytes] | None = None
        self._shim_stdout: list[bytes] = []

    # -- running -----------------------------------------------------------------------------

    def start(self) -> Canary:
        tail = threading.Thread(target=self._tail, name="canary-tail", daemon=True)
        tail.start()
        self._threads.append(tail)
        if not self._tail_ready.wait(30):
            raise AssertionError(f"the canary's tail session did not start: {self.tail_error!r}")
        probe = threading.Thread(target=self._probe, name="canary-probe", daemon=True)
        probe.start()
        self._threads.append(probe)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX_", "LOGSHIM_"))}
        env.pop("PYTHONUNBUFFERED", None)
        env["LOGPLEX_TOKEN"] = self.token
        self._shim = subprocess.Popen(
            [
                *(LOGSHIM, "--url", f"tcp://{self.shim}", "--ps", "canary.1", "--"),
                *(sys.executable, "-c", _app(self.rate_per_s)),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        reader = threading.Thread(target=self._read_shim_stdout, daemon=True)
        reader.start()
        self._threads.append(reader)
        return self

    def wait_for_lines(self, count: int, timeout_s: float = 60.0) -> None:
        """Block until the tail has seen ``count`` canary lines (the canary is flowing)."""
        deadline = time.monotonic() + timeout_s
        while len(self.tail_lines) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the canary's tail saw {len(self.tail_lines)} lines in {timeout_s} s, "
                    f"not {count}; tail error: {self.tail_error!r}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the shim's app, wait until the tail has every line it printed, then check."""
        printed = self._stop_shim()
        deadline = time.monotonic() + 60
        while len(self.tail_lines) < printed and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.check(printed)

    def check(self, printed: int) -> None:
        expected = [f"canary {n}" for n in range(printed)]
        seen = self.tail_lines[:printed]
        if seen != expected:
            missing = sorted(set(expected) - set(seen), key=lambda s: int(s.split()[1]))
            raise AssertionError(
                f"the canary's tail saw {len(self.tail_lines)} of {printed} lines; "
                f"first missing: {missing[:5]}; tail error: {self.tail_error!r}"
            )
        if self.probe_failures:
            raise AssertionError(f"/healthcheck failed: {self.probe_failures[:5]}")
        if not self.probe_latencies_s:
            raise AssertionError("the health probe never ran")
        slowest = max(self.probe_latencies_s)
        if slowest > self.max_probe_s:
            raise AssertionError(
                f"/healthcheck took {slowest:.2f} s at worst (limit {self.max_probe_s} s)"
            )

    def __enter__(self) -> Canary:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._stop.set()
            self._kill_shim()
            return
        self.stop()

    # -- the parts ---------------------------------------------------------------------------

    def _tail(self) -> None:
        """Create a tail session, then read it over a plain socket with a short timeout, so
        ``stop()`` ends this thread at once (HTTP/1.0: the body ends when the router closes,
        no chunked framing to undo)."""
        headers = {ADMIN_HEADER: f"Bearer {self.auth_key}"}
        try:
            created = httpx.post(
                f"{self.api}/v3/sessions",
                json={"channel_id": self.channel, "tail": True, "num": "0"},
                headers=headers,
                timeout=30,
            )
            created.raise_for_status()
            url = httpx.URL(created.json()["url"])
            with socket.create_connection((url.host, url.port or 80), timeout=30) as sock:
                sock.sendall(f"GET {url.raw_path.decode()} HTTP/1.0\r\n\r\n".encode())
                sock.settimeout(0.2)
                buffered = b""
                in_body = False
                while not self._stop.is_set():
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        raise ConnectionError("the router ended the tail session")
                    buffered += chunk
                    if not in_body:
                        head, sep, rest = buffered.partition(b"\r\n\r\n")
                        if not sep:
                            continue
                        status = head.split(b"\r\n", 1)[0]
                        if b" 200 " not in status + b" ":
                            raise ConnectionError(f"tail answered {status!r}")
                        in_body, buffered = True, rest
                        self._tail_ready.set()
                    *lines, buffered = buffered.split(b"\n")
                    for line in lines:
                        text = line.decode(errors="replace").split(": ", 1)[-1]
                        if text.startswith("canary "):
                            self.tail_lines.append(text)
        except BaseException as error:  # reported by check()
            self.tail_error = error
            self._tail_ready.set()

    def _probe(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(self.probe_interval_s):
                started = time.monotonic()
                try:
                    response = client.get(f"{self.api}/healthcheck")
                except httpx.HTTPError as error:
                    self.probe_failures.append(repr(error))
                    continue
                self.probe_latencies_s.append(time.monotonic() - started)
                if response.status_code != 200:
                    self.probe_failures.append(f"{response.status_code} {response.text[:80]}")

    def _read_shim_stdout(self) -> None:
        assert self._shim is not None
        assert self._shim.stdout is not None
        for line in self._shim.stdout:
            self._shim_stdout.append(line)

    def _stop_shim(self) -> int:
        """SIGTERM the shim (it forwards it to the app and ships what is left); the number
        of lines the app printed."""
        assert self._shim is not None
        self._shim.terminate()
        code = self._shim.wait(60)
        for thread in self._threads[2:]:
            thread.join(10)
        if self._shim.stdout is not None:
            self._shim.stdout.close()
        printed = sum(1 for line in self._shim_stdout if line.startswith(b"canary "))
        if printed == 0:
            raise AssertionError(f"the canary's app printed nothing (shim exit {code})")
        return printed

    def _kill_shim(self) -> None:
        if self._shim is None:
            return
        if self._shim.poll() is None:
            self._shim.kill()
            self._shim.wait(30)
        if self._shim.stdout is not None:
            self._shim.stdout.close()
