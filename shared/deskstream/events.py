"""The event contracts: every record on deskstream's topics is one of these pydantic models.

Each model carries `schema_version`; a breaking change adds a new version instead of
changing the meaning of an old one. JSON Schemas for downstream tools are exported from
these classes (`make schemas`), and `docs/examples/` holds example messages.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SCHEMA_VERSION = 1
Str200 = Annotated[str, Field(max_length=200)]
Id = Annotated[str, Field(min_length=1, max_length=200)]
Body = Annotated[str, Field(max_length=1_000_000)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every record: strict about unknown fields, so a typo is an error, not data."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)
    schema_version: Literal[1] = 1


class Channel(StrEnum):
    EMAIL = "email"
    SOCIAL = "social"
    CHAT = "chat"
    PORTAL = "portal"


class Visibility(StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"


class Presence(StrEnum):
    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


class TicketStatus(StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


class SenderIdentity(BaseModel):
    """Who wrote, as the channel knows them (an address, an X user id, a Slack user)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    channel: Channel
    kind: Annotated[str, Field(max_length=40, description="email | x | slack | chat | portal")]
    id: Id
    display_name: Str200 | None = None
    handle: Str200 | None = None


class Attachment(BaseModel):
    """An attachment's metadata; the bytes stay at the source (see `raw_ref`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    filename: Annotated[str, Field(max_length=500)] | None = None
    content_type: Str200
    size: Annotated[int, Field(ge=0)]
    content_id: Str200 | None = None
    inline: bool = False
    omitted: bool = Field(
        default=False, description="true when the part was over the size limit and not kept"
    )
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class InboundMessage(Contract):
    """One message from any channel, in one canonical shape (`inbound.<channel>`)."""

    event_id: Id = Field(description="deterministic id derived from the source")
    channel: Channel
    conversation_key: Id = Field(description="Kafka key: every message of a thread shares it")
    sender: SenderIdentity
    subject: Annotated[str, Field(max_length=1000)] = ""
    text: Body = Field(default="", description="new text of this message, quotes stripped")
    html: Body | None = None
    full_text: Body | None = Field(default=None, description="the whole text incl. quotes")
    attachments: Annotated[list[Attachment], Field(max_length=200)] = []
    received_at: datetime
    reply_to: Annotated[list[Id], Field(max_length=100)] = Field(
        default=[], description="ids of the messages this one answers (References chain)"
    )
    ticket_hint: Annotated[str, Field(pattern=r"^DS-[A-Z2-7]{8}$")] | None = Field(
        default=None, description="a ticket id the message names (e.g. subject token)"
    )
    visibility: Visibility = Visibility.PRIVATE
    raw_ref: Annotated[str, Field(max_length=1000)] | None = Field(
        default=None, description="where the original bytes can be fetched"
    )
    locale: Annotated[str, Field(max_length=35)] | None = None
    service_hint: Id | None = Field(default=None, description="service chosen on a portal form")


# --- Ticket commands (tickets.commands, key = ticket id) -----------------------------


class _Command(Contract):
    command_id: Id = Field(description="deterministic; a redelivered command changes nothing")
    ticket_id: Annotated[str, Field(pattern=r"^DS-[A-Z2-7]{8}$")]
    issued_at: datetime = Field(default_factory=utcnow)


class CreateTicket(_Command):
    type: Literal["create"] = "create"
    message: InboundMessage
    service_id: Id | None = None
    team: Id | None = None
    classification_rule: Str200 | None = None


class AppendMessage(_Command):
    type: Literal["append"] = "append"
    message: InboundMessage


class AssignTicket(_Command):
    type: Literal["assign"] = "assign"
    agent_id: Id
    team: Id | None = None
    explanation: dict[str, Any] = {}


class QueueTicket(_Command):
    """The ticket waits in its team's queue; sent again when its position changes."""

    type: Literal["queue"] = "queue"
    team: Id
    position: Annotated[int, Field(ge=1)]
    # How long the router expects the wait to be (chat tells the visitor); None: no estimate.
    estimated_wait_s: Annotated[int, Field(ge=0)] | None = None
    explanation: dict[str, Any] = {}


class DeflectTicket(_Command):
    type: Literal["deflect"] = "deflect"
    target: Literal["self-service", "peers"]
    explanation: dict[str, Any] = {}


class DeliveryResult(_Command):
    type: Literal["delivery"] = "delivery"
    reply_id: Id
    delivered: bool
    detail: Annotated[str, Field(max_length=2000)] = ""


TicketCommand = Annotated[
    CreateTicket | AppendMessage | AssignTicket | QueueTicket | DeflectTicket | DeliveryResult,
    Field(discriminator="type"),
]
TICKET_COMMAND = TypeAdapter[Any](TicketCommand)


# --- Ticket events (tickets.events, key = ticket id) ----------------------------------


class _TicketEvent(Contract):
    event_id: Id
    ticket_id: Annotated[str, Field(pattern=r"^DS-[A-Z2-7]{8}$")]
    occurred_at: datetime = Field(default_factory=utcnow)
    caused_by: Id | None = Field(default=None, description="the command that led to this")


class TicketCreated(_TicketEvent):
    type: Literal["created"] = "created"
    channel: Channel
    subject: Annotated[str, Field(max_length=1000)]
    requester: SenderIdentity
    service_id: Id | None = None
    team: Id | None = None
    # The channel's conversation the ticket came from, so a channel service can tell its
    # own conversation (a web chat, a Slack thread) what became of it.
    conversation_key: Id | None = None


