"""The message record and the batch shared by every consumer."""

from __future__ import annotations

from logplex.codecs import records
from logplex.codecs.records import Batch


def test_batch_is_a_list_of_messages_with_a_memo() -> None:
    messages = [(1, 190, b"app", b"web.1", b"a"), (2, 187, b"app", b"web.1", b"b")]
    batch = Batch(messages)
    assert len(batch) == 2
    assert repr(batch) == "Batch(2 messages)"
    assert batch.messages is messages
    assert batch.encoded == {}


def test_pri_by_kind_follows_design_section_5() -> None:
    assert records.PRI_BY_KIND == {1: 190, 2: 187, 3: 189}
    assert records.PRI_ROUTER_NOTICE == 172
    assert (records.ROUTER_NOTICE_SOURCE, records.ROUTER_NOTICE_PS) == (b"heroku", b"logplex")
