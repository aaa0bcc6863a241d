"""Applying tickets.commands: decode a batch, apply it in bulk, idempotently; dead-letter the rest.

A chunk of commands is one MongoDB transaction: read the command ledger, the tickets and
the messages the chunk names (three queries), apply every command in order in memory,
then write the ledger, messages, explanations, tickets and outbox documents in bulk.

Idempotency: the ledger (`applied_commands`, `_id` = command id) is read first, so a
redelivered command is skipped and emits nothing; its insert is also the guard when two
appliers race (the loser's duplicate key aborts its transaction, and its retry skips what
the winner applied). Event ids are derived from the command id (`<command>:created`, ...),
and messages keep their source event id, so the outbox and the messages collection refuse
a second copy even without the ledger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deskstream.events import (
    TICKET_COMMAND,
    AppendMessage,
    AssignTicket,
    Channel,
    CreateTicket,
    DeflectTicket,
    DeliveryResult,
    InboundMessage,
    QueueTicket,
    ReplyDelivered,
    TicketQueued,
    TicketStatus,
)
from deskstream.logs import correlation, event_context
from deskstream.runner import Handler, PoisonRecords, Record, TransientError
from deskstream.topics import Topics
from pydantic import BaseModel, ValidationError
from pymongo import ReplaceOne, UpdateOne
from pymongo.errors import DuplicateKeyError, PyMongoError

from deskstream_ticket_api import contacts, outbox, ticketing
from deskstream_ticket_api.db import Doc, Retry, Session, Store, atomically
from deskstream_ticket_api.metrics import COMMANDS, ROUTING_DECISIONS
from deskstream_ticket_api.outbox import Waker

log = logging.getLogger(__name__)

Command = CreateTicket | AppendMessage | AssignTicket | QueueTicket | DeflectTicket | DeliveryResult


class Rejected(Exception):
    """A command that can never be applied (it names a ticket or reply that does not exist)."""


@dataclass
class Plan:
    """One chunk's reads, and the writes its commands add up to."""

    topics: Topics
    applied: set[str]
    tickets: dict[str, Doc]
    versions: dict[str, int | None]  # as loaded; None for tickets this chunk creates
    known_messages: set[str]
    replies: dict[str, Doc]
    touched: set[str] = field(default_factory=set)
    ledger: list[Doc] = field(default_factory=list)
    messages: list[Doc] = field(default_factory=list)
    explanations: list[Doc] = field(default_factory=list)
    deliveries: list[UpdateOne] = field(default_factory=list)
    entries: list[outbox.Entry] = field(default_factory=list)
    rejected: dict[int, Exception] = field(default_factory=dict)
    # Senders resolved to contacts; written in the same transaction as the tickets.
    linker: contacts.Linker = field(default_factory=contacts.Linker)
    # Counted once the chunk's transaction committed (a retried one is planned again).
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (type, outcome)
    decisions: list[tuple[str, str, str]] = field(default_factory=list)  # outcome, channel, team

    def ticket(self, command: Command) -> Doc:
        ticket = self.tickets.get(command.ticket_id)
        if ticket is None:
            raise Rejected(f"ticket {command.ticket_id} does not exist (no create came first)")
        return ticket

    def emit(self, ticket: Doc, events: Sequence[BaseModel]) -> None:
        self.touched.add(ticket["_id"])
        self.entries.extend(ticketing.entries(self.topics, list(events)))

    def explain(self, command: AssignTicket | QueueTicket | DeflectTicket) -> None:
        # Stored as JSON text: the router's explanation may use keys MongoDB would read as
        # operators or paths ("$score", "skill.level").
        self.explanations.append(
            {
                "_id": command.command_id,
                "ticket_id": command.ticket_id,
                "type": command.type,
                "issued_at": command.issued_at,
                "explanation": json.dumps(command.explanation, default=str),
            }
        )


def _add_inbound(
    plan: Plan, ticket: Doc, message: InboundMessage, command: Command, reopen: bool
) -> list[BaseModel]:
    if message.event_id in plan.known_messages:
        return []  # the same source message came in another command: it is stored once
    cid, at = command.command_id, command.issued_at
    doc = ticketing.inbound_message_doc(message, ticket_id=ticket["_id"], command_id=cid, at=at)
    plan.messages.append(doc)
    plan.known_messages.add(message.event_id)
    events: list[BaseModel] = [
        ticketing.message_added(ticket, doc, event_id=f"{cid}:message", at=at, caused_by=cid)
    ]
    if reopen:
        changed = ticketing.reopen_on_reply(ticket, event_id=f"{cid}:status", at=at, caused_by=cid)
        if changed is not None:
            events.append(changed)
    return events


