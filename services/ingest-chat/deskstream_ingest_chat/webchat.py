"""The web chat adapter: a visitor's message over the WebSocket -> InboundMessage.

The page keeps its visitor id and conversation id (localStorage) and names every message
with an id of its own, so a message resent after a reconnect has the same event id and is
recognised downstream. The conversation id is random and long: knowing it is what lets a
page read the conversation's replies.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from deskstream.events import Channel, InboundMessage, SenderIdentity
from deskstream.ids import event_id

from deskstream_ingest_chat.outcomes import Invalid, Publish, subject_of

EVENT_TYPE = "io.deskstream.inbound.chat.webchat.v1"
PREFIX = "webchat:"
# Page-made ids (crypto.randomUUID or similar): long enough not to be guessed.
_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_MSG_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_id(value: object) -> str | None:
    return value if isinstance(value, str) and _ID.match(value) else None


def conversation_key(conversation_id: str) -> str:
    return PREFIX + conversation_id


def visitor_message(
    *,
    visitor_id: str,
    conversation_id: str,
    client_msg_id: object,
    text: object,
    name: str | None,
    max_text_chars: int,
) -> Publish:
    if not isinstance(client_msg_id, str) or not _MSG_ID.match(client_msg_id):
        raise Invalid("`id` must be 1-64 characters of A-Z a-z 0-9 _ -")
    if not isinstance(text, str) or not text.strip():
        raise Invalid("`text` must be a non-empty string")
    if len(text) > max_text_chars:
        raise Invalid(f"`text` longer than {max_text_chars} characters")
    message = InboundMessage(
        event_id=event_id("webchat", conversation_id, client_msg_id),
        channel=Channel.CHAT,
        conversation_key=conversation_key(conversation_id),
        sender=SenderIdentity(
            channel=Channel.CHAT, kind="chat", id=visitor_id, display_name=name or None
        ),
        subject=subject_of(text, "Web chat"),
        text=text,
        received_at=datetime.now(UTC),
    )
    return Publish(message, dedupe_key=message.event_id)