class MessageAdded(_TicketEvent):
    type: Literal["message_added"] = "message_added"
    message_event_id: Id
    channel: Channel
    author: SenderIdentity
    internal: bool = False


class TicketAssigned(_TicketEvent):
    """Carries channel and status so load can be derived from this topic alone."""

    type: Literal["assigned"] = "assigned"
    agent_id: Id
    previous_agent_id: Id | None = None
    team: Id | None = None
    channel: Channel
    status: TicketStatus = TicketStatus.OPEN


class TicketQueued(_TicketEvent):
    type: Literal["queued"] = "queued"
    team: Id
    position: Annotated[int, Field(ge=1)]
    channel: Channel
    estimated_wait_s: Annotated[int, Field(ge=0)] | None = None


class StatusChanged(_TicketEvent):
    """Names the assignee and channel, so a consumer can free (or re-take) a capacity slot."""

    type: Literal["status_changed"] = "status_changed"
    old: TicketStatus
    new: TicketStatus
    assignee: Id | None = None
    team: Id | None = None
    channel: Channel


class ReplyDelivered(_TicketEvent):
    """A channel service's report on an agent's reply: delivered, or failed and why."""

    type: Literal["delivery"] = "delivery"
    reply_id: Id
    channel: Channel
    delivered: bool
    detail: Annotated[str, Field(max_length=2000)] = ""


TicketEvent = Annotated[
    TicketCreated | MessageAdded | TicketAssigned | TicketQueued | StatusChanged | ReplyDelivered,
    Field(discriminator="type"),
]
TICKET_EVENT = TypeAdapter[Any](TicketEvent)


# --- Roster and catalogue (compacted topics) ------------------------------------------


class ChannelCapacity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    email: Annotated[int, Field(ge=0, le=1000)] = 10
    social: Annotated[int, Field(ge=0, le=1000)] = 5
    chat: Annotated[int, Field(ge=0, le=50)] = 3
    portal: Annotated[int, Field(ge=0, le=1000)] = 10
    total: Annotated[int, Field(ge=0, le=2000)] = 15


class AgentState(Contract):
    """The roster record of one agent (`agents.state`, compacted, key = agent id)."""

    agent_id: Id
    name: Str200
    teams: Annotated[list[Id], Field(max_length=50)]
    skills: dict[Id, Annotated[int, Field(ge=1, le=5)]] = Field(
        default={}, description="skill -> level 1..5"
    )
    capacity: ChannelCapacity = ChannelCapacity()
    presence: Presence = Presence.OFFLINE
    updated_at: datetime = Field(default_factory=utcnow)


class ServiceEntry(Contract):
    """One service of the catalogue (`catalogue.services`, compacted, key = service id)."""

    service_id: Id
    name: Str200
    team: Id
    required_skills: dict[Id, Annotated[int, Field(ge=1, le=5)]] = {}
    criticality: Literal["low", "medium", "high", "critical"] = "medium"
    response_minutes: Annotated[int, Field(ge=1)] = 240
    resolution_minutes: Annotated[int, Field(ge=1)] = 2880
    self_service_allowed: bool = False
    peers_allowed: bool = False

    @field_validator("peers_allowed")
    @classmethod
    def _critical_never_to_peers(cls, allowed: bool, info: Any) -> bool:
        if allowed and info.data.get("criticality") == "critical":
            raise ValueError("critical services can never be opened to peers")
        return allowed


# --- Outbound replies and dead letters ------------------------------------------------


class OutboundReply(Contract):
    """A reply to deliver on the requester's channel (`outbound.<channel>`)."""

    reply_id: Id
    ticket_id: Annotated[str, Field(pattern=r"^DS-[A-Z2-7]{8}$")]
    channel: Channel
    conversation_key: Id
    recipient: SenderIdentity
    subject: Annotated[str, Field(max_length=1000)] = ""
    text: Body
    html: Body | None = None
    in_reply_to: Id | None = None
    references: Annotated[list[Id], Field(max_length=100)] = []
    visibility: Visibility = Visibility.PRIVATE
    author_agent_id: Id | None = None
    created_at: datetime = Field(default_factory=utcnow)


class DeadLetter(Contract):
    """A record a stage could not process: the original bytes and why (`deadletter.<stage>`)."""

    stage: Annotated[str, Field(max_length=100)]
    reason: Annotated[str, Field(max_length=4000)]
    error_type: Str200
    attempts: Annotated[int, Field(ge=1)]
    original_topic: Str200
    original_partition: Annotated[int, Field(ge=0)] | None = None
    original_offset: Annotated[int, Field(ge=0)] | None = None
    original_key_b64: str | None = None
    original_value_b64: str
    original_headers: list[tuple[str, str]] = Field(
        default=[], description="header name and base64 of its value"
    )
    event_id: Id | None = None
    raw_ref: Annotated[str, Field(max_length=1000)] | None = Field(
        default=None, description="where the original can be fetched (e.g. an IMAP URL)"
    )
    failed_at: datetime = Field(default_factory=utcnow)

    @staticmethod
    def b64(data: bytes | None) -> str | None:
        return None if data is None else base64.b64encode(data).decode("ascii")

    def original_value(self) -> bytes:
        return base64.b64decode(self.original_value_b64)
