"""Tickets for agents and admins: list, read, status, messages, assignment, explanation."""

from __future__ import annotations

from typing import Annotated, Any

from deskstream.events import Channel, TicketStatus
from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from deskstream_ticket_api import contact_admin, tickets
from deskstream_ticket_api.auth import STAFF, Principal
from deskstream_ticket_api.models import (
    AssignmentCreate,
    ContactId,
    DecisionRead,
    ExplanationRead,
    MessageCreate,
    MessageRead,
    Page,
    ResourceId,
    TicketRead,
    TicketUpdate,
)
from deskstream_ticket_api.routes.deps import (
    BODY,
    Cursor,
    ErrorRead,
    IdempotencyKey,
    PageParams,
    RuntimeDep,
    TicketIdPath,
    capped,
    documented,
)

router = APIRouter(tags=["tickets"], responses=documented(403))
Staff = Annotated[Principal, Depends(STAFF)]

# Requester ids come from many channels (addresses, X ids, Slack ids): wider than
# ResourceId, but still no `$`, braces, brackets, quotes or whitespace.
RequesterId = Annotated[
    str, StringConstraints(min_length=1, max_length=320, pattern=r"^[^\s${}\[\]\"'\\]+$")
]


class TicketFilters(BaseModel):
    """Query parameters of the ticket list; an unknown parameter (`status[$ne]`) is a 422."""

    model_config = ConfigDict(extra="forbid")

    status: list[TicketStatus] = Field(default=[], description="repeat for several")
    team: ResourceId | None = None
    assignee: ResourceId | None = None
    channel: Channel | None = None
    service: ResourceId | None = None
    requester: RequesterId | None = Field(default=None, description="the requester's id")
    contact: ContactId | None = Field(
        default=None, description="a contact: the tickets of all its identities, on any channel"
    )
    limit: int = Field(default=50, ge=1, le=100_000, description="capped at the page maximum")
    cursor: Cursor | None = None

    def query(self) -> dict[str, Any]:
        query: dict[str, Any] = {
            "team": self.team,
            "assignee": self.assignee,
            "channel": self.channel.value if self.channel else None,
            "service_id": self.service,
            "requester.id": self.requester,
        }
        if self.status:
            query["status"] = {"$in": [s.value for s in self.status]}
        return query


@router.get("/tickets", response_model=Page[TicketRead])
async def list_tickets(
    rt: RuntimeDep, _: Staff, filters: Annotated[TicketFilters, Query()]
) -> Page[TicketRead]:
    query = filters.query()
    if filters.contact is not None:
        query.update(await contact_admin.ticket_filter(db=rt.store.db, contact_id=filters.contact))
    docs, cursor = await tickets.list_tickets(
        db=rt.store.db,
        filters=query,
        limit=capped(rt, filters.limit),
        cursor=filters.cursor,
    )
    return Page(items=[TicketRead.from_doc(d) for d in docs], next_cursor=cursor)


@router.get("/tickets/{ticket_id}", response_model=TicketRead, responses=documented(404))
async def read_ticket(rt: RuntimeDep, _: Staff, ticket_id: TicketIdPath) -> TicketRead:
    return TicketRead.from_doc(await tickets.get(db=rt.store.db, ticket_id=ticket_id))


@router.patch(
    "/tickets/{ticket_id}",
    response_model=TicketRead,
    responses={
        **documented(*BODY, 404),
        409: {
            "model": ErrorRead,
            "description": "the lifecycle does not allow this status change",
        },
    },
)
async def update_ticket(
    rt: RuntimeDep, who: Staff, ticket_id: TicketIdPath, body: TicketUpdate
) -> TicketRead:
    doc = await tickets.change_status(
        store=rt.store, topics=rt.topics, ticket_id=ticket_id, status=body.status, actor=who
    )
    rt.waker.wake()
    return TicketRead.from_doc(doc)


@router.get(
    "/tickets/{ticket_id}/messages", response_model=Page[MessageRead], responses=documented(404)
)
async def list_messages(
    rt: RuntimeDep, _: Staff, ticket_id: TicketIdPath, params: Annotated[PageParams, Query()]
) -> Page[MessageRead]:
    await tickets.get(db=rt.store.db, ticket_id=ticket_id)
    docs, cursor = await tickets.list_messages(
        db=rt.store.db,
        ticket_id=ticket_id,
        include_internal=True,
        limit=capped(rt, params.limit),
        cursor=params.cursor,
    )
    return Page(items=[MessageRead.from_doc(d) for d in docs], next_cursor=cursor)


@router.post(
    "/tickets/{ticket_id}/messages",
    response_model=MessageRead,
    status_code=status.HTTP_201_CREATED,
    responses=documented(*BODY, 404, 409),
)
async def add_message(
    rt: RuntimeDep,
    who: Staff,
    ticket_id: TicketIdPath,
    body: MessageCreate,
    idempotency_key: IdempotencyKey = None,
) -> MessageRead:
    """An agent's reply (to the requester) or an internal note (`internal: true`)."""
    doc = await tickets.add_message(
        store=rt.store,
        topics=rt.topics,
        ticket_id=ticket_id,
        body=body,
        actor=who,
        idempotency_key=idempotency_key,
        publish_replies=rt.settings.publish_replies,
    )
    rt.waker.wake()
    return MessageRead.from_doc(doc)


@router.post(
    "/tickets/{ticket_id}/assignment",
    response_model=TicketRead,
    responses=documented(*BODY, 404, 409),
)
async def assign(
    rt: RuntimeDep, who: Staff, ticket_id: TicketIdPath, body: AssignmentCreate
) -> TicketRead:
    """(Re)assign the ticket; TicketAssigned names the previous agent."""
    doc = await tickets.assign(
        store=rt.store,
        topics=rt.topics,
        ticket_id=ticket_id,
        agent_id=body.agent_id,
        team=body.team,
        actor=who,
    )
    rt.waker.wake()
    return TicketRead.from_doc(doc)


@router.get(
    "/tickets/{ticket_id}/explanation", response_model=ExplanationRead, responses=documented(404)
)
async def explanation(rt: RuntimeDep, _: Staff, ticket_id: TicketIdPath) -> ExplanationRead:
    """The router's decisions on this ticket (assign, queue, deflect), oldest first."""
    decisions = await tickets.explanation(db=rt.store.db, ticket_id=ticket_id)
    return ExplanationRead(
        ticket_id=ticket_id, decisions=[DecisionRead.model_validate(d) for d in decisions]
    )
