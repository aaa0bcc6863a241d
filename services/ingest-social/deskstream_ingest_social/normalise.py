"""X posts and DM events (X API v2 JSON) into `InboundMessage`s: pure, no I/O.

One function per kind of item, chosen by a dispatch table (`NORMALISE`); each returns an
outcome: `Publish` (with what a reply later needs to find its target at X), `Ignore` (the
desk's own posts and DMs, DM events that are not messages), or `Reject` (an item that
cannot be a valid message: it goes to the dead-letter topic with its original bytes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deskstream.events import Channel, InboundMessage, SenderIdentity, Visibility
from deskstream.ids import event_id, find_ticket_token
from pydantic import ValidationError

EVENT_TYPE = "io.deskstream.inbound.v1"
MENTION = "mention"
DM = "dm"
SUBJECT_CHARS = 100
# Leading @handles of a reply ("@desk @alice my VPN ...") address people, not the issue.
_LEADING_HANDLES = re.compile(r"^(?:@\w{1,15}\s+)+")
_ID = re.compile(r"^[0-9]{1,20}$")


@dataclass(frozen=True)
class Account:
    """The desk's own X account: its posts and DMs are never tickets (no loops)."""

    user_id: str
    username: str = ""


@dataclass(frozen=True)
class Includes:
    """The `includes` of one page, by id (authors, referenced posts)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    tweets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Includes:
        includes = body.get("includes") or {}
        if not isinstance(includes, dict):
            return cls()
        return cls(
            users=_by_id(includes.get("users")),
            tweets=_by_id(includes.get("tweets")),
        )


def _by_id(items: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(items, list):
        return {}
    return {str(i["id"]): i for i in items if isinstance(i, dict) and "id" in i}


@dataclass(frozen=True)
class Publish:
    message: InboundMessage
    # What the message was at X, kept so a reply can be posted to it (see delivery.py).
    source: dict[str, Any]


@dataclass(frozen=True)
class Ignore:
    reason: str
    event_id: str | None


@dataclass(frozen=True)
class Reject:
    reason: str
    error_type: str
    event_id: str | None
    raw: bytes


Outcome = Publish | Ignore | Reject


class Invalid(ValueError):
    """The item lacks what every message needs (an id, an author, text)."""


def mention_event_id(post_id: str) -> str:
    return event_id("x-mention", post_id)


def dm_event_id(dm_event: str) -> str:
    return event_id("x-dm", dm_event)


def normalise(kind: str, item: Any, includes: Includes, account: Account) -> Outcome:
    """The outcome of one item of a page; never raises."""
    raw = json.dumps(item, ensure_ascii=False, sort_keys=True).encode("utf-8")
    item_id = item.get("id") if isinstance(item, dict) else None
    eid = None
    if isinstance(item_id, str) and _ID.match(item_id):
        eid = mention_event_id(item_id) if kind == MENTION else dm_event_id(item_id)
    try:
        if not isinstance(item, dict):
            raise Invalid(f"a {kind} must be a JSON object, not {type(item).__name__}")
        return NORMALISE[kind](item, includes, account)
    except (Invalid, ValidationError) as exc:
        return Reject(str(exc)[:3900], type(exc).__name__, eid, raw)


def _mention(post: dict[str, Any], includes: Includes, account: Account) -> Outcome:
    post_id = _required_id(post, "id")
    author_id = _required_id(post, "author_id")
    eid = mention_event_id(post_id)
    if author_id == account.user_id:
        return Ignore("the desk's own post", eid)
    text = _text(post)
    conversation_id = _optional_id(post, "conversation_id") or post_id
    replied_to = [
        str(ref["id"])
        for ref in post.get("referenced_tweets") or []
        if isinstance(ref, dict) and ref.get("type") == "replied_to" and "id" in ref
    ]
    sender = _sender(author_id, includes)
    message = InboundMessage(
        event_id=eid,
        channel=Channel.SOCIAL,
        conversation_key=f"x-post:{conversation_id}",
        sender=sender,
        subject=_subject(text),
        text=_strip_handles(text),
        full_text=text,
        received_at=_created_at(post),
        reply_to=[mention_event_id(r) for r in replied_to if _ID.match(r)][:100],
        ticket_hint=find_ticket_token(text),
        visibility=Visibility.PUBLIC,
        raw_ref=f"https://x.com/{sender.handle or 'i'}/status/{post_id}",
        locale=_lang(post),
    )
    source = {
        "_id": eid,
        "kind": MENTION,
        "account": account.user_id,
        "post_id": post_id,
        "author_id": author_id,
        "conversation_id": conversation_id,
    }
    return Publish(message, source)


def _dm(dm: dict[str, Any], includes: Includes, account: Account) -> Outcome:
    dm_id = _required_id(dm, "id")
    eid = dm_event_id(dm_id)
    event_type = dm.get("event_type", "MessageCreate")
    if event_type != "MessageCreate":
        return Ignore(f"not a message: {event_type}"[:100], eid)
    sender_id = _required_id(dm, "sender_id")
    if sender_id == account.user_id:
        return Ignore("the desk's own direct message", eid)
    text = _text(dm)
    # One-to-one conversations are named "<lower id>-<higher id>" by X.
    conversation = dm.get("dm_conversation_id")
    if not isinstance(conversation, str) or not conversation:
        low, high = sorted((sender_id, account.user_id), key=int)
        conversation = f"{low}-{high}"
    sender = _sender(sender_id, includes)
    message = InboundMessage(
        event_id=eid,
        channel=Channel.SOCIAL,
        conversation_key=f"x-dm:{conversation}"[:200],
        sender=sender,
        subject=_subject(text),
        text=text,
        received_at=_created_at(dm),
        ticket_hint=find_ticket_token(text),
        visibility=Visibility.PRIVATE,
        raw_ref=f"x-dm:{conversation}/{dm_id}"[:1000],
    )
    source = {
        "_id": eid,
        "kind": DM,
        "account": account.user_id,
        "dm_event_id": dm_id,
        "author_id": sender_id,
        "dm_conversation_id": conversation,
    }
    return Publish(message, source)


NORMALISE: dict[str, Callable[[dict[str, Any], Includes, Account], Outcome]] = {
    MENTION: _mention,
    DM: _dm,
}


def _required_id(item: Mapping[str, Any], name: str) -> str:
    value = _optional_id(item, name)
    if value is None:
        raise Invalid(f"{name} is missing or not a numeric id string: {item.get(name)!r:.60}")
    return value


def _optional_id(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value if isinstance(value, str) and _ID.match(value) else None


def _text(item: Mapping[str, Any]) -> str:
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Invalid("text is missing or empty")
    return text


def _sender(user_id: str, includes: Includes) -> SenderIdentity:
    user = includes.users.get(user_id, {})
    name, handle = user.get("name"), user.get("username")
    return SenderIdentity(
        channel=Channel.SOCIAL,
        kind="x",
        id=user_id,
        display_name=name[:200] if isinstance(name, str) and name else None,
        handle=handle[:200] if isinstance(handle, str) and handle else None,
    )


def _created_at(item: Mapping[str, Any]) -> datetime:
    value = item.get("created_at")
    if value is None:
        return datetime.now(UTC)  # not requested: the time it was read
    if not isinstance(value, str):
        raise Invalid(f"created_at is not a timestamp: {value!r:.60}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Invalid(f"created_at is not an ISO 8601 timestamp: {value!r:.60}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _lang(item: Mapping[str, Any]) -> str | None:
    lang = item.get("lang")
    return lang if isinstance(lang, str) and 0 < len(lang) <= 35 and lang != "und" else None


def _strip_handles(text: str) -> str:
    stripped = _LEADING_HANDLES.sub("", text).strip()
    return stripped or text


def _subject(text: str) -> str:
    line = " ".join(_strip_handles(text).split())
    return line if len(line) <= SUBJECT_CHARS else line[: SUBJECT_CHARS - 1] + "…"
