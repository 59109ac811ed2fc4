"""The cluster's config store: channels, tokens and drains in the NATS KV bucket
``logplex-config``, shared by every router, applied by each one's watcher (DESIGN section 10).

``KvConfigStore`` has the public API, checks, errors and messages of the SQLite
``logplex.config.store.ConfigStore`` (both satisfy ``ConfigStoreAPI``); what differs is where
the truth lives and who applies it:

- **Layout.** One key per channel, ``c.<name>``, whose value is the channel's whole
  ``ChannelConfig`` as JSON (``{"v": 1, "channel", "tokens", "drains"}``, tokens by name,
  drains by id). NATS KV keys allow only ``A-Z a-z 0-9 - _ = . /`` with ``.`` separating
  tokens, and channel names may hold ``:`` and any run of ``.``: every character outside
  ``A-Z a-z 0-9 - _`` is written ``=XX`` (its two upper-case hex digits), so ``web:app.v2``
  is the key ``c.web=3Aapp=2Ev2``. The mapping is one-to-one and the encoded name is a single
  key token (``channel_key`` / ``channel_of_key``). The bucket also holds ``n.drain-id``, the
  last drain id handed out (decimal), and ``n.sync``, written only to learn a revision.
- **Writes** are read-modify-write on the channel's key: ``kv_create`` for a new channel,
  ``kv_update(..., last_revision)`` otherwise, a conditional delete for a deletion. A write
  that finds the key changed under it (``WrongRevision`` / ``KeyExists``) reads again and
  redoes its checks, at most ``MAX_WRITE_ATTEMPTS`` times, so two routers writing one
  channel at once never lose an update. A write whose outcome is unknown (a timeout, the
  connection dropping) is not retried (it may have happened, and a drain added twice is
  worse than an error): it raises ``StoreUnavailable`` saying so.
- **Drain ids** come from ``n.drain-id``, advanced by compare-and-set: integers unique in
  the cluster and never reused (a failed write leaves a gap). Should the counter be lost,
  the next id still starts past every id the index holds.
- **Limits.** Tokens and drains per channel are checked inside the compare-and-set, so they
  are exact. ``max_channels`` is checked against this store's watched index: routers creating
  different channels at the same moment may together pass it by at most the number of
  routers racing (one router's writes are serialised, and each sees its own creations).
- **Applying.** ``run`` watches the whole bucket and calls ``apply(config)`` /
  ``remove(name)`` (the router's ``apply_channel`` / ``remove_channel``) for every change, in
  revision order, from one task, and keeps the index that reads (``get_channel``,
  ``list_channel_names``, ``load_channels``) are served from, so what a read shows is what the
  router has applied. API handlers do not apply what they wrote (``applies_itself``): this
  router's writes and every other router's reach the router the same way.
- **Read-your-writes.** A write returns only once the watcher has applied a revision at
  least the write's (a deletion learns its revision from a write of ``n.sync``, as KV
  deletes do not return one), or raises ``StoreUnavailable`` after ``apply_timeout_s``: the
  write is then stored and takes effect here once the watch catches up.
- **Foreign values.** A value that is not a channel config (written by something else, or by
  a newer version) is logged once per key, without its content (it would hold tokens), and
  ignored: the channel keeps what was last applied. Writing to such a channel is refused
  until it is deleted.
- **Bounds.** Values are at most ``max_value_bytes`` (the bucket's own limit too); the watch
  buffers at most ``WATCH_BUFFER`` entries; the index holds one record per channel.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final, Generic, TypeVar

import trio

from logplex.cluster import names
from logplex.cluster.bridge import (
    BridgeError,
    KeyExists,
    KvEntry,
    NatsBridge,
    WrongRevision,
)
from logplex.config.records import ChannelConfig, DrainConfig
from logplex.config.store import (
    ConfigError,
    StoreUnavailable,
    channel_not_found,
    check_channel_name,
    check_token_name,
    check_unique_url,
    new_drain_token,
    new_token,
    require_drain,
    too_many_channels,
    too_many_drains,
    too_many_tokens,
    wanted_token_names,
)

T = TypeVar("T")

log = logging.getLogger("logplex.cluster.kvconfig")

CHANNEL_KEY_PREFIX: Final = "c."
DRAIN_ID_KEY: Final = "n.drain-id"
SYNC_KEY: Final = "n.sync"
FORMAT_VERSION: Final = 1
DEFAULT_MAX_VALUE_BYTES: Final = 1024 * 1024
DEFAULT_APPLY_TIMEOUT_S: Final = 10.0
MAX_WRITE_ATTEMPTS: Final = 20
WATCH_BUFFER: Final = 1024
MAX_DRAIN_ID_DIGITS: Final = 18
MAX_UNREADABLE_KEYS: Final = 1024  # keys remembered as unreadable, so each is logged once
_REWATCH_MAX_DELAY_S: Final = 5.0

_KEEP = re.compile(r"[A-Za-z0-9_-]")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")
_ENCODED_NAME = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+\Z")


# -- keys and values (pure) ----------------------------------------------------------------


def channel_key(name: str) -> str:
    """The KV key of channel ``name`` (see the module docstring)."""
    return CHANNEL_KEY_PREFIX + "".join(
        char if _KEEP.match(char) else f"={ord(char):02X}" for char in name
    )


def channel_of_key(key: str) -> str | None:
    """The channel whose key is ``key``, or None when ``key`` is not a channel key."""
    encoded = key.removeprefix(CHANNEL_KEY_PREFIX)
    if encoded == key or not _ENCODED_NAME.match(encoded):
        return None
    name = _ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), encoded)
    try:
        check_channel_name(name)
    except ConfigError:
        return None
    return name if channel_key(name) == key else None


def encode_channel(config: ChannelConfig) -> bytes:
    return json.dumps(
        {"v": FORMAT_VERSION, **config.to_json()}, separators=(",", ":"), sort_keys=True
    ).encode()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_channel(name: str, data: bytes) -> ChannelConfig:
    """The ``ChannelConfig`` stored for ``name``; ValueError saying what is wrong (never
    quoting a token or URL)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError("it is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("it is not a JSON object")
    if doc.get("v") != FORMAT_VERSION:
        raise ValueError(f"its format version is not {FORMAT_VERSION}")
    if doc.get("channel") != name:
        raise ValueError("it names another channel than its key")
    tokens = doc.get("tokens")
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()
    ):
        raise ValueError("its tokens are not an object of strings")
    raw_drains = doc.get("drains")
    if not isinstance(raw_drains, list):
        raise ValueError("its drains are not a list")
    drains: list[DrainConfig] = []
    for drain in raw_drains:
        if not (
            isinstance(drain, dict)
            and _is_int(drain.get("id"))
            and drain["id"] > 0
            and isinstance(drain.get("token"), str)
            and isinstance(drain.get("url"), str)
        ):
            raise ValueError("a drain is not {id: positive integer, token, url}")
        drains.append(DrainConfig(drain["id"], drain["token"], drain["url"]))
    if len({drain.id for drain in drains}) != len(drains):
        raise ValueError("two drains share an id")
    return ChannelConfig(
        name, dict(sorted(tokens.items())), tuple(sorted(drains, key=lambda d: d.id))
    )


