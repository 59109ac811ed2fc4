"""Failed authentications per source address, and the block that follows too many of them.

Owns ``AuthFailures``, the table behind the API's ``--auth-failure-limit`` (DESIGN section 3,
docs/security.md). Each address that fails an admin-key or channel-token check gets a fixed
window of ``window_s`` seconds starting at its first failure; once ``limit`` failures fall in
the window, every authenticated request from that address is answered 429 until the window
ends, whatever credentials it carries (a correct key must not tell a guesser it was right).
Requests refused with 429 are not counted, so ``Retry-After`` stays exact.

The table is bounded: past ``max_addresses`` entries the one whose window began earliest is
forgotten. An attacker with more source addresses than that within one window can therefore
guess longer than the limit says; the cap bounds the router's memory, not the attacker.
Time is whatever clock the caller passes (``trio.current_time()`` in the app).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

AUTH_FAILURE_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 10_000


@dataclass(slots=True)
class _Window:
    started_at_s: float
    failures: int


@dataclass(slots=True)
class AuthFailures:
    """Failed authentications per address in fixed windows (see the module docstring)."""

    limit: int
    window_s: float = AUTH_FAILURE_WINDOW_S
    max_addresses: int = MAX_TRACKED_ADDRESSES
    # Insertion order is window-start order: a new window is always appended.
    _windows: OrderedDict[str, _Window] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._windows)

    def blocked_for_s(self, address: str, now_s: float) -> float | None:
        """Seconds until ``address`` may try again, or None while it is not blocked."""
        if not self._windows:  # the common case costs one test
            return None
        window = self._windows.get(address)
        if window is None:
            return None
        ends_at_s = window.started_at_s + self.window_s
        if now_s >= ends_at_s:
            del self._windows[address]
            return None
        return ends_at_s - now_s if window.failures >= self.limit else None

    def failed(self, address: str, now_s: float) -> bool:
        """Count one failure of ``address``; True when it reaches the limit just now."""
        window = self._windows.get(address)
        if window is None or now_s >= window.started_at_s + self.window_s:
            self._windows.pop(address, None)
            while len(self._windows) >= self.max_addresses:
                self._windows.popitem(last=False)
            window = self._windows[address] = _Window(now_s, 0)
        window.failures += 1
        return window.failures == self.limit
