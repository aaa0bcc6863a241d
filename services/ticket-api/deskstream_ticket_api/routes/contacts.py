"""Contacts: staff read and search them, admins merge and unmerge, a portal user reads their own."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from deskstream_ticket_api import contact_admin, contacts
from deskstream_ticket_api.auth import ADMIN, ANY, STAFF, Principal, Role
from deskstream_ticket_api.errors import NotFound
from deskstream_ticket_api.models import (
    ContactAuditRead,
    ContactRead,
    IdentityKey,
    MergeCreate,
    MergeRead,
    Page,
    SuggestionRead,
    UnmergeCreate,
    UnmergeRead,
)
from deskstream_ticket_api.routes.deps import BODY, Cursor, RuntimeDep, capped, documented

router = APIRouter(tags=["contacts"])
Admin = Annotated[Principal, Depends(ADMIN)]
Staff = Annotated[Principal, Depends(STAFF)]
Anyone = Annotated[Principal, Depends(ANY)]
ContactIdPath = Annotated[
    str, Path(pattern=contacts.CONTACT_ID_PATTERN, description="CT- and 16 base32 characters")
]


class ContactFilters(BaseModel):
    """Query parameters of the contact list; an unknown one (`identity[$ne]`) is a 422."""

    model_config = ConfigDict(extra="forbid")

    identity: IdentityKey | None = Field(default=None, description="kind:id, e.g. x:2244994945")
    address: Annotated[str, Field(min_length=3, max_length=254)] | None = Field(
        default=None, description="an email address any identity of the contact carries"
    )
    limit: int = Field(default=50, ge=1, le=100_000, description="capped at the page maximum")
    cursor: Cursor | None = None


@router.get("/contacts", response_model=Page[ContactRead], responses=documented(403))
async def list_contacts(
    rt: RuntimeDep, _: Staff, filters: Annotated[ContactFilters, Query()]
) -> Page[ContactRead]:
    """Live contacts, newest first (merged ones are reached through their survivor)."""
    docs, cursor = await contact_admin.list_contacts(
        db=rt.store.db,
        identity=filters.identity,
        address=filters.address,
        limit=capped(rt, filters.limit),
        cursor=filters.cursor,
    )
    return Page(items=[ContactRead.from_doc(d) for d in docs], next_cursor=cursor)


@router.get("/contacts/{contact_id}", response_model=ContactRead, responses=documented(404))
async def read_contact(rt: RuntimeDep, who: Anyone, contact_id: ContactIdPath) -> ContactRead:
    """A contact with its identities and ticket count; a merged one answers with its survivor.

    A portal user reads only the contact holding their own portal identity; any other
    answers exactly like a missing one, so ids cannot be probed.
    """
    doc = await contact_admin.current(db=rt.store.db, contact_id=contact_id)
    if who.role is Role.PORTAL and not contact_admin.holds(
        doc, contacts.identity_key("portal", who.subject)
    ):
        raise NotFound("contact", contact_id)
    count = await contact_admin.ticket_count(db=rt.store.db, contact=doc)
    return ContactRead.from_doc(doc, ticket_count=count)


@router.get(
    "/contacts/{contact_id}/suggestions",
    response_model=list[SuggestionRead],
    responses=documented(403, 404),
)
async def suggestions(rt: RuntimeDep, _: Staff, contact_id: ContactIdPath) -> list[SuggestionRead]:
    """Contacts that may be the same person (same unverified address, name or handle), and why.

    Nothing here is linked automatically: an admin decides with a merge.
    """
    found = await contact_admin.suggestions(db=rt.store.db, contact_id=contact_id)
    return [
        SuggestionRead(contact=ContactRead.from_doc(s["contact"]), reasons=s["reasons"])
        for s in found
    ]


@router.post(
    "/contacts/{contact_id}/merge",
    response_model=MergeRead,
    responses=documented(*BODY, 403, 404, 409),
)
async def merge(
    rt: RuntimeDep, who: Admin, contact_id: ContactIdPath, body: MergeCreate
) -> MergeRead:
    """Merge `body.contact_id` into this contact: its identities and tickets move here."""
    survivor, audit = await contact_admin.merge(
        store=rt.store, survivor_id=contact_id, other_id=body.contact_id, actor=who
    )
    count = await contact_admin.ticket_count(db=rt.store.db, contact=survivor)
    return MergeRead(
        contact=ContactRead.from_doc(survivor, ticket_count=count),
        audit=ContactAuditRead.from_doc(audit),
    )


@router.post(
    "/contacts/{contact_id}/unmerge",
    response_model=UnmergeRead,
    responses=documented(*BODY, 403, 404, 409),
)
async def unmerge(
    rt: RuntimeDep, who: Admin, contact_id: ContactIdPath, body: UnmergeCreate
) -> UnmergeRead:
    """Split one identity (and the tickets it opened) off into a contact of its own."""
    contact, split, audit = await contact_admin.unmerge(
        store=rt.store, contact_id=contact_id, identity=body.identity, actor=who
    )
    db = rt.store.db
    return UnmergeRead(
        contact=ContactRead.from_doc(
            contact, ticket_count=await contact_admin.ticket_count(db=db, contact=contact)
        ),
        split=ContactRead.from_doc(
            split, ticket_count=await contact_admin.ticket_count(db=db, contact=split)
        ),
        audit=ContactAuditRead.from_doc(audit),
    )


@router.get(
    "/contacts/{contact_id}/audit",
    response_model=list[ContactAuditRead],
    responses=documented(403, 404),
)
async def audit(rt: RuntimeDep, _: Staff, contact_id: ContactIdPath) -> list[ContactAuditRead]:
    """The merges and unmerges this contact took part in: who, when, before and after."""
    docs = await contact_admin.audit(db=rt.store.db, contact_id=contact_id)
    return [ContactAuditRead.from_doc(d) for d in docs]
