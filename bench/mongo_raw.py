"""M: raw MongoDB writes with the ticket-api's exact operation mix, without Kafka or pydantic.

What one ticket costs the ticket-api in the pipeline (services/ticket-api: commands.py,
outbox.py, relay.py), replayed here with documents built up front by the ticket-api's own
pure helpers (`ticketing`, `outbox.Entry.document`), so shapes and sizes match:

- two commands: the router's `create` and its routing decision (`queue`, what most
  tickets of a burst get once the demo agents are at capacity);
- per chunk of 100 commands, one transaction (`commands.apply_commands`): find the ledger,
  the tickets and the messages by `$in` (three queries), then `insert_many` ledger,
  messages, explanations, tickets, a `bulk_write` of version-guarded `ReplaceOne`s for
  the tickets the chunk changes, and `insert_many` outbox. Each chunk holds 50 creates and
  the routing decisions for the previous chunk's 50 tickets — the interleaving the
  consumer sees in steady state;
- concurrently, the relay: read the oldest pending outbox documents (limit 500, sorted by
  `order`) and mark them with one `update_many`; woken after every commit, like the
  ticket-api's `Waker`.

Everything goes through pymongo's `AsyncMongoClient` against the bench's SecantusDB, on
a fresh database with the ticket-api's indexes (`db.ensure_indexes`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deskstream.events import Channel, InboundMessage, TicketQueued
from deskstream.topics import Topics
from deskstream_ticket_api import ticketing
from deskstream_ticket_api.db import Doc, ensure_indexes
from pymongo import ASCENDING, AsyncMongoClient, ReplaceOne

from bench.workload import Inbound

CHUNK = 100  # TicketApiSettings.command_chunk
RELAY_BATCH = 500  # TicketApiSettings.relay_batch

# A routing explanation of the size the router writes for a team of two agents.
EXPLANATION = {
    "channel": "email",
    "required_skills": {"accounts": 1},
    "policy": "online, skills, channel cap, total cap; then least load",
    "candidates": [
        {
            "agent_id": agent,
            "presence": presence,
            "load": {"total": 15, "email": 10},
            "caps": {"total": 15, "email": 10},
            "filtered_by": reason,
        }
        for agent, presence, reason in (
            ("carla", "online", "capacity: email 10/10"),
            ("frank", "offline", "presence: offline"),
        )
    ],
    "winner": None,
    "service_id": "password-reset",
    "team": "service-desk",
    "classification_rule": "accounts@v1",
    "criticality": "low",
}


@dataclass(frozen=True)
class TicketWrites:
    """Every document one ticket's two commands write, as the ticket-api builds them."""

    ticket_id: str
    message_id: str
    create_cid: str
    route_cid: str
    ticket: Doc  # after the create (version 1)
    message: Doc
    create_outbox: list[Doc]  # TicketCreated, MessageAdded
    ledger_create: Doc
    queued: Doc  # the ticket after the queue decision (version 2)
    explanation: Doc
    route_outbox: list[Doc]  # TicketQueued
    ledger_route: Doc


def build(records: Sequence[Inbound]) -> list[TicketWrites]:
    """The documents for `records`, built before the clock starts."""
    topics = Topics("bench-m.")
    out = []
    for r in records:
        msg = InboundMessage.model_validate_json(r.value)
        at = datetime.now(UTC)
        cid, rid = f"create:{msg.event_id}", f"route:{r.ticket_id}:queue:1"
        ticket = ticketing.new_ticket(
            ticket_id=r.ticket_id,
            message=msg,
            at=at,
            created_by=cid,
            service_id=msg.service_hint or "general",
            team="service-desk",
            classification_rule="default@v1",
        )
        created = ticketing.created_event(ticket, event_id=f"{cid}:created", at=at, caused_by=cid)
        message = ticketing.inbound_message_doc(msg, ticket_id=r.ticket_id, command_id=cid, at=at)
        added = ticketing.message_added(
            ticket, message, event_id=f"{cid}:message", at=at, caused_by=cid
        )
        ticket["version"] = 1
        queued = copy.deepcopy(ticket)
        queued.update(
            team="service-desk",
            queue={"team": "service-desk", "position": 1, "at": at},
            updated_at=at,
            version=2,
        )
        event = TicketQueued(
            event_id=f"{rid}:queued",
            ticket_id=r.ticket_id,
            occurred_at=at,
            caused_by=rid,
            team="service-desk",
            position=1,
            channel=Channel(ticket["channel"]),
        )
        out.append(
            TicketWrites(
                ticket_id=r.ticket_id,
                message_id=msg.event_id,
                create_cid=cid,
                route_cid=rid,
                ticket=ticket,
                message=message,
                create_outbox=[
                    e.document(now=at) for e in ticketing.entries(topics, [created, added])
                ],
                ledger_create={"_id": cid, "ticket_id": r.ticket_id, "type": "create"},
                queued=queued,
                explanation={
                    "_id": rid,
                    "ticket_id": r.ticket_id,
                    "type": "queue",
                    "issued_at": at,
                    "explanation": json.dumps(EXPLANATION, default=str),
                },
                route_outbox=[e.document(now=at) for e in ticketing.entries(topics, [event])],
                ledger_route={"_id": rid, "ticket_id": r.ticket_id, "type": "queue"},
            )
        )
    return out


