"""The email adapter: one fetched mail -> what to do with it (publish, ignore, dead-letter).

Pure: the IMAP facts come in as a `MailSource`, so the whole corpus runs through this in a
unit test exactly as the worker runs it. Order matters: parse, then recognise automatic
mail (before threading, so it can never reach a ticket), then thread and build the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from deskstream.events import Channel, InboundMessage, SenderIdentity
from deskstream.ids import event_id

from deskstream_ingest_email.classify import ClassifyContext, IgnoreReason, classify
from deskstream_ingest_email.conversation import thread
from deskstream_ingest_email.parse import ParsedMail, UnparseableMail, parse
from deskstream_ingest_email.settings import Mailbox

EVENT_TYPE = "io.deskstream.inbound.email.v1"
# Kafka's default max.message.bytes is 1 MiB; stay well below it with the headers.
MAX_RECORD_BYTES = 900_000
MAX_FIELD_CHARS = 250_000
TRUNCATED = "\n[... truncated by ingest-email; the original is at raw_ref]"


@dataclass(frozen=True)
class MailSource:
    """Where a mail came from: the facts the IMAP server gives besides its bytes."""

    mailbox: Mailbox
    uidvalidity: int
    uid: int
    internaldate: datetime | None
    fetched_at: datetime

    @property
    def raw_ref(self) -> str:
        return self.mailbox.url(self.uidvalidity, self.uid)

    @property
    def fallback_event_id(self) -> str:
        """The id of a mail without Message-ID: its place in the mailbox."""
        return event_id("email", self.mailbox.address, f"{self.uidvalidity}:{self.uid}")


@dataclass(frozen=True)
class Publish:
    message: InboundMessage


@dataclass(frozen=True)
class Ignore:
    reason: IgnoreReason
    event_id: str
    message_id: str | None
    sender: str


@dataclass(frozen=True)
class DeadLetter:
    event_id: str
    error: str
    error_type: str


Outcome = Publish | Ignore | DeadLetter


@dataclass(frozen=True)
class NormaliseConfig:
    attachment_limit: int
    classify: ClassifyContext


def normalise(raw: bytes, source: MailSource, config: NormaliseConfig) -> Outcome:
    """Decide what one mail becomes; never raises (a mail that breaks us is dead-lettered)."""
    try:
        parsed = parse(raw, attachment_limit=config.attachment_limit)
        eid = (
            event_id("email", source.mailbox.address, parsed.message_id)
            if parsed.message_id
            else source.fallback_event_id
        )
        reason = classify(parsed.message, parsed.sender_address, config.classify)
        if reason is not None:
            return Ignore(reason, eid, parsed.message_id, parsed.sender_address)
        return Publish(_inbound(parsed, eid, source))
    except UnparseableMail as exc:
        return DeadLetter(source.fallback_event_id, str(exc), type(exc).__name__)
    except Exception as exc:  # a mail we cannot handle must not stop the mailbox
        return DeadLetter(source.fallback_event_id, f"{exc!r}"[:4000], type(exc).__name__)


def _inbound(parsed: ParsedMail, eid: str, source: MailSource) -> InboundMessage:
    threading = thread(
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        subject=parsed.subject,
        event_id=eid,
    )
    message = InboundMessage(
        event_id=eid,
        channel=Channel.EMAIL,
        conversation_key=threading.conversation_key,
        sender=SenderIdentity(
            channel=Channel.EMAIL,
            kind="email",
            id=parsed.sender_address[:200],
            display_name=parsed.sender_name[:200] if parsed.sender_name else None,
        ),
        subject=parsed.subject[:1000],
        text=_cap(parsed.text),
        # Cut HTML is broken HTML: past the cap it is left out (the text has the content).
        html=parsed.html if parsed.html and len(parsed.html) <= MAX_FIELD_CHARS else None,
        full_text=_cap(parsed.full_text),
        attachments=parsed.attachments[:200],
        received_at=parsed.date or source.internaldate or source.fetched_at,
        reply_to=threading.reply_to,
        ticket_hint=threading.ticket_hint,
        raw_ref=source.raw_ref,
        locale=parsed.locale,
    )
    return fit(message)


def _cap(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def fit(message: InboundMessage, limit: int = MAX_RECORD_BYTES) -> InboundMessage:
    """The message made small enough for one Kafka record: HTML goes first, then text shrinks.

    The agent still sees the start of the text and where to fetch the rest (`raw_ref`).
    """
    while len(message.model_dump_json().encode()) > limit:
        if message.html is not None:
            message = message.model_copy(update={"html": None})
        elif message.full_text and len(message.full_text) > 1000:
            message = message.model_copy(
                update={"full_text": _cap(message.full_text, len(message.full_text) // 2)}
            )
        elif len(message.text) > 1000:
            message = message.model_copy(
                update={"text": _cap(message.text, len(message.text) // 2)}
            )
        else:
            break  # headers and attachment metadata alone cannot be this big
    return message
