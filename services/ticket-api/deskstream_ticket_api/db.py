"""MongoDB for ticket-api: the collections, their indexes, and the one way to write atomically.

Every state change is written together with its outbox documents in one multi-document
transaction (`atomically`), so a change and the events announcing it exist together or not
at all. Transactions need a replica set (a single-node one will do) or mongos; SecantusDB
presents itself as a one-member replica set. Unique indexes on deterministic ids (command
ids, message event ids, outbox event ids) are the second guard: re-applying a write is a
no-op even when two appliers race.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

T = TypeVar("T")
Doc = dict[str, Any]
Session = AsyncClientSession

# How long applied command ids and published outbox documents are kept: longer than the
# 7-day retention of tickets.commands, so any redelivery still finds its command id.
LEDGER_TTL_S = 30 * 24 * 3600
OUTBOX_TTL_S = 7 * 24 * 3600

_NEWEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]

INDEXES: dict[str, list[IndexModel]] = {
    # _id is the ticket id; one index per list filter, each ending in the page order.
    "tickets": [
        IndexModel(_NEWEST_FIRST, name="page"),
        *(
            IndexModel([(field, ASCENDING), *_NEWEST_FIRST], name=f"by_{field}")
            for field in (
                "status",
                "team",
                "assignee",
                "channel",
                "service_id",
                "requester.id",
                # The contact filter asks for the tickets of all a contact's identities;
                # merges and unmerges move `contact_id` by it.
                "requester_key",
                "contact_id",
            )
        ),
        # ops.py reads the unresolved tickets (status first), never the history.
        IndexModel(
            [("status", ASCENDING), ("service_id", ASCENDING), ("created_at", ASCENDING)],
            name="sla",
        ),
    ],
    # _id is the message's event id (inbound) or reply id (agent): a message is stored once.
    "messages": [
        IndexModel(
            [("ticket_id", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)],
            name="by_ticket",
        )
    ],
    # _id is the command id of the routing decision.
    "explanations": [
        IndexModel([("ticket_id", ASCENDING), ("issued_at", ASCENDING)], name="by_ticket")
    ],
    # _id is the command id: the idempotency ledger of tickets.commands.
    "applied_commands": [
        IndexModel([("applied_at", ASCENDING)], name="ttl", expireAfterSeconds=LEDGER_TTL_S)
    ],
    # _id is the event id (the record's ce_id): an event is written once.
    "outbox": [
        IndexModel([("published", ASCENDING), ("order", ASCENDING)], name="pending"),
        # Only published documents carry a date here, so only they expire.
        IndexModel([("published_at", ASCENDING)], name="ttl", expireAfterSeconds=OUTBOX_TTL_S),
    ],
    "agents": [IndexModel([("teams", ASCENDING)], name="by_team")],
    "teams": [],
    "services": [IndexModel([("team", ASCENDING)], name="by_team")],
    # _id is a key id; the key itself is never stored, only its SHA-256.
    "api_keys": [IndexModel([("hash", ASCENDING)], name="hash", unique=True)],
    "leases": [],
    # _id is a contact id (CT-...); multikey indexes answer lookups and suggestions.
    "contacts": [
        IndexModel(_NEWEST_FIRST, name="page"),
        IndexModel([("identities.key", ASCENDING)], name="by_identity"),
        IndexModel([("addresses", ASCENDING)], name="by_address"),
        IndexModel([("names", ASCENDING)], name="by_name"),
        IndexModel([("handles", ASCENDING)], name="by_handle"),
        IndexModel([("merged_into", ASCENDING)], name="by_merged_into"),
    ],
    # _id is an identity key (`email:maria@example.com`): one contact per identity, and the
    # guard when two appliers race to link the same identity.
    "contact_identities": [IndexModel([("contact_id", ASCENDING)], name="by_contact")],
    # Merges and unmerges: who, when, what, before and after.
    "contact_audit": [IndexModel([("contacts", ASCENDING), ("at", ASCENDING)], name="by_contact")],
}


@dataclass(frozen=True)
class Store:
    """The client and database every service function is handed explicitly."""

    client: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]

    def __getitem__(self, name: str) -> AsyncCollection[Doc]:
        if name not in INDEXES:
            raise KeyError(f"{name!r} is not a ticket-api collection")
        return self.db[name]


async def ensure_indexes(*, db: AsyncDatabase[Doc]) -> None:
    """Create the collections and indexes (idempotent); the unique ones guard idempotency."""
    existing = set(await db.list_collection_names())
    for name, indexes in INDEXES.items():
        if name not in existing:
            # Collections are created up front: creating one inside a transaction is not
            # supported by every server.
            await db.create_collection(name)
        if indexes:
            await db[name].create_indexes(indexes)


async def supports_transactions(*, client: AsyncMongoClient[Doc]) -> bool:
    """True for a replica-set member or mongos: the servers that run multi-document transactions."""
    hello = await client.admin.command("hello")
    return bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"


class Retry(Exception):
    """Raised inside `atomically`'s work to start over with fresh reads (a lost race)."""


async def atomically(
    *,
    client: AsyncMongoClient[Doc],
    work: Callable[[Session], Awaitable[T]],
    retry_on: tuple[type[BaseException], ...] = (),
    attempts: int = 5,
) -> T:
    """Run `work(session)` in one transaction and commit it; retry lost races a few times.

    `work` must read what it decides on through the session, so a retry decides afresh.
    Transient transaction errors (write conflicts, elections) and `Retry` or `retry_on`
    start over; an unknown commit result retries only the commit, so a change that did
    commit is never applied twice. Other errors propagate after the abort, among them
    `ConnectionFailure` once the attempts are spent: the caller's transient path.
    """
    retryable: tuple[type[BaseException], ...] = (Retry, *retry_on)
    delay = 0.02
    for attempt in range(1, attempts + 1):
        async with client.start_session() as session:
            try:
                await session.start_transaction()
                try:
                    result = await work(session)
                except BaseException:
                    if session.in_transaction:
                        await session.abort_transaction()
                    raise
                await _commit(session)
                return result
            except retryable as exc:
                if attempt == attempts:
                    raise
                log.info("transaction lost a race, retrying", extra={"error": repr(exc)})
            except PyMongoError as exc:
                if attempt == attempts or not exc.has_error_label("TransientTransactionError"):
                    raise
                log.info("transient transaction error, retrying", extra={"error": repr(exc)})
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")  # pragma: no cover


async def _commit(session: Session, attempts: int = 5) -> None:
    for attempt in range(1, attempts + 1):
        try:
            await session.commit_transaction()
            return
        except PyMongoError as exc:
            if attempt == attempts or not exc.has_error_label("UnknownTransactionCommitResult"):
                raise
            await asyncio.sleep(0.05 * attempt)
