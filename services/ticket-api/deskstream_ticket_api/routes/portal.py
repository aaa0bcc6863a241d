"""The self-service portal: submit a request, follow one's own tickets. Portal keys only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel

from deskstream_ticket_api import contact_admin, contacts, portal, roster, tickets
from deskstream_ticket_api.auth import PORTAL, Principal
from deskstream_ticket_api.models import (
    ContactRead,
    MessageRead,
    Page,
    PortalRequestAccepted,
    PortalRequestCreate,
    PortalTicketRead,
)
from deskstream_ticket_api.routes.deps import (
    BODY,
    IdempotencyKey,
    PageParams,
    RuntimeDep,
    TicketIdPath,
    capped,
    documented,
)

router = APIRouter(prefix="/portal", tags=["portal"], responses=documented(403))
PortalUser = Annotated[Principal, Depends(PORTAL)]


class PortalService(BaseModel):
    service_id: str
    name: str
    self_service_allowed: bool


@router.post(
    "/requests",
    response_model=PortalRequestAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **documented(*BODY),
        503: {"description": "the request could not be queued; retry with the same key"},
    },
)
async def submit_request(
    rt: RuntimeDep,
    who: PortalUser,
    body: PortalRequestCreate,
    idempotency_key: IdempotencyKey = None,
) -> PortalRequestAccepted:
    """Queue a request for routing. The requester is the key's user, never the body.

    Send an `Idempotency-Key` to make a retry safe: the same key is the same request, and
    the answer names the ticket it opens.
    """
    return await portal.submit(
        db=rt.store.db,
        publisher=rt.publisher,
        topics=rt.topics,
        user_id=who.subject,
        request_id=portal.request_id_for(idempotency_key),
        body=body,
    )


@router.get("/services", response_model=Page[PortalService])
async def list_services(
    rt: RuntimeDep, _: PortalUser, params: Annotated[PageParams, Query()]
) -> Page[PortalService]:
    """The services a request can be filed under."""
    docs, cursor = await roster.list_by_id(
        db=rt.store.db,
        collection="services",
        query={},
        limit=capped(rt, params.limit),
        cursor=params.cursor,
    )
    items = [
        PortalService(
            service_id=d["_id"], name=d["name"], self_service_allowed=d["self_service_allowed"]
        )
        for d in docs
    ]
    return Page(items=items, next_cursor=cursor)


@router.get("/tickets", response_model=Page[PortalTicketRead])
async def my_tickets(
    rt: RuntimeDep, who: PortalUser, params: Annotated[PageParams, Query()]
) -> Page[PortalTicketRead]:
    docs, cursor = await tickets.list_tickets(
        db=rt.store.db,
        filters=tickets.owned_by(who.subject),
        limit=capped(rt, params.limit),
        cursor=params.cursor,
    )
    return Page(items=[PortalTicketRead.from_doc(d) for d in docs], next_cursor=cursor)


@router.get("/tickets/{ticket_id}", response_model=PortalTicketRead, responses=documented(404))
async def my_ticket(rt: RuntimeDep, who: PortalUser, ticket_id: TicketIdPath) -> PortalTicketRead:
    doc = await tickets.get_own(db=rt.store.db, ticket_id=ticket_id, user_id=who.subject)
    return PortalTicketRead.from_doc(doc)


@router.get(
    "/tickets/{ticket_id}/messages", response_model=Page[MessageRead], responses=documented(404)
)
async def my_ticket_messages(
    rt: RuntimeDep, who: PortalUser, ticket_id: TicketIdPath, params: Annotated[PageParams, Query()]
) -> Page[MessageRead]:
    """The conversation without internal notes."""
    await tickets.get_own(db=rt.store.db, ticket_id=ticket_id, user_id=who.subject)
    docs, cursor = await tickets.list_messages(
        db=rt.store.db,
        ticket_id=ticket_id,
        include_internal=False,
        limit=capped(rt, params.limit),
        cursor=params.cursor,
    )
    return Page(items=[MessageRead.from_doc(d) for d in docs], next_cursor=cursor)


@router.get("/contact", response_model=ContactRead, responses=documented(404))
async def my_contact(rt: RuntimeDep, who: PortalUser) -> ContactRead:
    """The contact the desk keeps for the key's user: their identities on every channel.

    404 until the user's first request has become a ticket.
    """
    key = contacts.identity_key("portal", who.subject)
    doc = await contact_admin.of_identity(db=rt.store.db, key=key)
    count = await contact_admin.ticket_count(db=rt.store.db, contact=doc)
    return ContactRead.from_doc(doc, ticket_count=count)