def _parse_drain_id(data: bytes | None) -> int | None:
    if data is None:
        return None
    text = data.decode("ascii", "replace")
    if not text.isdigit() or len(text) > MAX_DRAIN_ID_DIGITS:
        raise ConfigError(
            f"the drain id counter ({DRAIN_ID_KEY} in the NATS KV bucket {names.CONFIG_BUCKET}) "
            "holds something else than a number; put the highest drain id in use there"
        )
    return int(text)


# -- the store -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Change(Generic[T]):
    """What a write decided after reading the channel: ``result`` to return, and ``config``
    to store (``delete``: delete the key; neither: nothing to write)."""

    result: T
    config: ChannelConfig | None = None
    delete: bool = False


class KvConfigStore:
    """Channels, tokens and drains in NATS KV; see the module docstring."""

    applies_itself = True  # ConfigStoreAPI: the watcher applies, handlers must not

    def __init__(
        self,
        bridge: NatsBridge,
        *,
        apply: Callable[[ChannelConfig], None],
        remove: Callable[[str], None],
        replicas: int = 1,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        apply_timeout_s: float = DEFAULT_APPLY_TIMEOUT_S,
    ) -> None:
        self._bridge = bridge
        self._apply = apply
        self._remove = remove
        self.replicas = replicas
        self.max_value_bytes = max_value_bytes
        self.apply_timeout_s = apply_timeout_s
        self.bucket = names.CONFIG_BUCKET
        self._channels: dict[str, tuple[ChannelConfig, int]] = {}  # name -> (config, revision)
        self._unreadable: set[str] = set()  # keys whose value was logged as unreadable
        self._unreadable_overflow = False
        self._applied_revision = 0
        self._progress = trio.Event()
        self._write_lock = trio.Lock()
        self._running = False
        self._closed = False

    @property
    def applied_revision(self) -> int:
        """The highest bucket revision the watcher has applied."""
        return self._applied_revision

    # -- the watcher ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ensure the bucket, apply every channel in it, ``task_status.started()``, then
        apply every change until cancelled. Should the watch end or fail later, it is opened
        again and the index brought back in line (channels gone meanwhile are removed).

        Raises ``StoreUnavailable`` when NATS cannot be reached at the start. An exception
        from ``apply`` or ``remove`` ends ``run`` with it: a router that cannot apply its
        config must not go on serving an older one.
        """
        await self._call(
            "creating the config bucket",
            self._bridge.ensure_kv(
                self.bucket, history=1, replicas=self.replicas, max_value_bytes=self.max_value_bytes
            ),
        )
        started = False
        delay_s = 0.1
        try:
            while True:
                try:
                    async with self._bridge.kv_watch(
                        self.bucket, ">", max_buffer=WATCH_BUFFER
                    ) as entries:
                        if await self._sync(entries):
                            delay_s = 0.1
                            if not started:
                                started = True
                                self._running = True
                                task_status.started()
                            async for entry in entries:
                                self._apply_entry(entry)
                    if not started:
                        raise StoreUnavailable(
                            f"the watch of the NATS KV bucket {self.bucket} ended before it "
                            "delivered the stored channels; check the connection to NATS"
                        )
                    log.warning("the watch of the config bucket ended; opening it again")
                except BridgeError as error:
                    if not started:
                        raise StoreUnavailable(
                            f"cannot watch the NATS KV bucket {self.bucket}: {error}; check "
                            "that NATS is reachable and JetStream is enabled"
                        ) from None
                    log.warning(
                        "the watch of the config bucket failed (%s); opening it again", error
                    )
                await trio.sleep(delay_s)
                delay_s = min(delay_s * 2, _REWATCH_MAX_DELAY_S)
        finally:
            self._running = False

    async def _sync(self, entries: trio.MemoryReceiveChannel[KvEntry]) -> bool:
        """Apply the initial values of a new watch; True once its end marker came. Channels
        the index holds that the bucket no longer has are removed."""
        seen: set[str] = set()
        async for entry in entries:
            if entry.key == "" and entry.revision == 0:
                for name in [n for n in self._channels if channel_key(n) not in seen]:
                    del self._channels[name]
                    self._remove(name)
                return True
            seen.add(entry.key)
            self._apply_entry(entry)
        return False

    def _apply_entry(self, entry: KvEntry) -> None:
        key = entry.key
        name = channel_of_key(key)
        if name is not None:
            held = self._channels.get(name)
            if held is not None and held[1] == entry.revision:
                pass  # a new watch delivering what is applied already
            elif entry.value is None:
                self._unreadable.discard(key)
                if self._channels.pop(name, None) is not None:
                    self._remove(name)
            else:
                try:
                    config = decode_channel(name, entry.value)
                except ValueError as error:
                    self._note_unreadable(key, str(error))
                else:
                    self._unreadable.discard(key)
                    self._channels[name] = (config, entry.revision)
                    self._apply(config)
        elif not key.startswith("n.") and entry.value is not None:
            self._note_unreadable(key, "the key is not a channel key", channel=False)
        if entry.revision > self._applied_revision:
            self._applied_revision = entry.revision
            self._progress.set()
            self._progress = trio.Event()

    def _note_unreadable(self, key: str, why: str, *, channel: bool = True) -> None:
        if key in self._unreadable:
            return
        if len(self._unreadable) >= MAX_UNREADABLE_KEYS:
            if not self._unreadable_overflow:
                self._unreadable_overflow = True
                log.warning(
                    "config bucket %s: more than %d keys hold values that are not channel "
                    "configs; no more are logged",
                    self.bucket,
                    MAX_UNREADABLE_KEYS,
                )
            return
        self._unreadable.add(key)
        shown = key if len(key) <= 200 else key[:200] + "…"
        log.warning(
            "config bucket %s: the value of %r is not a channel config (%s); ignored%s",
            self.bucket,
            shown,
            why,
            ", the channel keeps its last applied config" if channel else "",
        )

    async def _wait_applied(self, revision: int, what: str) -> None:
        with trio.move_on_after(self.apply_timeout_s):
            while self._applied_revision < revision:
                await self._progress.wait()
            return
        raise StoreUnavailable(
            f"{what} is stored in NATS (revision {revision}) but this router's config watch "
            f"has not applied it within {self.apply_timeout_s:g} s; it takes effect here once "
            "the watch catches up (check the connection to NATS)"
        )

    # -- reads (from the index) -------------------------------------------------------------

    async def load_channels(self) -> list[ChannelConfig]:
        """Every channel with its tokens and drains, by name."""
        return [self._channels[name][0] for name in sorted(self._channels)]

    async def get_channel(self, name: str) -> ChannelConfig | None:
        held = self._channels.get(name)
        return held[0] if held is not None else None

    async def list_channel_names(self) -> list[str]:
        return sorted(self._channels)

    async def aclose(self) -> None:
        """Refuse further writes; the watcher stops when ``run`` is cancelled."""
        self._closed = True

    # -- talking to NATS --------------------------------------------------------------------

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """``await call``, its errors other than a lost compare-and-set as StoreUnavailable."""
        try:
            return await call
        except (WrongRevision, KeyExists):
            raise
        except BridgeError as error:
            raise StoreUnavailable(
                f"{what}: the NATS KV bucket {self.bucket} did not answer ({error}); retry "
                "once NATS is reachable"
            ) from None

    async def _write_call(self, what: str, call: Awaitable[T]) -> T:
        """Like ``_call`` for a write, whose outcome is unknown when it fails this way."""
        try:
            return await call
        except (WrongRevision, KeyExists):
            raise
        except BridgeError as error:
            raise StoreUnavailable(
                f"{what}: NATS did not confirm the write ({error}); it may or may not have "
                "been stored: read the channel before trying again"
            ) from None

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("the config store is closed")
        if not self._running:
            raise StoreUnavailable(
                "the cluster config store is not watching NATS yet (or any more); retry in a moment"
            )

    def _encoded(self, config: ChannelConfig) -> bytes:
        value = encode_channel(config)
        if len(value) > self.max_value_bytes:
            raise ConfigError(
                f"channel {config.name!r} would take {len(value)} bytes of config, more than "
                f"the {self.max_value_bytes} a value of the NATS KV bucket {self.bucket} may "
                "hold; remove tokens or drains first"
            )
        return value

    async def _read(self, name: str, *, deleting: bool) -> tuple[ChannelConfig | None, int]:
        """The channel as NATS has it now, with its revision (0 when missing). A value that
        is not a channel config refuses every write but a deletion, which sees it as a
        channel without tokens or drains (and so deletes it at its revision)."""
        entry = await self._call(
            f"reading channel {name!r}", self._bridge.kv_get(self.bucket, channel_key(name))
        )
        if entry is None or entry.value is None:
            return None, 0
        try:
            return decode_channel(name, entry.value), entry.revision
        except ValueError as error:
            if deleting:
                return ChannelConfig(name), entry.revision
            raise ConfigError(
                f"the stored config of channel {name!r} is unreadable ({error}); delete the "
                "channel and create it again"
            ) from None

    async def _modify(
        self,
        name: str,
        decide: Callable[[ChannelConfig | None], Awaitable[_Change[T]]],
        *,
        deleting: bool = False,
    ) -> T:
        """Read ``name``, ``decide``, write by compare-and-set, retry on a lost race; return
        once the watcher has applied the outcome."""
        self._check_open()
        key = channel_key(name)
        what = f"writing channel {name!r}"
        written = f"the write of channel {name!r}"
        async with self._write_lock:
            for attempt in range(MAX_WRITE_ATTEMPTS):
                current, revision = await self._read(name, deleting=deleting)
                change = await decide(current)
                try:
                    if change.delete:
                        await self._write_call(
                            what, self._bridge.kv_delete(self.bucket, key, last_revision=revision)
                        )
                        # A delete does not tell its revision; a later write's is larger.
                        revision = await self._write_call(
                            what, self._bridge.kv_put(self.bucket, SYNC_KEY, b"")
                        )
                    elif change.config is not None:
                        value = self._encoded(change.config)
                        if current is None:
                            call = self._bridge.kv_create(self.bucket, key, value)
                        else:
                            call = self._bridge.kv_update(self.bucket, key, value, revision)
                        revision = await self._write_call(what, call)
                except (WrongRevision, KeyExists):
                    # Another writer got there first: read again, decide again.
                    await trio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                    continue
                await self._wait_applied(revision, written)
                return change.result
        raise StoreUnavailable(
            f"channel {name!r} changed {MAX_WRITE_ATTEMPTS} times while this write was being "
            "made; try again"
        )

    async def _next_drain_id(self) -> int:
        floor = max(
            (drain.id for config, _ in self._channels.values() for drain in config.drains),
            default=0,
        )
        what = "allocating a drain id"
        for attempt in range(MAX_WRITE_ATTEMPTS):
            entry = await self._call(what, self._bridge.kv_get(self.bucket, DRAIN_ID_KEY))
            last = _parse_drain_id(entry.value if entry is not None else None)
            drain_id = max(last or 0, floor) + 1
            value = str(drain_id).encode()
            try:
                if entry is None or last is None:
                    await self._write_call(
                        what, self._bridge.kv_create(self.bucket, DRAIN_ID_KEY, value)
                    )
                else:
                    await self._write_call(
                        what,
                        self._bridge.kv_update(self.bucket, DRAIN_ID_KEY, value, entry.revision),
                    )
            except (WrongRevision, KeyExists):
                await trio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            return drain_id
        raise StoreUnavailable(
            f"the drain id counter changed {MAX_WRITE_ATTEMPTS} times while taking an id; try again"
        )

    # -- writes -----------------------------------------------------------------------------

    async def put_channel(
        self,
        name: str,
        token_names: Iterable[str],
        *,
        max_channels: int | None = None,
        max_tokens: int | None = None,
    ) -> tuple[ChannelConfig, bool]:
        """Create or update ``name`` so its tokens are exactly ``token_names`` (as
        ``ConfigStore.put_channel``: kept names keep their token, new names get new tokens,
        names not listed are revoked). Returns the channel and whether it was created."""
        wanted = wanted_token_names(name, token_names, max_tokens)

        async def decide(current: ChannelConfig | None) -> _Change[tuple[ChannelConfig, bool]]:
            if current is None:
                existing = len(self._channels) - (name in self._channels)
                if max_channels is not None and existing + 1 > max_channels:
                    raise too_many_channels(existing, max_channels)
                config = ChannelConfig(name, {n: new_token() for n in wanted})
                return _Change((config, True), config)
            tokens = {n: current.tokens.get(n) or new_token() for n in wanted}
            if tokens == current.tokens:
                return _Change((current, False))
            config = replace(current, tokens=tokens)
            return _Change((config, False), config)

        return await self._modify(name, decide)

    async def delete_channel(self, name: str) -> None:
        """Delete the channel with its tokens and drains; ``ChannelNotFound`` if absent."""

        async def decide(current: ChannelConfig | None) -> _Change[None]:
            if current is None:
                raise channel_not_found(name)
            return _Change(None, delete=True)

        await self._modify(name, decide, deleting=True)

    async def add_token(
        self, channel: str, name: str, *, max_tokens: int | None = None
    ) -> tuple[ChannelConfig, str, bool]:
        """Ensure ``channel`` has a token called ``name`` (as ``ConfigStore.add_token``: an
        existing token is returned, never replaced)."""
        check_token_name(name)

        async def decide(current: ChannelConfig | None) -> _Change[tuple[ChannelConfig, str, bool]]:
            if current is None:
                raise channel_not_found(channel)
            if name in current.tokens:
                return _Change((current, current.tokens[name], False))
            if max_tokens is not None and len(current.tokens) >= max_tokens:
                raise too_many_tokens(channel, len(current.tokens) + 1, max_tokens)
            token = new_token()
            config = replace(current, tokens=dict(sorted({**current.tokens, name: token}.items())))
            return _Change((config, token, True), config)

        return await self._modify(channel, decide)

    async def add_drain(
        self, channel: str, url: str, *, max_drains: int
    ) -> tuple[ChannelConfig, DrainConfig]:
        """Add a drain with a new cluster-wide id and a ``d.<uuid4>`` token.

        Raises ``ChannelNotFound``, ``DuplicateDrainURL`` or ``TooManyDrains``.
        """
        taken: list[DrainConfig] = []  # the id and token, kept across retries

        async def decide(
            current: ChannelConfig | None,
        ) -> _Change[tuple[ChannelConfig, DrainConfig]]:
            if current is None:
                raise channel_not_found(channel)
            check_unique_url(current, url, drain_id=None)
            if len(current.drains) >= max_drains:
                raise too_many_drains(channel, len(current.drains), max_drains)
            if not taken:
                taken.append(DrainConfig(await self._next_drain_id(), new_drain_token(), url))
            drain = taken[0]
            config = replace(current, drains=(*current.drains, drain))
            return _Change((config, drain), config)

        return await self._modify(channel, decide)

    async def update_drain(
        self, channel: str, drain_id: int, url: str
    ) -> tuple[ChannelConfig, DrainConfig]:
        """Point drain ``drain_id`` at ``url``, keeping its id and token."""

        async def decide(
            current: ChannelConfig | None,
        ) -> _Change[tuple[ChannelConfig, DrainConfig]]:
            if current is None:
                raise channel_not_found(channel)
            drain = require_drain(current, drain_id)
            check_unique_url(current, url, drain_id=drain_id)
            updated = DrainConfig(drain.id, drain.token, url)
            config = replace(
                current, drains=tuple(updated if d.id == drain_id else d for d in current.drains)
            )
            return _Change((config, updated), config)

        return await self._modify(channel, decide)

    async def remove_drain(self, channel: str, drain_id: int) -> ChannelConfig:
        """Remove drain ``drain_id`` of ``channel``; ``DrainNotFound`` if it has none."""

        async def decide(current: ChannelConfig | None) -> _Change[ChannelConfig]:
            if current is None:
                raise channel_not_found(channel)
            require_drain(current, drain_id)
            config = replace(current, drains=tuple(d for d in current.drains if d.id != drain_id))
            return _Change(config, config)

        return await self._modify(channel, decide)
