"""The Slack adapter: an Events API request body -> a message to publish, a challenge, or why not.

Only `message` events become tickets: in a configured support channel, or a direct message
to the app (`channel_type` "im"). Bots (the app itself included), edits, deletions and
other message subtypes are ignored. A thread is one conversation: its key is the thread's
root `ts` (`thread_ts`, or the message's own `ts` when it starts one).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deskstream.events import Channel, InboundMessage, SenderIdentity
from deskstream.ids import event_id
from pydantic import ValidationError

from deskstream_ingest_chat.outcomes import Challenge, Ignored, Invalid, Publish, subject_of

EVENT_TYPE = "io.deskstream.inbound.chat.slack.v1"
# Subtypes that are still a person writing; every other subtype (message_changed,
# message_deleted, bot_message, channel_join, ...) is not a new request.
_PERSON_SUBTYPES = {None, "file_share", "thread_broadcast"}


@dataclass(frozen=True)
class SlackConfig:
    channels: Collection[str]
    bot_user_id: str | None
    max_text_chars: int


def conversation_key(team: str, channel: str, thread_ts: str) -> str:
    return f"slack:{team}:{channel}:{thread_ts}"


def parse_conversation_key(key: str) -> tuple[str, str, str] | None:
    """(team, channel, thread_ts) of a Slack conversation key, or None for another channel."""
    parts = key.split(":")
    if len(parts) != 4 or parts[0] != "slack":
        return None
    return parts[1], parts[2], parts[3]


def _str(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise Invalid(f"`{name}` must be a non-empty string")
    return value


def _challenge(body: dict[str, Any], _: SlackConfig) -> Challenge:
    return Challenge(_str(body, "challenge"))


def _event_callback(body: dict[str, Any], config: SlackConfig) -> Publish | Ignored:
    envelope_id = _str(body, "event_id")
    team = _str(body, "team_id")
    event = body.get("event")
    if not isinstance(event, dict):
        raise Invalid("`event` must be an object")
    if event.get("type") != "message":
        return Ignored(f"event type {event.get('type')!r}")
    if event.get("subtype") not in _PERSON_SUBTYPES:
        return Ignored(f"message subtype {event.get('subtype')!r}")
    own = {config.bot_user_id} | {
        a.get("user_id")
        for a in body.get("authorizations") or []
        if isinstance(a, dict) and a.get("is_bot")
    }
    if event.get("bot_id") or event.get("user") in own - {None}:
        return Ignored("a bot's message")
    channel = _str(event, "channel")
    if event.get("channel_type") != "im" and channel not in config.channels:
        return Ignored("not a support channel")
    ts, user = _str(event, "ts"), _str(event, "user")
    text = event.get("text") or ""
    if not isinstance(text, str):
        raise Invalid("`event.text` must be a string")
    if len(text) > config.max_text_chars:
        raise Invalid(f"`event.text` longer than {config.max_text_chars} characters")
    root = event.get("thread_ts") if isinstance(event.get("thread_ts"), str) else ts
    try:
        received = datetime.fromtimestamp(float(ts), UTC)
    except (ValueError, OverflowError, OSError):
        raise Invalid("`event.ts` is not a Slack timestamp") from None
    try:
        message = InboundMessage(
            # A Slack message is identified by its channel and ts; the envelope's event_id
            # (below) recognises Slack's retries of the same delivery.
            event_id=event_id("slack", team, channel, ts),
            channel=Channel.CHAT,
            conversation_key=conversation_key(team, channel, str(root)),
            sender=SenderIdentity(channel=Channel.CHAT, kind="slack", id=f"{team}:{user}"),
            subject=subject_of(text, "Slack message"),
            text=text,
            received_at=received,
            raw_ref=f"slack://{team}/{channel}/{ts}",
        )
    except ValidationError as exc:
        raise Invalid(str(exc)) from None
    return Publish(message, dedupe_key=f"slack-event:{envelope_id}")


# A dispatch table on the envelope type; anything else is acknowledged and ignored.
HANDLERS: dict[str, Callable[[dict[str, Any], SlackConfig], Challenge | Publish | Ignored]] = {
    "url_verification": _challenge,
    "event_callback": _event_callback,
}


def interpret(body: dict[str, Any], config: SlackConfig) -> Challenge | Publish | Ignored:
    """What a (signature-checked) Events API body asks for; raises Invalid when malformed."""
    kind = body.get("type")
    handler = HANDLERS.get(kind) if isinstance(kind, str) else None
    if handler is None:
        return Ignored(f"envelope type {kind!r}")
    return handler(body, config)
