"""ConfigStore: SQLite persistence, schema migrations, token formats and the write rules."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from logplex.config.store import (
    SCHEMA_VERSION,
    ChannelNotFound,
    ConfigError,
    ConfigStore,
    DrainNotFound,
    DuplicateDrainURL,
    InvalidName,
    TooManyDrains,
    check_channel_name,
    check_token_name,
)

UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


async def open_store(tmp_path: Path) -> ConfigStore:
    return await ConfigStore.open(tmp_path / "config.sqlite3")


async def test_new_database_is_wal_and_at_current_schema(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    assert await store.schema_version() == SCHEMA_VERSION == 1
    await store.aclose()
    conn = sqlite3.connect(tmp_path / "config.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    conn.close()


async def test_database_and_its_wal_are_private_to_their_owner(tmp_path: Path) -> None:
    path = tmp_path / "config.sqlite3"
    path.touch(mode=0o644)  # an existing database with a wider mode is tightened too
    path.chmod(0o644)
    store = await open_store(tmp_path)
    await store.put_channel("private", ["app"])
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("config.sqlite3*")}
    await store.aclose()
    assert modes["config.sqlite3"] == 0o600
    assert modes["config.sqlite3-wal"] == 0o600


async def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "config.sqlite3")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="newer than this logplex"):
        await open_store(tmp_path)


async def test_put_channel_creates_then_updates_to_the_desired_token_set(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    config, created = await store.put_channel("app1", ["app", "heroku"])
    assert created
    assert config.name == "app1"
    assert sorted(config.tokens) == ["app", "heroku"]
    for token in config.tokens.values():
        assert re.fullmatch("t." + UUID4, token)
    assert len(set(config.tokens.values())) == 2

    again, created = await store.put_channel("app1", ["app", "router"])
    assert not created
    assert sorted(again.tokens) == ["app", "router"]
    assert again.tokens["app"] == config.tokens["app"]  # kept, not rotated
    assert again.tokens["router"] not in config.tokens.values()
    await store.aclose()


async def test_everything_persists_across_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put_channel("b", ["app"])
    await store.put_channel("a", [])
    _, drain = await store.add_drain("b", "syslog://x:1", max_drains=6)
    await store.aclose()

    reopened = await open_store(tmp_path)
    channels = await reopened.load_channels()
    assert [c.name for c in channels] == ["a", "b"]
    assert channels[0].tokens == {}
    assert channels[1].drains == (drain,)
    assert await reopened.list_channel_names() == ["a", "b"]
    await reopened.aclose()


async def test_delete_channel_takes_tokens_and_drains(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put_channel("gone", ["app"])
    await store.add_drain("gone", "syslog://x:1", max_drains=6)
    await store.delete_channel("gone")
    assert await store.get_channel("gone") is None
    with pytest.raises(ChannelNotFound):
        await store.delete_channel("gone")
    # Re-created empty: nothing of the old channel comes back.
    config, created = await store.put_channel("gone", [])
    assert created
    assert config.tokens == {}
    assert config.drains == ()
    await store.aclose()


async def test_add_token_is_idempotent_per_name(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put_channel("c", [])
    config, token, created = await store.add_token("c", "app")
    assert created
    assert config.tokens == {"app": token}
    _, same, created = await store.add_token("c", "app")
    assert not created
    assert same == token
    with pytest.raises(ChannelNotFound):
        await store.add_token("nope", "app")
    await store.aclose()


async def test_drains_ids_tokens_duplicates_and_limit(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put_channel("c", [])
    await store.put_channel("other", [])
    _, first = await store.add_drain("c", "https://a.example/logs", max_drains=2)
    assert re.fullmatch("d." + UUID4, first.token)
    with pytest.raises(DuplicateDrainURL, match=f"drain {first.id}"):
        await store.add_drain("c", "https://a.example/logs", max_drains=2)
    # The same URL on another channel is fine.
    _, elsewhere = await store.add_drain("other", "https://a.example/logs", max_drains=2)
    _, second = await store.add_drain("c", "syslog://b:601", max_drains=2)
    assert len({first.id, second.id, elsewhere.id}) == 3
    with pytest.raises(TooManyDrains, match="maximum is 2"):
        await store.add_drain("c", "syslog://c:601", max_drains=2)
    with pytest.raises(ChannelNotFound):
        await store.add_drain("nope", "syslog://c:601", max_drains=2)
    await store.aclose()


async def test_update_and_remove_drain(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put_channel("c", [])
    await store.put_channel("other", [])
    _, first = await store.add_drain("c", "syslog://a:1", max_drains=6)
    _, second = await store.add_drain("c", "syslog://b:1", max_drains=6)
    _, foreign = await store.add_drain("other", "syslog://z:1", max_drains=6)

    config, updated = await store.update_drain("c", first.id, "syslog://a:2")
    assert (updated.id, updated.token, updated.url) == (first.id, first.token, "syslog://a:2")
    assert config.drains[0] == updated
    # Same URL on the same drain is not a conflict; another drain's URL is.
    await store.update_drain("c", first.id, "syslog://a:2")
    with pytest.raises(DuplicateDrainURL):
        await store.update_drain("c", first.id, "syslog://b:1")
    with pytest.raises(DrainNotFound):
        await store.update_drain("c", foreign.id, "syslog://q:1")  # belongs to another channel

    config = await store.remove_drain("c", first.id)
    assert config.drains == (second,)
    with pytest.raises(DrainNotFound):
        await store.remove_drain("c", first.id)
    # Ids are never reused.
    _, third = await store.add_drain("c", "syslog://a:1", max_drains=6)
    assert third.id > foreign.id
    await store.aclose()


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("app", True),
        ("my-app.staging_2:eu", True),
        ("0", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("-lead", False),
        (".hidden", False),
        ("has space", False),
        ("slash/inside", False),
        ("ünïcode", False),
        ("q?x", False),
    ],
)
def test_channel_name_rules(name: str, valid: bool) -> None:
    if valid:
        check_channel_name(name)
    else:
        with pytest.raises(InvalidName, match="invalid channel name"):
            check_channel_name(name)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("app", True),
        ("heroku", True),
        ("a" * 48, True),
        ("!~\\^_`{|}", True),
        ("a[1]", False),  # brackets would make tail lines ambiguous
        ("a]", False),
        ("a" * 49, False),
        ("", False),
        ("with space", False),
        ("tab\tname", False),
        ("é", False),
        ("nul\x00", False),
    ],
)
def test_token_name_rules(name: str, valid: bool) -> None:
    if valid:
        check_token_name(name)
    else:
        with pytest.raises(InvalidName, match="APP-NAME"):
            check_token_name(name)


async def test_invalid_names_are_refused_before_writing(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    with pytest.raises(InvalidName):
        await store.put_channel("bad name", [])
    with pytest.raises(InvalidName):
        await store.put_channel("good", ["bad token"])
    assert await store.list_channel_names() == []
    await store.aclose()


async def test_closed_store_says_so(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.aclose()
    with pytest.raises(ConfigError, match="closed"):
        await store.list_channel_names()
