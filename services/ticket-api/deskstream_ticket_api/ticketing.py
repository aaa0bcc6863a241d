"""Pure changes to a ticket document, each returning the events that announce it.

Both writers use these: the commands consumer (router decisions) and the REST routes
(agents). Keeping the rules here means an assignment or a status change looks the same on
tickets.events whoever made it. No I/O: the callers load and write the documents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deskstream.events import (
    Channel,
    InboundMessage,
    MessageAdded,
    SenderIdentity,
    StatusChanged,
    TicketAssigned,
    TicketCreated,
    TicketStatus,
)
from deskstream.topics import Topics
from pydantic import BaseModel

from deskstream_ticket_api import outbox, transitions
from deskstream_ticket_api.db import Doc


def new_ticket(
    *,
    ticket_id: str,
    message: InboundMessage,
    at: datetime,
    created_by: str,
    service_id: str | None = None,
    team: str | None = None,
    classification_rule: str | None = None,
) -> Doc:
    return {
        "_id": ticket_id,
        "status": TicketStatus.NEW.value,
        "channel": message.channel.value,
        "subject": message.subject,
        "requester": message.sender.model_dump(mode="json"),
        "conversation_key": message.conversation_key,
        "assignee": None,
        "team": team,
        "service_id": service_id,
        "classification_rule": classification_rule,
        "queue": None,
        "deflection": None,
        "message_count": 0,
        "last_message_at": None,
        "last_inbound_message_id": None,
        "created_at": at,
        "updated_at": at,
        "created_by": created_by,
        "version": 0,
    }


def created_event(ticket: Doc, *, event_id: str, at: datetime, caused_by: str) -> TicketCreated:
    return TicketCreated(
        event_id=event_id,
        ticket_id=ticket["_id"],
        occurred_at=at,
        caused_by=caused_by,
        channel=Channel(ticket["channel"]),
        subject=ticket["subject"],
        requester=SenderIdentity.model_validate(ticket["requester"]),
        service_id=ticket.get("service_id"),
        team=ticket.get("team"),
        conversation_key=ticket.get("conversation_key"),
    )


def inbound_message_doc(
    message: InboundMessage, *, ticket_id: str, command_id: str, at: datetime
) -> Doc:
    return {
        "_id": message.event_id,
        "ticket_id": ticket_id,
        "kind": "inbound",
        "internal": False,
        "channel": message.channel.value,
        "author": message.sender.model_dump(mode="json"),
        "subject": message.subject,
        "text": message.text,
        "html": message.html,
        "attachments": [a.model_dump(mode="json") for a in message.attachments],
        "reply_to": list(message.reply_to),
        "visibility": message.visibility.value,
        "raw_ref": message.raw_ref,
        "received_at": message.received_at,
        "created_at": at,
        "command_id": command_id,
        "delivery": None,
    }


def message_added(
    ticket: Doc,
    message: Doc,
    *,
    event_id: str,
    at: datetime,
    caused_by: str | None,
) -> MessageAdded:
    """Count the message on the ticket and announce it."""
    ticket["message_count"] = int(ticket.get("message_count", 0)) + 1
    ticket["last_message_at"] = at
    ticket["updated_at"] = at
    if message["kind"] == "inbound":
        ticket["last_inbound_message_id"] = message["_id"]
    return MessageAdded(
        event_id=event_id,
        ticket_id=ticket["_id"],
        occurred_at=at,
        caused_by=caused_by,
        message_event_id=message["_id"],
        channel=Channel(ticket["channel"]),
        author=SenderIdentity.model_validate(message["author"]),
        internal=bool(message["internal"]),
    )


def change_status(
    ticket: Doc, new: TicketStatus, *, event_id: str, at: datetime, caused_by: str | None
) -> StatusChanged:
    """Apply a lifecycle step (raises `TransitionError` if it is not one)."""
    old = TicketStatus(ticket["status"])
    transitions.check(old, new)
    ticket["status"] = new.value
    ticket["updated_at"] = at
    return StatusChanged(
        event_id=event_id,
        ticket_id=ticket["_id"],
        occurred_at=at,
        caused_by=caused_by,
        old=old,
        new=new,
        assignee=ticket.get("assignee"),
        team=ticket.get("team"),
        channel=Channel(ticket["channel"]),
    )


def reopen_on_reply(
    ticket: Doc, *, event_id: str, at: datetime, caused_by: str | None
) -> StatusChanged | None:
    """A requester's message on a pending, resolved or closed ticket opens it again."""
    if ticket["status"] in (TicketStatus.PENDING, TicketStatus.RESOLVED, TicketStatus.CLOSED):
        return change_status(
            ticket, TicketStatus.OPEN, event_id=event_id, at=at, caused_by=caused_by
        )
    return None


def assign(
    ticket: Doc,
    *,
    agent_id: str,
    team: str | None,
    event_prefix: str,
    at: datetime,
    caused_by: str | None,
) -> list[BaseModel]:
    """Give the ticket to `agent_id`; a ticket nobody had yet (new, or deflected) opens.

    `TicketAssigned` names the previous agent, so a consumer frees that agent's slot and
    takes one for the new agent from this one event.
    """
    previous = ticket.get("assignee")
    ticket["assignee"] = agent_id
    if team is not None:
        ticket["team"] = team
    ticket["queue"] = None
    ticket["updated_at"] = at
    opens = previous is None and ticket["status"] in (TicketStatus.NEW, TicketStatus.PENDING)
    status_event = None
    if opens:
        status_event = change_status(
            ticket,
            TicketStatus.OPEN,
            event_id=f"{event_prefix}:status",
            at=at,
            caused_by=caused_by,
        )
    events: list[BaseModel] = [
        TicketAssigned(
            event_id=f"{event_prefix}:assigned",
            ticket_id=ticket["_id"],
            occurred_at=at,
            caused_by=caused_by,
            agent_id=agent_id,
            previous_agent_id=previous,
            team=ticket.get("team"),
            channel=Channel(ticket["channel"]),
            status=TicketStatus(ticket["status"]),
        )
    ]
    if status_event is not None:
        events.append(status_event)
    return events


def entries(topics: Topics, events: list[BaseModel]) -> list[outbox.Entry]:
    """Outbox entries for ticket events: tickets.events, keyed by ticket id."""
    topic = topics.name("tickets.events")
    out = []
    for event in events:
        ident: Any = event
        out.append(
            outbox.record(topic=topic, key=ident.ticket_id, value=event, event_id=ident.event_id)
        )
    return out
