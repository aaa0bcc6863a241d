"""The API's shapes, in families per resource (`…Create`, `…Update`, `…Read`).

Request models forbid unknown fields and bound every string, list and map, so a typo is a
422 naming the field and no value can smuggle a MongoDB operator: ids and map keys are
restricted to characters that cannot start an operator or a dotted path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from deskstream.events import (
    Attachment,
    Channel,
    ChannelCapacity,
    Presence,
    SenderIdentity,
    TicketStatus,
)
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# Ids of agents, teams, services, users: letters, digits and . _ : @ + - (an e-mail address
# fits); never `$`, braces or quotes, so `{"$ne": null}` is rejected rather than matched.
ResourceId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$"),
]
# Map keys become MongoDB field names: no dots, no `$`.
SkillName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
]
TicketId = Annotated[str, StringConstraints(pattern=r"^DS-[A-Z2-7]{8}$")]
Level = Annotated[int, Field(ge=1, le=5)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Skills = Annotated[dict[SkillName, Level], Field(max_length=100)]
Teams = Annotated[list[ResourceId], Field(max_length=50)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` for the next page; absent on the last page"
    )


# --- Tickets --------------------------------------------------------------------------


class QueueRead(BaseModel):
    team: str
    position: int
    estimated_wait_s: int | None = None
    at: datetime


class DeflectionRead(BaseModel):
    target: str
    at: datetime


class TicketRead(BaseModel):
    ticket_id: str
    status: TicketStatus
    channel: Channel
    subject: str
    requester: SenderIdentity
    assignee: str | None = None
    team: str | None = None
    service_id: str | None = None
    queue: QueueRead | None = None
    deflection: DeflectionRead | None = None
    message_count: int = 0
    created_at: datetime
    updated_at: datetime
    last_message_at: datetime | None = None
    contact_id: str | None = Field(
        default=None, description="the requester's contact (tickets from before contacts: none)"
    )
    version: int

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TicketRead:
        return cls.model_validate({**doc, "ticket_id": doc["_id"]})


class PortalTicketRead(BaseModel):
    """What a requester sees of their own ticket: no routing internals."""

    ticket_id: str
    status: TicketStatus
    subject: str
    service_id: str | None = None
    created_at: datetime
    updated_at: datetime
    message_count: int = 0

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> PortalTicketRead:
        return cls.model_validate(
            {k: v for k, v in {**doc, "ticket_id": doc["_id"]}.items() if k in cls.model_fields}
        )


class TicketUpdate(Request):
    status: TicketStatus = Field(description="the new status; must be allowed by the lifecycle")


class AssignmentCreate(Request):
    agent_id: ResourceId
    team: ResourceId | None = Field(default=None, description="defaults to the ticket's team")


class DecisionRead(BaseModel):
    command_id: str
    type: str
    issued_at: datetime
    explanation: dict[str, Any]


class ExplanationRead(BaseModel):
    ticket_id: str
    decisions: list[DecisionRead]


# --- Messages -------------------------------------------------------------------------


class MessageCreate(Request):
    text: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    html: Annotated[str, StringConstraints(max_length=500_000)] | None = None
    internal: bool = Field(
        default=False, description="an internal note: never shown to the requester or sent"
    )


class DeliveryRead(BaseModel):
    status: Literal["not_sent", "queued", "delivered", "failed"]
    detail: str = ""
    at: datetime | None = None


class MessageRead(BaseModel):
    message_id: str
    ticket_id: str
    kind: Literal["inbound", "reply", "note"]
    internal: bool
    channel: Channel
    author: SenderIdentity
    subject: str = ""
    text: str
    html: str | None = None
    attachments: list[Attachment] = []
    created_at: datetime
    delivery: DeliveryRead | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> MessageRead:
        return cls.model_validate({**doc, "message_id": doc["_id"]})


# --- Agents and teams -----------------------------------------------------------------


class AgentCreate(Request):
    agent_id: ResourceId
    name: Name
    teams: Teams = []
    skills: Skills = Field(default={}, description="skill -> level 1..5")
    capacity: ChannelCapacity = ChannelCapacity()
    presence: Presence = Presence.OFFLINE


class AgentUpdate(Request):
    name: Name | None = None
    teams: Teams | None = None
    skills: Skills | None = None
    capacity: ChannelCapacity | None = None


class PresenceUpdate(Request):
    presence: Presence


class AgentRead(BaseModel):
    agent_id: str
    name: str
    teams: list[str]
    skills: dict[str, int]
    capacity: ChannelCapacity
    presence: Presence
    updated_at: datetime
    version: int

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> AgentRead:
        return cls.model_validate({**doc, "agent_id": doc["_id"]})


class TeamCreate(Request):
    team_id: ResourceId
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] = ""


class TeamUpdate(Request):
    name: Name | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None


class TeamRead(BaseModel):
    team_id: str
    name: str
    description: str
    updated_at: datetime

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TeamRead:
        return cls.model_validate({**doc, "team_id": doc["_id"]})


# --- Service catalogue ----------------------------------------------------------------

Criticality = Literal["low", "medium", "high", "critical"]
CRITICAL_TO_PEERS = "critical services can never be opened to peers"


class ServiceCreate(Request):
    service_id: ResourceId
    name: Name
    team: ResourceId
    required_skills: Skills = {}
    criticality: Criticality = "medium"
    response_minutes: Annotated[int, Field(ge=1, le=525_600)] = 240
    resolution_minutes: Annotated[int, Field(ge=1, le=525_600)] = 2880
    self_service_allowed: bool = False
    peers_allowed: bool = False

    @model_validator(mode="after")
    def _critical_never_to_peers(self) -> ServiceCreate:
        # The contract (ServiceEntry) refuses it too; saying so here names the field in a 422.
        if self.peers_allowed and self.criticality == "critical":
            raise ValueError(CRITICAL_TO_PEERS)
        return self


class ServiceUpdate(Request):
    name: Name | None = None
    team: ResourceId | None = None
    required_skills: Skills | None = None
    criticality: Criticality | None = None
    response_minutes: Annotated[int, Field(ge=1, le=525_600)] | None = None
    resolution_minutes: Annotated[int, Field(ge=1, le=525_600)] | None = None
    self_service_allowed: bool | None = None
    peers_allowed: bool | None = None


class ServiceRead(BaseModel):
    service_id: str
    name: str
    team: str
    required_skills: dict[str, int]
    criticality: Criticality
    response_minutes: int
    resolution_minutes: int
    self_service_allowed: bool
    peers_allowed: bool
    updated_at: datetime
    version: int

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ServiceRead:
        return cls.model_validate({**doc, "service_id": doc["_id"]})


# --- Portal ---------------------------------------------------------------------------


class PortalRequestCreate(Request):
    service_id: ResourceId = Field(description="a service of the catalogue")
    subject: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=200)]
    description: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20_000)
    ]


class PortalRequestAccepted(BaseModel):
    request_id: str
    ticket_id: str = Field(description="the id the ticket will have once it is opened")
    event_id: str
    status: Literal["accepted"] = "accepted"


# --- Contacts -------------------------------------------------------------------------

ContactId = Annotated[str, StringConstraints(pattern=r"^CT-[A-Z2-7]{16}$")]
# `kind:id` as a client writes it (`email:maria@example.com`, `x:2244994945`): no `$`,
# braces, brackets, quotes or whitespace, so it can only ever be compared as a string.
IdentityKey = Annotated[
    str,
    StringConstraints(
        min_length=3,
        max_length=360,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}:[^\s${}\[\]\"'\\]{1,320}$",
    ),
]


class LinkRead(BaseModel):
    rule: Literal["first-seen", "verified-address", "merge", "unmerge"]
    detail: str


class ContactIdentityRead(BaseModel):
    key: str = Field(description="kind:id, the identity's name in filters and unmerges")
    channel: Channel
    kind: str
    id: str
    display_name: str | None = None
    handle: str | None = None
    address: str | None = None
    verified: bool = Field(description="the channel vouches for the address (portal users)")
    added_at: datetime
    linked: LinkRead = Field(description="why this identity belongs to the contact")


class ContactRead(BaseModel):
    contact_id: str
    display_name: str | None = None
    identities: list[ContactIdentityRead]
    addresses: list[str]
    verified_addresses: list[str]
    merged_into: str | None = Field(
        default=None, description="set on a merged contact: its tickets are under this one"
    )
    ticket_count: int | None = Field(default=None, description="in single reads only")
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def from_doc(cls, doc: dict[str, Any], ticket_count: int | None = None) -> ContactRead:
        return cls.model_validate({**doc, "contact_id": doc["_id"], "ticket_count": ticket_count})


class ReasonRead(BaseModel):
    rule: Literal["same-address", "same-display-name", "same-handle"]
    value: str
    detail: str


class SuggestionRead(BaseModel):
    contact: ContactRead
    reasons: list[ReasonRead]


class MergeCreate(Request):
    contact_id: ContactId = Field(
        description="the contact merged into this one; its id keeps pointing here"
    )


class UnmergeCreate(Request):
    identity: IdentityKey = Field(description="kind:id of the identity to split off")


class AuditSnapshot(BaseModel):
    contact_id: str
    merged_into: str | None = None
    identities: list[str]


class ContactAuditRead(BaseModel):
    audit_id: str
    action: Literal["merge", "unmerge"]
    actor: str = Field(description="role:subject of the key that did it")
    actor_key_id: str
    at: datetime
    contacts: list[str]
    identity: str | None = Field(default=None, description="the identity split off (unmerge)")
    before: list[AuditSnapshot]
    after: list[AuditSnapshot]

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ContactAuditRead:
        return cls.model_validate({**doc, "audit_id": doc["_id"]})


class MergeRead(BaseModel):
    contact: ContactRead
    audit: ContactAuditRead


class UnmergeRead(BaseModel):
    contact: ContactRead
    split: ContactRead = Field(description="the contact the identity now belongs to")
    audit: ContactAuditRead


# --- API keys -------------------------------------------------------------------------

Role = Literal["admin", "agent", "portal"]


class ApiKeyCreate(Request):
    role: Role
    subject: ResourceId = Field(description="the agent id (agent), the portal user id (portal)")
    name: Annotated[str, StringConstraints(max_length=200)] = ""


class ApiKeyRead(BaseModel):
    key_id: str
    role: Role
    subject: str
    name: str
    created_at: datetime
    created_by: str

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ApiKeyRead:
        return cls.model_validate({**doc, "key_id": doc["_id"]})


class ApiKeyIssued(ApiKeyRead):
    key: str = Field(description="shown once; only its SHA-256 is stored")


# --- Operations ------------------------------------------------------------------------


class PartitionLagRead(BaseModel):
    topic: str = Field(description="the registry name, without the installation's prefix")
    partition: int
    committed: int = Field(description="the group's committed offset")
    end: int = Field(description="the partition's last stable offset")
    lag: int = Field(description="records the group has not committed yet")


class GroupLagRead(BaseModel):
    group: str = Field(description="the consumer group, without the installation's prefix")
    lag: int | None = Field(description="sum over its partitions; null when Kafka did not answer")
    partitions: list[PartitionLagRead] = []
    error: str | None = None


class OldestTicketRead(BaseModel):
    ticket_id: TicketId
    since: datetime
    age_s: float


class TeamQueueRead(BaseModel):
    team: str = Field(description="`none`: tickets not routed to a team yet")
    waiting: int = Field(description="new or open tickets no agent has")
    queued: int = Field(description="of those, the ones in the router's queue")
    oldest_unassigned: OldestTicketRead


class SlaRiskRead(BaseModel):
    team: str
    service: str
    target: Literal["response", "resolution"]
    at_risk: int = Field(description="past the warning share of the target, not past it")
    breached: int


class OpsStatusRead(BaseModel):
    at: datetime
    consumer_lag: list[GroupLagRead]
    teams: list[TeamQueueRead]
    sla: list[SlaRiskRead]