def _create(plan: Plan, command: CreateTicket) -> None:
    cid, at = command.command_id, command.issued_at
    ticket = plan.tickets.get(command.ticket_id)
    events: list[BaseModel] = []
    if ticket is None:
        ticket = ticketing.new_ticket(
            ticket_id=command.ticket_id,
            message=command.message,
            at=at,
            created_by=cid,
            service_id=command.service_id,
            team=command.team,
            classification_rule=command.classification_rule,
        )
        ticket["contact_id"], ticket["requester_key"] = plan.linker.resolve(
            command.message.sender, at=at
        )
        plan.tickets[command.ticket_id] = ticket
        plan.versions[command.ticket_id] = None
        events.append(
            ticketing.created_event(ticket, event_id=f"{cid}:created", at=at, caused_by=cid)
        )
    else:
        # Another command opened this ticket first: its message joins the open ticket.
        log.warning(
            "create for an existing ticket; appending its message",
            extra={"ticket_id": command.ticket_id, "command_id": cid},
        )
        plan.linker.resolve(command.message.sender, at=at)
    events += _add_inbound(plan, ticket, command.message, command, reopen=not events)
    plan.emit(ticket, events)


def _append(plan: Plan, command: AppendMessage) -> None:
    ticket = plan.ticket(command)
    # Resolved only once the command applies: a rejected one must leave no contact behind.
    plan.linker.resolve(command.message.sender, at=command.issued_at)
    plan.emit(ticket, _add_inbound(plan, ticket, command.message, command, reopen=True))


def _assign(plan: Plan, command: AssignTicket) -> None:
    ticket = plan.ticket(command)
    plan.explain(command)
    if ticket.get("assignee") == command.agent_id:
        return  # already theirs: the decision is recorded, nothing changed
    plan.emit(
        ticket,
        ticketing.assign(
            ticket,
            agent_id=command.agent_id,
            team=command.team,
            event_prefix=command.command_id,
            at=command.issued_at,
            caused_by=command.command_id,
        ),
    )


def _queue(plan: Plan, command: QueueTicket) -> None:
    ticket = plan.ticket(command)
    plan.explain(command)
    at = command.issued_at
    ticket["team"] = command.team
    ticket["queue"] = {
        "team": command.team,
        "position": command.position,
        "estimated_wait_s": command.estimated_wait_s,
        "at": at,
    }
    ticket["updated_at"] = at
    queued = TicketQueued(
        event_id=f"{command.command_id}:queued",
        ticket_id=ticket["_id"],
        occurred_at=at,
        caused_by=command.command_id,
        team=command.team,
        position=command.position,
        channel=Channel(ticket["channel"]),
        estimated_wait_s=command.estimated_wait_s,
    )
    plan.emit(ticket, [queued])


def _deflect(plan: Plan, command: DeflectTicket) -> None:
    ticket = plan.ticket(command)
    plan.explain(command)
    at = command.issued_at
    ticket["deflection"] = {"target": command.target, "at": at}
    ticket["updated_at"] = at
    events: list[BaseModel] = []
    # Offered to self-service or peers: the desk waits for them, so a new ticket is pending.
    if ticket["status"] == TicketStatus.NEW:
        events.append(
            ticketing.change_status(
                ticket,
                TicketStatus.PENDING,
                event_id=f"{command.command_id}:status",
                at=at,
                caused_by=command.command_id,
            )
        )
    plan.touched.add(ticket["_id"])
    plan.emit(ticket, events)


def _delivery(plan: Plan, command: DeliveryResult) -> None:
    reply = plan.replies.get(command.reply_id)
    if reply is None or reply["ticket_id"] != command.ticket_id:
        raise Rejected(f"reply {command.reply_id} of ticket {command.ticket_id} does not exist")
    status = "delivered" if command.delivered else "failed"
    plan.deliveries.append(
        UpdateOne(
            {"_id": command.reply_id},
            {
                "$set": {
                    "delivery": {
                        "status": status,
                        "detail": command.detail,
                        "at": command.issued_at,
                        "command_id": command.command_id,
                    }
                }
            },
        )
    )
    ticket = plan.ticket(command)
    delivered = ReplyDelivered(
        event_id=f"{command.command_id}:delivery",
        ticket_id=command.ticket_id,
        occurred_at=command.issued_at,
        caused_by=command.command_id,
        reply_id=command.reply_id,
        channel=Channel(ticket["channel"]),
        delivered=command.delivered,
        detail=command.detail,
    )
    plan.emit(ticket, [delivered])


