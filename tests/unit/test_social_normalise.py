"""ingest-social's adapter on X API v2 pages shaped as the X docs show them (fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from deskstream.events import Channel, Visibility
from deskstream.ids import event_id
from deskstream_ingest_social.normalise import (
    DM,
    MENTION,
    Account,
    Ignore,
    Includes,
    Publish,
    Reject,
    normalise,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "social"
DESK = Account("1500000000000000001", "itdesk")


def page(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


def outcomes(kind: str, body: dict[str, Any]) -> list[Any]:
    includes = Includes.of(body)
    return [normalise(kind, item, includes, DESK) for item in body["data"]]


def test_a_mention_is_public_threaded_by_conversation_and_names_its_author() -> None:
    reply, root, own = outcomes(MENTION, page("mentions_page.json"))
    assert isinstance(reply, Publish)
    msg = reply.message
    assert msg.event_id == event_id("x-mention", "1800000000000001000")
    assert msg.channel is Channel.SOCIAL
    assert msg.visibility is Visibility.PUBLIC
    assert msg.conversation_key == "x-post:1800000000000000000"
    assert msg.reply_to == [event_id("x-mention", "1800000000000000000")]
    assert (msg.sender.kind, msg.sender.id, msg.sender.handle, msg.sender.display_name) == (
        "x",
        "3344994946",
        "tom_k",
        "Tom Klein",
    )
    assert msg.text == "the VPN gateway in Lisbon is down again"  # leading handles stripped
    assert msg.full_text == "@itdesk @maria_l the VPN gateway in Lisbon is down again"
    assert msg.subject == "the VPN gateway in Lisbon is down again"
    assert msg.locale == "en"
    assert msg.raw_ref == "https://x.com/tom_k/status/1800000000000001000"
    assert reply.source["post_id"] == "1800000000000001000"
    assert isinstance(root, Publish)
    assert root.message.conversation_key == msg.conversation_key
    assert root.message.ticket_hint == "DS-ABCDEFGH"
    assert root.message.locale is None  # "und": undetermined
    assert isinstance(own, Ignore)  # the desk's own post: no loop


def test_dm_events_are_private_and_only_messages_from_others_count() -> None:
    message, join, own, empty = outcomes(DM, page("dm_events_page.json"))
    assert isinstance(message, Publish)
    msg = message.message
    assert msg.event_id == event_id("x-dm", "1580705921830768647")
    assert msg.visibility is Visibility.PRIVATE
    assert msg.conversation_key == "x-dm:1500000000000000001-2244994945"
    assert msg.sender.handle == "maria_l"
    assert message.source["author_id"] == "2244994945"
    assert isinstance(join, Ignore)
    assert "ParticipantsJoin" in join.reason
    assert isinstance(own, Ignore)
    assert isinstance(empty, Reject)  # a message without text cannot become one
    assert b"1580705921830768620" in empty.raw


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"text": "no id", "author_id": "1"}, "id"),
        ({"id": "12", "text": "no author"}, "author_id"),
        ({"id": "12", "author_id": "3", "text": "x", "created_at": "yesterday"}, "created_at"),
        ("not an object", "JSON object"),
    ],
)
def test_invalid_items_are_rejected_with_a_reason_and_their_bytes(item: Any, problem: str) -> None:
    outcome = normalise(MENTION, item, Includes(), DESK)
    assert isinstance(outcome, Reject)
    assert problem in outcome.reason
    assert json.loads(outcome.raw) == item


def test_a_dm_without_a_conversation_id_gets_the_one_to_one_name() -> None:
    item = {"id": "5", "text": "hi", "event_type": "MessageCreate", "sender_id": "99"}
    outcome = normalise(DM, item, Includes(), DESK)
    assert isinstance(outcome, Publish)
    assert outcome.message.conversation_key == "x-dm:99-1500000000000000001"
