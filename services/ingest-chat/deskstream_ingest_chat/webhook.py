"""The generic webhook adapter: a signed JSON message from another chat tool -> InboundMessage.

The payload (documented in the README) names the tool (`source`), the tool's conversation
and message ids, and who wrote; the event id comes from (source, message_id), so a tool
that sends the same message twice is recognised.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from deskstream.events import Channel, InboundMessage, SenderIdentity
from deskstream.ids import event_id
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deskstream_ingest_chat.outcomes import Invalid, Publish, subject_of

EVENT_TYPE = "io.deskstream.inbound.chat.webhook.v1"
Ident = Annotated[str, Field(min_length=1, max_length=200)]


class WebhookSender(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Ident
    name: Annotated[str, Field(max_length=200)] | None = None
    handle: Annotated[str, Field(max_length=200)] | None = None


class WebhookMessage(BaseModel):
    """The body of `POST /webhooks/chat`."""

    model_config = ConfigDict(extra="forbid")
    source: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]
    message_id: Ident
    conversation_id: Ident
    sender: WebhookSender
    text: Annotated[str, Field(min_length=1)]
    subject: Annotated[str, Field(max_length=1000)] | None = None
    sent_at: datetime | None = None


def conversation_key(source: str, conversation_id: str) -> str:
    return f"webhook:{source}:{conversation_id}"


def parse_conversation_key(key: str) -> tuple[str, str] | None:
    """(source, conversation_id) of a webhook conversation key, or None."""
    kind, _, rest = key.partition(":")
    source, sep, conversation = rest.partition(":")
    return (source, conversation) if kind == "webhook" and sep and conversation else None


def interpret(body: dict[str, object], max_text_chars: int) -> Publish:
    try:
        payload = WebhookMessage.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise Invalid(problems) from None
    if len(payload.text) > max_text_chars:
        raise Invalid(f"text: longer than {max_text_chars} characters")
    text = payload.text
    message = InboundMessage(
        event_id=event_id("webhook", payload.source, payload.message_id),
        channel=Channel.CHAT,
        conversation_key=conversation_key(payload.source, payload.conversation_id),
        sender=SenderIdentity(
            channel=Channel.CHAT,
            kind=payload.source,
            id=payload.sender.id,
            display_name=payload.sender.name,
            handle=payload.sender.handle,
        ),
        subject=payload.subject or subject_of(text, f"Message from {payload.source}"),
        text=text,
        received_at=(payload.sent_at or datetime.now(UTC)),
        raw_ref=f"webhook://{payload.source}/{payload.conversation_id}/{payload.message_id}",
    )
    return Publish(message, dedupe_key=message.event_id)