# A dispatch table: a new command type is one function here, not another branch.
APPLY: dict[str, Callable[[Plan, Any], None]] = {
    "create": _create,
    "append": _append,
    "assign": _assign,
    "queue": _queue,
    "deflect": _deflect,
    "delivery": _delivery,
}


# What an applied routing command decided, from the ticket before it applies.
def _decision(plan: Plan, command: Command) -> tuple[str, str, str] | None:
    if not isinstance(command, AssignTicket | QueueTicket | DeflectTicket):
        return None
    ticket = plan.tickets.get(command.ticket_id) or {}
    if isinstance(command, AssignTicket):
        outcome = "assigned"
    elif isinstance(command, QueueTicket):
        outcome = "queued" if ticket.get("queue") is None else "queue_moved"
    else:
        outcome = "deflected"
    team = getattr(command, "team", None) or ticket.get("team") or "none"
    return outcome, str(ticket.get("channel", "none")), str(team)


def plan_chunk(plan: Plan, chunk: Sequence[tuple[int, Command]]) -> dict[int, Exception]:
    """Apply the chunk's commands to the loaded state in order; returns the rejected ones."""
    rejected: dict[int, Exception] = {}
    for index, command in chunk:
        with event_context(**correlation(command)):
            if _plan_one(plan, index, command, rejected):
                log.debug("command applied", extra={"type": command.type})
    return rejected


def _plan_one(plan: Plan, index: int, command: Command, rejected: dict[int, Exception]) -> bool:
    cid = command.command_id
    if cid in plan.applied:
        plan.outcomes.append((command.type, "duplicate"))
        return False
    decision = _decision(plan, command)
    try:
        APPLY[command.type](plan, command)
    except Rejected as exc:
        plan.outcomes.append((command.type, "rejected"))
        rejected[index] = exc  # dead-lettered by the runner, which logs it
        return False
    plan.applied.add(cid)
    plan.ledger.append(
        {
            "_id": cid,
            "ticket_id": command.ticket_id,
            "type": command.type,
            "applied_at": datetime.now(UTC),
        }
    )
    plan.outcomes.append((command.type, "applied"))
    if decision is not None:
        plan.decisions.append(decision)
    return True


def count(plan: Plan) -> None:
    """Count a committed chunk's commands and routing decisions."""
    for kind, outcome in plan.outcomes:
        COMMANDS.labels(kind, outcome).inc()
    for outcome, channel, team in plan.decisions:
        ROUTING_DECISIONS.labels(outcome, channel, team).inc()


async def _load(
    store: Store, session: Session, topics: Topics, commands: Sequence[Command]
) -> Plan:
    ids = list({c.command_id for c in commands})
    ledger = store["applied_commands"].find({"_id": {"$in": ids}}, {"_id": 1}, session=session)
    applied = {d["_id"] for d in await ledger.to_list()}
    ticket_ids = list({c.ticket_id for c in commands})
    tickets = {
        d["_id"]: d
        for d in await store["tickets"]
        .find({"_id": {"$in": ticket_ids}}, session=session)
        .to_list()
    }
    message_ids = [
        c.message.event_id for c in commands if isinstance(c, CreateTicket | AppendMessage)
    ]
    senders = [c.message.sender for c in commands if isinstance(c, CreateTicket | AppendMessage)]
    linker = await contacts.load(store=store, session=session, senders=senders)
    reply_ids = [c.reply_id for c in commands if isinstance(c, DeliveryResult)]
    wanted = list({*message_ids, *reply_ids})
    found = (
        await store["messages"]
        .find({"_id": {"$in": wanted}}, {"_id": 1, "ticket_id": 1, "kind": 1}, session=session)
        .to_list()
        if wanted
        else []
    )
    return Plan(
        topics=topics,
        applied=applied,
        tickets=tickets,
        versions={tid: int(t.get("version", 0)) for tid, t in tickets.items()},
        known_messages={d["_id"] for d in found},
        replies={d["_id"]: d for d in found if d.get("kind") == "reply"},
        linker=linker,
    )