class OpClock:
    """Seconds spent per MongoDB operation kind, to show where a transaction's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @asynccontextmanager
    async def op(self, name: str) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started
            self.calls[name] += 1


async def _chunk(
    client: AsyncMongoClient[Doc],
    db: Any,
    creates: Sequence[TicketWrites],
    routes: Sequence[TicketWrites],
    clock: OpClock,
) -> int:
    """One command chunk as one transaction; returns the outbox documents it queued."""
    now = datetime.now(UTC)
    async with client.start_session() as session:
        await session.start_transaction()
        async with clock.op("find ledger $in"):
            cids = [t.create_cid for t in creates] + [t.route_cid for t in routes]
            await (
                db["applied_commands"]
                .find({"_id": {"$in": cids}}, {"_id": 1}, session=session)
                .to_list()
            )
        async with clock.op("find tickets $in"):
            tids = [t.ticket_id for t in creates] + [t.ticket_id for t in routes]
            await db["tickets"].find({"_id": {"$in": tids}}, session=session).to_list()
        if creates:
            async with clock.op("find messages $in"):
                await (
                    db["messages"]
                    .find(
                        {"_id": {"$in": [t.message_id for t in creates]}},
                        {"_id": 1, "ticket_id": 1, "kind": 1},
                        session=session,
                    )
                    .to_list()
                )
        ledger = [{**t.ledger_create, "applied_at": now} for t in creates]
        ledger += [{**t.ledger_route, "applied_at": now} for t in routes]
        async with clock.op("insert_many ledger"):
            await db["applied_commands"].insert_many(ledger, session=session)
        if creates:
            async with clock.op("insert_many messages"):
                await db["messages"].insert_many([t.message for t in creates], session=session)
        if routes:
            async with clock.op("insert_many explanations"):
                await db["explanations"].insert_many(
                    [t.explanation for t in routes], session=session
                )
        if creates:
            async with clock.op("insert_many tickets"):
                await db["tickets"].insert_many([t.ticket for t in creates], session=session)
        if routes:
            async with clock.op("bulk_write ReplaceOne tickets"):
                result = await db["tickets"].bulk_write(
                    [ReplaceOne({"_id": t.ticket_id, "version": 1}, t.queued) for t in routes],
                    ordered=False,
                    session=session,
                )
            if result.matched_count != len(routes):
                raise RuntimeError("a ticket was not at the version read")
        docs = [d for t in creates for d in t.create_outbox] + [
            d for t in routes for d in t.route_outbox
        ]
        async with clock.op("insert_many outbox"):
            await db["outbox"].insert_many(docs, session=session)
        async with clock.op("commit"):
            await session.commit_transaction()
    return len(docs)


async def _relay(db: Any, total: int, wake: asyncio.Event, clock: OpClock) -> int:
    """Mark pending outbox documents in batches until `total` were marked; returns rounds."""
    marked = rounds = 0
    while marked < total:
        async with clock.op("relay find pending"):
            docs = (
                await db["outbox"]
                .find({"published": False})
                .sort("order", ASCENDING)
                .limit(RELAY_BATCH)
                .to_list()
            )
        if not docs:
            wake.clear()
            await asyncio.wait_for(wake.wait(), timeout=60)
            continue
        async with clock.op("relay update_many mark"):
            await db["outbox"].update_many(
                {"_id": {"$in": [d["_id"] for d in docs]}},
                {"$set": {"published": True, "published_at": datetime.now(UTC)}},
            )
        marked += len(docs)
        rounds += 1
    return rounds


async def run(*, uri: str, database: str, writes: Sequence[TicketWrites]) -> dict[str, Any]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(uri, tz_aware=True)
    try:
        db = client[database]
        await ensure_indexes(db=db)
        clock = OpClock()
        wake = asyncio.Event()
        total_outbox = sum(len(t.create_outbox) + len(t.route_outbox) for t in writes)
        half = CHUNK // 2

        async def consumer() -> int:
            transactions = 0
            for i in range(0, len(writes) + half, half):
                creates, routes = writes[i : i + half], writes[max(i - half, 0) : i]
                await _chunk(client, db, creates, routes, clock)
                transactions += 1
                wake.set()
            return transactions

        started = time.perf_counter()
        transactions, rounds = await asyncio.gather(
            consumer(), _relay(db, total_outbox, wake, clock)
        )
        wall = time.perf_counter() - started
        tickets = await db["tickets"].count_documents({"version": 2})
        if tickets != len(writes):
            raise RuntimeError(f"M: {tickets} tickets routed in MongoDB, expected {len(writes)}")
        await client.drop_database(database)
    finally:
        await client.close()
    return {
        "tickets": len(writes),
        "commands": 2 * len(writes),
        "transactions": transactions,
        "relay_rounds": rounds,
        "outbox_documents": total_outbox,
        "chunk": CHUNK,
        "relay_batch": RELAY_BATCH,
        "seconds": round(wall, 3),
        "tickets_per_s": round(len(writes) / wall, 1),
        "op_seconds": {k: round(v, 3) for k, v in sorted(clock.seconds.items())},
        "op_calls": dict(sorted(clock.calls.items())),
    }
