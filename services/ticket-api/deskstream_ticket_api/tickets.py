"""Ticket service functions for the REST side: list, read, status, messages, assignment.

Writes go the same way as command application: the change and its outbox documents in one
transaction, the ticket replaced only if its version is the one read (a concurrent change
makes the transaction start over with fresh reads).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from deskstream import ids
from deskstream.events import Channel, OutboundReply, SenderIdentity, TicketStatus, Visibility
from deskstream.topics import Topics
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from deskstream_ticket_api import outbox, pagination, ticketing, transitions
from deskstream_ticket_api.auth import Principal
from deskstream_ticket_api.db import Doc, Retry, Session, Store, atomically
from deskstream_ticket_api.errors import Conflict, Invalid, NotFound
from deskstream_ticket_api.models import MessageCreate

_NEWEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]
_OLDEST_FIRST = [("created_at", ASCENDING), ("_id", ASCENDING)]


def api_event_prefix() -> str:
    """Event ids of REST changes: there is no command to derive them from, so a fresh uuid."""
    return f"api:{uuid.uuid4().hex}"


def actor_ref(actor: Principal) -> str:
    return f"{actor.role.value}:{actor.subject}"


async def page(
    *,
    collection: Any,
    query: dict[str, Any],
    limit: int,
    cursor: str | None,
    newest_first: bool,
) -> tuple[list[Doc], str | None]:
    """One keyset page of `query` in (created_at, _id) order, and the cursor of the next."""
    if cursor is not None:
        at, ident = pagination.decode(cursor, with_time=True)
        assert at is not None
        after = (
            pagination.after_newest_first(at, ident)
            if newest_first
            else pagination.after_oldest_first(at, ident)
        )
        query = {"$and": [query, after]} if query else after
    order = _NEWEST_FIRST if newest_first else _OLDEST_FIRST
    docs = await collection.find(query).sort(order).limit(limit + 1).to_list()
    if len(docs) <= limit:
        return docs, None
    docs = docs[:limit]
    last = docs[-1]
    return docs, pagination.encode(at=last["created_at"], ident=last["_id"])


async def list_tickets(
    *, db: AsyncDatabase[Doc], filters: dict[str, Any], limit: int, cursor: str | None
) -> tuple[list[Doc], str | None]:
    """`filters` maps stored fields to plain values (already typed and validated)."""
    query = {k: v for k, v in filters.items() if v is not None}
    return await page(
        collection=db["tickets"], query=query, limit=limit, cursor=cursor, newest_first=True
    )


async def get(*, db: AsyncDatabase[Doc], ticket_id: str) -> Doc:
    doc = await db["tickets"].find_one({"_id": ticket_id})
    if doc is None:
        raise NotFound("ticket", ticket_id)
    return doc


def owned_by(user_id: str) -> dict[str, str]:
    """The tickets a portal user opened: requester is their portal identity."""
    return {"requester.kind": "portal", "requester.id": user_id}


async def get_own(*, db: AsyncDatabase[Doc], ticket_id: str, user_id: str) -> Doc:
    # Someone else's ticket answers exactly like a missing one: no probing for ids.
    doc = await db["tickets"].find_one({"_id": ticket_id, **owned_by(user_id)})
    if doc is None:
        raise NotFound("ticket", ticket_id)
    return doc


async def _change(
    *,
    store: Store,
    ticket_id: str,
    apply: Callable[[Session, Doc], Awaitable[list[outbox.Entry]]],
) -> Doc:
    """Read the ticket, let `apply` change it and name its records, write both atomically."""

    async def work(session: Session) -> Doc:
        ticket = await store["tickets"].find_one({"_id": ticket_id}, session=session)
        if ticket is None:
            raise NotFound("ticket", ticket_id)
        version = int(ticket["version"])
        entries = await apply(session, ticket)
        ticket["version"] = version + 1
        result = await store["tickets"].replace_one(
            {"_id": ticket_id, "version": version}, ticket, session=session
        )
        if result.matched_count != 1:
            raise Retry("ticket changed concurrently")
        await outbox.write(store=store, session=session, entries=entries)
        return ticket

    return await atomically(client=store.client, work=work)


async def change_status(
    *, store: Store, topics: Topics, ticket_id: str, status: TicketStatus, actor: Principal
) -> Doc:
    async def apply(_: Session, ticket: Doc) -> list[outbox.Entry]:
        try:
            event = ticketing.change_status(
                ticket,
                status,
                event_id=f"{api_event_prefix()}:status",
                at=datetime.now(UTC),
                caused_by=actor_ref(actor),
            )
        except transitions.TransitionError as exc:
            raise Conflict(str(exc)) from exc
        return ticketing.entries(topics, [event])

    return await _change(store=store, ticket_id=ticket_id, apply=apply)


async def assign(
    *,
    store: Store,
    topics: Topics,
    ticket_id: str,
    agent_id: str,
    team: str | None,
    actor: Principal,
) -> Doc:
    async def apply(session: Session, ticket: Doc) -> list[outbox.Entry]:
        if await store["agents"].find_one({"_id": agent_id}, {"_id": 1}, session=session) is None:
            raise Invalid(("body", "agent_id"), f"unknown agent {agent_id!r}")
        if team is not None and (
            await store["teams"].find_one({"_id": team}, {"_id": 1}, session=session) is None
        ):
            raise Invalid(("body", "team"), f"unknown team {team!r}")
        if ticket.get("assignee") == agent_id:
            raise Conflict(f"ticket is already assigned to {agent_id}")
        events = ticketing.assign(
            ticket,
            agent_id=agent_id,
            team=team,
            event_prefix=api_event_prefix(),
            at=datetime.now(UTC),
            caused_by=actor_ref(actor),
        )
        return ticketing.entries(topics, events)

    return await _change(store=store, ticket_id=ticket_id, apply=apply)


def message_id_for(ticket_id: str, idempotency_key: str | None) -> str:
    """A client retry with the same Idempotency-Key names the same message, stored once."""
    if idempotency_key:
        return ids.event_id("api-message", ticket_id, idempotency_key)
    return f"api:{uuid.uuid4().hex}"


class _Replayed(Exception):
    """The message of this Idempotency-Key is stored already: answer with it, change nothing."""

    def __init__(self, message: Doc) -> None:
        super().__init__(message["_id"])
        self.message = message


async def add_message(
    *,
    store: Store,
    topics: Topics,
    ticket_id: str,
    body: MessageCreate,
    actor: Principal,
    idempotency_key: str | None,
    publish_replies: bool,
) -> Doc:
    """Store an agent's reply or internal note and announce it (MessageAdded).

    A reply on a channel with an outbound topic also queues an OutboundReply for the
    channel's service when `publish_replies` is on; an internal note never does.
    """
    message_id = message_id_for(ticket_id, idempotency_key)
    stored: dict[str, Doc] = {}

    async def apply(session: Session, ticket: Doc) -> list[outbox.Entry]:
        existing = await store["messages"].find_one({"_id": message_id}, session=session)
        if existing is not None:
            if existing["ticket_id"] != ticket_id:
                raise Conflict("this Idempotency-Key was used for another ticket")
            raise _Replayed(existing)
        now = datetime.now(UTC)
        channel = Channel(ticket["channel"])
        deliver = publish_replies and not body.internal and channel is not Channel.PORTAL
        doc: Doc = {
            "_id": message_id,
            "ticket_id": ticket_id,
            "kind": "note" if body.internal else "reply",
            "internal": body.internal,
            "channel": channel.value,
            "author": SenderIdentity(
                channel=channel, kind=actor.role.value, id=actor.subject
            ).model_dump(mode="json"),
            "subject": ticket["subject"],
            "text": body.text,
            "html": body.html,
            "attachments": [],
            "created_at": now,
            "delivery": {"status": "queued", "detail": "", "at": now} if deliver else None,
        }
        await store["messages"].insert_one(doc, session=session)
        stored["message"] = doc
        event = ticketing.message_added(
            ticket, doc, event_id=f"{message_id}:added", at=now, caused_by=actor_ref(actor)
        )
        entries = ticketing.entries(topics, [event])
        if deliver:
            # A reply is as public as the message it answers (a mention on X is answered in
            # public, a DM privately); without one it stays private.
            answered = ticket.get("last_inbound_message_id")
            last = answered and await store["messages"].find_one(
                {"_id": answered}, {"visibility": 1}, session=session
            )
            visibility = Visibility((last or {}).get("visibility") or Visibility.PRIVATE.value)
            entries.append(_outbound(topics, ticket, doc, actor, visibility))
        return entries

    try:
        await _change(store=store, ticket_id=ticket_id, apply=apply)
    except _Replayed as replayed:
        return replayed.message
    return stored["message"]


def _outbound(
    topics: Topics, ticket: Doc, message: Doc, actor: Principal, visibility: Visibility
) -> outbox.Entry:
    channel = Channel(ticket["channel"])
    reply = OutboundReply(
        reply_id=message["_id"],
        ticket_id=ticket["_id"],
        channel=channel,
        conversation_key=ticket["conversation_key"],
        recipient=SenderIdentity.model_validate(ticket["requester"]),
        subject=ticket["subject"],
        text=message["text"],
        html=message["html"],
        in_reply_to=ticket.get("last_inbound_message_id"),
        author_agent_id=actor.subject,
        created_at=message["created_at"],
        visibility=visibility,
    )
    return outbox.record(
        topic=topics.outbound(channel),
        key=ticket["conversation_key"],
        value=reply,
        event_id=f"{message['_id']}:reply",
    )


async def list_messages(
    *,
    db: AsyncDatabase[Doc],
    ticket_id: str,
    include_internal: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[Doc], str | None]:
    query: dict[str, Any] = {"ticket_id": ticket_id}
    if not include_internal:
        query["internal"] = False
    return await page(
        collection=db["messages"], query=query, limit=limit, cursor=cursor, newest_first=False
    )


async def explanation(*, db: AsyncDatabase[Doc], ticket_id: str) -> list[dict[str, Any]]:
    await get(db=db, ticket_id=ticket_id)
    docs = (
        await db["explanations"]
        .find({"ticket_id": ticket_id})
        .sort([("issued_at", ASCENDING), ("_id", ASCENDING)])
        .to_list(1000)
    )
    return [
        {
            "command_id": d["_id"],
            "type": d["type"],
            "issued_at": d["issued_at"],
            "explanation": json.loads(d["explanation"]),
        }
        for d in docs
    ]