async def _write(store: Store, session: Session, plan: Plan) -> None:
    # The ledger first: a racing applier's duplicate aborts here, before anything else.
    if plan.ledger:
        await store["applied_commands"].insert_many(plan.ledger, session=session)
    await contacts.write(store=store, session=session, linker=plan.linker)
    if plan.messages:
        await store["messages"].insert_many(plan.messages, session=session)
    if plan.explanations:
        await store["explanations"].insert_many(plan.explanations, session=session)
    created, replaced = [], []
    for tid in plan.touched:
        ticket = plan.tickets[tid]
        loaded = plan.versions[tid]
        ticket["version"] = (loaded or 0) + 1
        if loaded is None:
            created.append(ticket)
        else:
            replaced.append(ReplaceOne({"_id": tid, "version": loaded}, ticket))
    if created:
        await store["tickets"].insert_many(created, session=session)
    if replaced:
        result = await store["tickets"].bulk_write(replaced, ordered=False, session=session)
        if result.matched_count != len(replaced):
            raise Retry("a ticket changed while the chunk was applied")
    if plan.deliveries:
        await store["messages"].bulk_write(plan.deliveries, ordered=False, session=session)
    await outbox.write(store=store, session=session, entries=plan.entries)


# A chunk also ends at this many bytes of message text: a transaction stays small even when
# the commands carry large bodies.
CHUNK_BYTES = 8 * 1024 * 1024


def _weight(command: Command) -> int:
    if isinstance(command, CreateTicket | AppendMessage):
        m = command.message
        return 1024 + len(m.text) + len(m.html or "") + len(m.subject)
    return 1024


def chunks(
    commands: Sequence[tuple[int, Command]], size: int, max_bytes: int = CHUNK_BYTES
) -> list[list[tuple[int, Command]]]:
    """Split in order into chunks of at most `size` commands and about `max_bytes` bytes."""
    out: list[list[tuple[int, Command]]] = []
    current: list[tuple[int, Command]] = []
    weight = 0
    for pair in commands:
        w = _weight(pair[1])
        if current and (len(current) >= size or weight + w > max_bytes):
            out.append(current)
            current, weight = [], 0
        current.append(pair)
        weight += w
    if current:
        out.append(current)
    return out


async def apply_commands(
    *, store: Store, topics: Topics, commands: Sequence[tuple[int, Command]], chunk: int = 100
) -> tuple[dict[int, Exception], int]:
    """Apply `(index, command)` pairs in chunks; returns rejected indexes and the events queued."""
    rejected: dict[int, Exception] = {}
    queued = 0
    for part in chunks(commands, chunk):

        async def work(session: Session, part: Sequence[tuple[int, Command]] = part) -> Plan:
            plan = await _load(store, session, topics, [c for _, c in part])
            plan.rejected = plan_chunk(plan, part)
            await _write(store, session, plan)
            return plan

        plan = await atomically(client=store.client, work=work, retry_on=(DuplicateKeyError,))
        count(plan)
        rejected.update(plan.rejected)
        queued += len(plan.entries)
    return rejected, queued


def decode(records: Sequence[Record]) -> tuple[list[tuple[int, Command]], dict[int, BaseException]]:
    """The batch's commands with their index, and the undecodable ones for dead-lettering."""
    good: list[tuple[int, Command]] = []
    bad: dict[int, BaseException] = {}
    for i, record in enumerate(records):
        if record.value is None:
            bad[i] = ValueError("record has no value (tombstone)")
            continue
        try:
            good.append((i, TICKET_COMMAND.validate_json(record.value)))
        except (ValidationError, ValueError) as exc:
            bad[i] = exc
    return good, bad


def handler(*, store: Store, topics: Topics, waker: Waker, chunk: int) -> Handler:
    """The BatchRunner handler for tickets.commands."""

    async def handle(records: list[Record]) -> None:
        commands, bad = decode(records)
        if commands:
            try:
                rejected, queued = await apply_commands(
                    store=store, topics=topics, commands=commands, chunk=chunk
                )
            except Retry as exc:
                raise TransientError(f"tickets kept changing under the batch: {exc}") from exc
            except PyMongoError as exc:
                # A write conflict outlasting the retries is not the records' fault: e.g. a
                # crashed predecessor's transaction holds these documents until the server
                # reaps it (60 s by default). Pause and retry; never dead-letter for it.
                if exc.has_error_label("TransientTransactionError"):
                    raise TransientError(f"transaction kept conflicting: {exc}") from exc
                raise
            bad.update(rejected)
            if queued:
                waker.wake()
        undecodable = sum(not isinstance(e, Rejected) for e in bad.values())
        if undecodable:
            COMMANDS.labels("unknown", "undecodable").inc(undecodable)
        if bad:
            raise PoisonRecords(bad)

    return handle
