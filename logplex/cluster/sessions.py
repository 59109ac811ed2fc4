"""Sessions shared by the routers of a cluster, in the NATS KV bucket ``logplex-sessions``
(DESIGN section 10).

``POST /v3/sessions`` on one router answers a URL that a client may fetch on any other. The
creating router stores the session's spec here (``put``, awaited before it answers); a
router asked for an id it does not know looks it up (``get``) and adopts it into its own
registry. Only the spec travels: the history and the tail of a fetch are the router's.

- Keys are ``names.session_key(id)``; ids are canonical uuid4 strings, and anything else
  (a session URL is typed by hand now and then) is looked up as missing without asking
  NATS, so no path can reach a key it was not made for.
- The bucket's TTL is the registry's session lifetime (``ttl_s``): a value expires that long
  after it was written. A router that adopted a session keeps it while it is being used, by
  the registry's own idle rule.
- Values are the spec's JSON (``to_json`` / ``from_json``, given by the API, which owns the
  spec and its validation; this module stays below the API's layer), at most
  ``max_value_bytes``. A value that is too large, not JSON, or refused by ``from_json``
  reads as missing and is logged once per key (bounded), never with its content.
- NATS errors raise ``StoreUnavailable`` (the API answers 503).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Final, Generic, TypeVar

import trio

from logplex.cluster import names
from logplex.cluster.bridge import BridgeError, NatsBridge
from logplex.config.store import StoreUnavailable

S = TypeVar("S")

log = logging.getLogger("logplex.cluster.sessions")

DEFAULT_MAX_VALUE_BYTES: Final = 4096  # a spec is a channel name, two filters, two numbers
MAX_UNREADABLE_KEYS: Final = 1024


def canonical_session_id(session_id: str) -> bool:
    """True when ``session_id`` is a uuid in its canonical lower-case form."""
    try:
        return str(uuid.UUID(session_id)) == session_id
    except ValueError:
        return False


class KvSessions(Generic[S]):
    """Session id -> spec in NATS KV, with a TTL; see the module docstring."""

    def __init__(
        self,
        bridge: NatsBridge,
        *,
        ttl_s: float,
        to_json: Callable[[S], dict[str, object]],
        from_json: Callable[[object], S],
        replicas: int = 1,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"a session lifetime must be positive, got {ttl_s!r} s")
        self._bridge = bridge
        self._to_json = to_json
        self._from_json = from_json
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.max_value_bytes = max_value_bytes
        self.bucket = names.SESSIONS_BUCKET
        self._unreadable: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ensure the bucket (with the TTL), ``task_status.started()``, wait to be cancelled."""
        try:
            await self._bridge.ensure_kv(
                self.bucket,
                history=1,
                ttl_s=self.ttl_s,
                replicas=self.replicas,
                max_value_bytes=self.max_value_bytes,
            )
        except BridgeError as error:
            raise StoreUnavailable(
                f"cannot create the NATS KV bucket {self.bucket}: {error}; check that NATS is "
                "reachable and JetStream is enabled"
            ) from None
        task_status.started()
        await trio.sleep_forever()

    async def put(self, session_id: str, spec: S) -> None:
        """Store ``spec`` under ``session_id`` (a canonical uuid, as the registry makes)."""
        if not canonical_session_id(session_id):
            raise ValueError(f"session ids are canonical uuid strings, not {session_id[:40]!r}")
        value = json.dumps(self._to_json(spec), separators=(",", ":")).encode()
        if len(value) > self.max_value_bytes:
            raise ValueError(
                f"a session spec of {len(value)} bytes is larger than {self.max_value_bytes}"
            )
        try:
            await self._bridge.kv_put(self.bucket, names.session_key(session_id), value)
        except BridgeError as error:
            raise StoreUnavailable(
                f"cannot store the session in the NATS KV bucket {self.bucket} ({error}); "
                "create it again once NATS is reachable"
            ) from None

    async def get(self, session_id: str) -> S | None:
        """The spec stored under ``session_id``, or None (missing, expired, unreadable)."""
        if not canonical_session_id(session_id):
            return None
        key = names.session_key(session_id)
        try:
            entry = await self._bridge.kv_get(self.bucket, key)
        except BridgeError as error:
            raise StoreUnavailable(
                f"cannot look the session up in the NATS KV bucket {self.bucket} ({error}); "
                "try again once NATS is reachable"
            ) from None
        if entry is None or entry.value is None:
            return None
        if len(entry.value) > self.max_value_bytes:
            self._note_unreadable(key, f"it is larger than {self.max_value_bytes} bytes")
            return None
        try:
            return self._from_json(json.loads(entry.value))
        except (ValueError, RecursionError) as error:
            self._note_unreadable(key, str(error)[:200])
            return None

    def _note_unreadable(self, key: str, why: str) -> None:
        if key in self._unreadable or len(self._unreadable) >= MAX_UNREADABLE_KEYS:
            return
        self._unreadable.add(key)
        log.warning(
            "sessions bucket %s: the value of %s is not a session (%s); treated as missing",
            self.bucket,
            key,
            why,
        )
