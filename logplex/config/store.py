"""The config store: channels, their tokens and their drains, persisted in SQLite.

DESIGN section 3 (what the API writes) and section 7 (SQLite through ``trio.to_thread``). The
store is the source of truth for configuration; the router keeps an in-memory index built from
the ``ChannelConfig`` records the store returns, so the hot path never touches SQLite.

- One connection, used by one worker thread at a time: every call takes ``self._lock`` (a
  ``trio.Lock``) and then runs its SQL in ``trio.to_thread.run_sync``. Write operations run
  inside ``BEGIN IMMEDIATE`` so each one is atomic.
- WAL journal mode, foreign keys on, a ``schema_version`` table and an ordered list of
  migrations applied at open (each in its own transaction).
- Tokens are ``t.<uuid4>`` and drain tokens ``d.<uuid4>``; ``uuid.uuid4()`` draws from
  ``os.urandom``. Drain ids are integers (Logplex-compatible), unique across the store and
  never reused.

Validation that is about stored state lives here (duplicate drain URL, the limits on channels,
tokens per channel and drains per channel, name syntax), checked inside the write's
transaction so concurrent writers cannot pass a limit together; validation of drain URL
syntax belongs to ``drains.parse_drain_url``, called by the API before it writes.

``ConfigStoreAPI`` is what the API needs of a store: this one, or the cluster's
``logplex.cluster.kvconfig.KvConfigStore`` (NATS KV), which shares the checks, errors and
messages defined here so both stores refuse the same writes with the same words.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

import trio

from logplex.config.records import ChannelConfig, DrainConfig

T = TypeVar("T")

# Channel names travel in URL paths and CLI arguments: a conservative charset, bounded length.
CHANNEL_NAME_MAX_CHARS = 128
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
# Token names become the SOURCE (RFC 5424 APP-NAME) of every message written with the token:
# printable US-ASCII (33..126), 1 to 48 characters (RFC 5424 section 6.2.5). Square brackets
# are refused too, so a tail line ``TS SOURCE[PS]: MSG`` (DESIGN 5.3) splits unambiguously
# at its first '['.
TOKEN_NAME_MAX_CHARS = 48
_TOKEN_NAME = re.compile(r"[!-Z\\^-~]+\Z")
DRAIN_URL_MAX_CHARS = 2048


class ConfigError(Exception):
    """A config write was refused; ``str(error)`` says why and what to do."""


class InvalidName(ConfigError):
    """A channel or token name breaks the naming rules."""


class ChannelNotFound(ConfigError):
    """The named channel does not exist."""


class DrainNotFound(ConfigError):
    """The channel has no drain with this id."""


class DuplicateDrainURL(ConfigError):
    """The channel already has a drain with this URL."""


class TooManyDrains(ConfigError):
    """The channel already has the maximum number of drains."""


class TooManyChannels(ConfigError):
    """Creating the channel would pass the limit on channels (``--max-channels``)."""


class TooManyTokens(ConfigError):
    """The channel would have more tokens than allowed (``--max-tokens-per-channel``)."""


class StoreUnavailable(ConfigError):
    """A shared store (the cluster's NATS KV) could not be reached or did not confirm a
    write in time; the message says whether the write may have happened. Never raised by
    the SQLite ``ConfigStore``."""


def too_many_tokens(channel: str, count: int, max_tokens: int) -> TooManyTokens:
    return TooManyTokens(
        f"token limit reached: channel {channel!r} would have {count} tokens, the limit is "
        f"{max_tokens} (--max-tokens-per-channel); revoke one first"
    )


def too_many_channels(existing: int, max_channels: int) -> TooManyChannels:
    return TooManyChannels(
        f"channel limit reached: {existing} channels exist, the limit is "
        f"{max_channels} (--max-channels); delete a channel first"
    )


def too_many_drains(channel: str, existing: int, max_drains: int) -> TooManyDrains:
    return TooManyDrains(
        f"channel {channel!r} already has {existing} drains, the "
        f"maximum is {max_drains} (--max-drains-per-channel); remove one first"
    )


def channel_not_found(name: str) -> ChannelNotFound:
    return ChannelNotFound(f"channel {name!r} not found")


def check_channel_name(name: str) -> None:
    """Raise ``InvalidName`` unless ``name`` is a valid channel name."""
    if not name or len(name) > CHANNEL_NAME_MAX_CHARS or not _CHANNEL_NAME.match(name):
        raise InvalidName(
            f"invalid channel name {name!r}: use 1 to {CHANNEL_NAME_MAX_CHARS} characters "
            "of A-Z a-z 0-9 . _ : - starting with a letter or digit"
        )


def check_token_name(name: str) -> None:
    """Raise ``InvalidName`` unless ``name`` is valid as an RFC 5424 APP-NAME."""
    if not name or len(name) > TOKEN_NAME_MAX_CHARS or not _TOKEN_NAME.match(name):
        raise InvalidName(
            f"invalid token name {name!r}: a token name becomes the syslog APP-NAME, so it "
            f"must be 1 to {TOKEN_NAME_MAX_CHARS} printable ASCII characters without spaces "
            "(and without [ or ], which would make tail lines ambiguous)"
        )


def wanted_token_names(
    channel: str, token_names: Iterable[str], max_tokens: int | None
) -> list[str]:
    """The checked, sorted, distinct token names a ``put_channel`` asks for (both stores)."""
    check_channel_name(channel)
    wanted = sorted(set(token_names))
    for token_name in wanted:
        check_token_name(token_name)
    if max_tokens is not None and len(wanted) > max_tokens:
        raise too_many_tokens(channel, len(wanted), max_tokens)
    return wanted


def new_token() -> str:
    return f"t.{uuid.uuid4()}"


def new_drain_token() -> str:
    return f"d.{uuid.uuid4()}"


# Ordered migrations: index i brings the schema from version i to version i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE channels (
            name TEXT PRIMARY KEY NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE tokens (
            token TEXT PRIMARY KEY NOT NULL,
            channel TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
            name TEXT NOT NULL,
            UNIQUE (channel, name)
        )""",
        """CREATE TABLE drains (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            channel TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
            token TEXT NOT NULL UNIQUE,
            url TEXT NOT NULL,
            UNIQUE (channel, url)
        )""",
        "CREATE INDEX drains_by_channel ON drains(channel)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to ``SCHEMA_VERSION``; return the version found before."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        found = 0
    else:
        found = int(row[0])
    if found > SCHEMA_VERSION:
        raise ConfigError(
            f"the config database has schema version {found}, newer than this logplex "
            f"understands ({SCHEMA_VERSION}); upgrade logplex or use another --data-dir"
        )
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return found


def _connect(path: Path) -> sqlite3.Connection:
    # Tokens and drain URLs (which may carry credentials) are secrets: the database is
    # readable by its owner only. SQLite gives its -wal and -shm files the same mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _read_channel(conn: sqlite3.Connection, name: str) -> ChannelConfig | None:
    if conn.execute("SELECT 1 FROM channels WHERE name = ?", (name,)).fetchone() is None:
        return None
    tokens = dict(
        conn.execute(
            "SELECT name, token FROM tokens WHERE channel = ? ORDER BY name", (name,)
        ).fetchall()
    )
    drains = tuple(
        DrainConfig(id=int(row[0]), token=row[1], url=row[2])
        for row in conn.execute(
            "SELECT id, token, url FROM drains WHERE channel = ? ORDER BY id", (name,)
        )
    )
    return ChannelConfig(name=name, tokens=tokens, drains=drains)


def _require_channel(conn: sqlite3.Connection, name: str) -> ChannelConfig:
    config = _read_channel(conn, name)
    if config is None:
        raise channel_not_found(name)
    return config


class ConfigStoreAPI(Protocol):
    """The config store as the API uses it: SQLite (``ConfigStore``) or NATS KV
    (``logplex.cluster.kvconfig.KvConfigStore``); the same results and errors.

    ``applies_itself`` tells who applies a written config to the router: False, the API
    handler does, right after the write (under its write lock, so in the store's order);
    True, the store does (its watcher applies every revision, this router's and others', in
    revision order), and a handler must not, lest it regress a newer revision applied
    meanwhile.
    """

    @property
    def applies_itself(self) -> bool: ...

    async def load_channels(self) -> list[ChannelConfig]: ...
    async def get_channel(self, name: str) -> ChannelConfig | None: ...
    async def list_channel_names(self) -> list[str]: ...
    async def put_channel(
        self,
        name: str,
        token_names: Iterable[str],
        *,
        max_channels: int | None = None,
        max_tokens: int | None = None,
    ) -> tuple[ChannelConfig, bool]: ...
    async def delete_channel(self, name: str) -> None: ...
    async def add_token(
        self, channel: str, name: str, *, max_tokens: int | None = None
    ) -> tuple[ChannelConfig, str, bool]: ...
    async def add_drain(
        self, channel: str, url: str, *, max_drains: int
    ) -> tuple[ChannelConfig, DrainConfig]: ...
    async def update_drain(
        self, channel: str, drain_id: int, url: str
    ) -> tuple[ChannelConfig, DrainConfig]: ...
    async def remove_drain(self, channel: str, drain_id: int) -> ChannelConfig: ...
    async def aclose(self) -> None: ...


class ConfigStore:
    """Channels, tokens and drains in one SQLite database; see the module docstring."""

    applies_itself = False  # ConfigStoreAPI: the API handlers apply what they wrote

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = trio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> ConfigStore:
        """Open (creating and migrating when needed) the database at ``path``."""
        conn = await trio.to_thread.run_sync(_connect, path)
        return cls(conn, path)

    async def aclose(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await trio.to_thread.run_sync(conn.close)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise ConfigError("the config store is closed")
            return await trio.to_thread.run_sync(fn, conn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside one ``BEGIN IMMEDIATE`` transaction: all of it or nothing."""

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._run(transaction)

    # -- reads ------------------------------------------------------------------------------

    async def schema_version(self) -> int:
        return await self._run(
            lambda conn: int(conn.execute("SELECT version FROM schema_version").fetchone()[0])
        )

    async def load_channels(self) -> list[ChannelConfig]:
        """Every channel with its tokens and drains, by name."""

        def load(conn: sqlite3.Connection) -> list[ChannelConfig]:
            tokens: dict[str, dict[str, str]] = {}
            for channel, name, token in conn.execute(
                "SELECT channel, name, token FROM tokens ORDER BY channel, name"
            ):
                tokens.setdefault(channel, {})[name] = token
            drains: dict[str, list[DrainConfig]] = {}
            for channel, drain_id, token, url in conn.execute(
                "SELECT channel, id, token, url FROM drains ORDER BY id"
            ):
                drains.setdefault(channel, []).append(DrainConfig(int(drain_id), token, url))
            return [
                ChannelConfig(name, tokens.get(name, {}), tuple(drains.get(name, ())))
                for (name,) in conn.execute("SELECT name FROM channels ORDER BY name")
            ]

        return await self._run(load)

    async def get_channel(self, name: str) -> ChannelConfig | None:
        return await self._run(lambda conn: _read_channel(conn, name))

    async def list_channel_names(self) -> list[str]:
        return await self._run(
            lambda conn: [row[0] for row in conn.execute("SELECT name FROM channels ORDER BY name")]
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
        """Create or update ``name`` so its tokens are exactly ``token_names``.

        Existing tokens whose name stays keep their value; new names get new tokens; names
        not listed are revoked. Returns the channel and whether it was created. Raises
        ``TooManyTokens`` for more than ``max_tokens`` names and ``TooManyChannels`` when a
        new channel would make more than ``max_channels``.
        """
        wanted = wanted_token_names(name, token_names, max_tokens)

        def put(conn: sqlite3.Connection) -> tuple[ChannelConfig, bool]:
            created = (
                conn.execute("INSERT OR IGNORE INTO channels (name) VALUES (?)", (name,)).rowcount
                == 1
            )
            if created and max_channels is not None:
                (count,) = conn.execute("SELECT count(*) FROM channels").fetchone()
                if count > max_channels:
                    raise too_many_channels(count - 1, max_channels)
            existing = {
                row[0] for row in conn.execute("SELECT name FROM tokens WHERE channel = ?", (name,))
            }
            conn.executemany(
                "DELETE FROM tokens WHERE channel = ? AND name = ?",
                [(name, gone) for gone in sorted(existing - set(wanted))],
            )
            conn.executemany(
                "INSERT INTO tokens (token, channel, name) VALUES (?, ?, ?)",
                [(new_token(), name, added) for added in wanted if added not in existing],
            )
            return _require_channel(conn, name), created

        return await self._write(put)

    async def delete_channel(self, name: str) -> None:
        """Delete the channel with its tokens and drains; ``ChannelNotFound`` if absent."""

        def delete(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM channels WHERE name = ?", (name,)).rowcount == 0:
                raise channel_not_found(name)

        await self._write(delete)

    async def add_token(
        self, channel: str, name: str, *, max_tokens: int | None = None
    ) -> tuple[ChannelConfig, str, bool]:
        """Ensure ``channel`` has a token called ``name``.

        Returns the channel, the token, and whether it was created (False when the channel
        already had a token of that name: the existing one is returned, never replaced, so
        writers holding it keep working). A new token past ``max_tokens`` is
        ``TooManyTokens``. The channel is read once: the result is that read plus the new
        token (tokens by name, as every read returns them).
        """
        check_token_name(name)

        def add(conn: sqlite3.Connection) -> tuple[ChannelConfig, str, bool]:
            config = _require_channel(conn, channel)
            if name in config.tokens:
                return config, config.tokens[name], False
            if max_tokens is not None and len(config.tokens) >= max_tokens:
                raise too_many_tokens(channel, len(config.tokens) + 1, max_tokens)
            token = new_token()
            conn.execute(
                "INSERT INTO tokens (token, channel, name) VALUES (?, ?, ?)",
                (token, channel, name),
            )
            tokens = dict(sorted({**config.tokens, name: token}.items()))
            return dataclasses.replace(config, tokens=tokens), token, True

        return await self._write(add)

    async def add_drain(
        self, channel: str, url: str, *, max_drains: int
    ) -> tuple[ChannelConfig, DrainConfig]:
        """Add a drain with a new id and ``d.<uuid4>`` token.

        Raises ``ChannelNotFound``, ``DuplicateDrainURL`` or ``TooManyDrains``.
        """

        def add(conn: sqlite3.Connection) -> tuple[ChannelConfig, DrainConfig]:
            config = _require_channel(conn, channel)
            check_unique_url(config, url, drain_id=None)
            if len(config.drains) >= max_drains:
                raise too_many_drains(channel, len(config.drains), max_drains)
            token = new_drain_token()
            cursor = conn.execute(
                "INSERT INTO drains (channel, token, url) VALUES (?, ?, ?)", (channel, token, url)
            )
            drain_id = cursor.lastrowid
            assert drain_id is not None
            return _require_channel(conn, channel), DrainConfig(drain_id, token, url)

        return await self._write(add)

    async def update_drain(
        self, channel: str, drain_id: int, url: str
    ) -> tuple[ChannelConfig, DrainConfig]:
        """Point drain ``drain_id`` at ``url``, keeping its id and token."""

        def update(conn: sqlite3.Connection) -> tuple[ChannelConfig, DrainConfig]:
            config = _require_channel(conn, channel)
            drain = require_drain(config, drain_id)
            check_unique_url(config, url, drain_id=drain_id)
            conn.execute("UPDATE drains SET url = ? WHERE id = ?", (url, drain_id))
            return _require_channel(conn, channel), DrainConfig(drain.id, drain.token, url)

        return await self._write(update)

    async def remove_drain(self, channel: str, drain_id: int) -> ChannelConfig:
        """Remove drain ``drain_id`` of ``channel``; ``DrainNotFound`` if it has none."""

        def remove(conn: sqlite3.Connection) -> ChannelConfig:
            require_drain(_require_channel(conn, channel), drain_id)
            conn.execute("DELETE FROM drains WHERE id = ?", (drain_id,))
            return _require_channel(conn, channel)

        return await self._write(remove)


def require_drain(config: ChannelConfig, drain_id: int) -> DrainConfig:
    for drain in config.drains:
        if drain.id == drain_id:
            return drain
    raise DrainNotFound(f"channel {config.name!r} has no drain with id {drain_id}")


def check_unique_url(config: ChannelConfig, url: str, *, drain_id: int | None) -> None:
    for drain in config.drains:
        if drain.url == url and drain.id != drain_id:
            raise DuplicateDrainURL(
                f"channel {config.name!r} already has drain {drain.id} with this URL"
            )
