"""The sent log: which replies the desk has finished with, in MongoDB (never send one twice).

One document per reply, `_id` = reply id, written right after the SMTP session that
settled it: `{_id, ticket_id, status: "sent" | "failed", message_id, detail, at}`. A
redelivered reply found here is not sent again; its outcome is reported again instead (the
DeliveryResult's command id is the same, so the ticket-api applies it once). The desk's
earlier Message-IDs of a ticket come from here too (References of the next reply).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from deskstream.runner import TransientError
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError

Doc = dict[str, Any]
DUPLICATE_KEY = 11000


class SentLog:
    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self.collection = collection

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("ticket_id", ASCENDING), ("at", ASCENDING)])

    async def settled(self, reply_ids: Iterable[str]) -> dict[str, Doc]:
        """The replies of `reply_ids` that were sent or given up already."""
        wanted = list(set(reply_ids))
        if not wanted:
            return {}
        try:
            found = await self.collection.find({"_id": {"$in": wanted}}).to_list()
        except PyMongoError as exc:
            raise TransientError(f"sent log unavailable: {exc!r}") from exc
        return {d["_id"]: d for d in found}

    async def earlier_message_ids(self, ticket_ids: Iterable[str]) -> dict[str, list[str]]:
        """Per ticket, the Message-IDs of the desk's mails that went out, oldest first."""
        wanted = list(set(ticket_ids))
        if not wanted:
            return {}
        try:
            found = (
                await self.collection.find(
                    {"ticket_id": {"$in": wanted}, "status": "sent"},
                    {"ticket_id": 1, "message_id": 1},
                )
                .sort([("at", ASCENDING), ("_id", ASCENDING)])
                .to_list()
            )
        except PyMongoError as exc:
            raise TransientError(f"sent log unavailable: {exc!r}") from exc
        by_ticket: dict[str, list[str]] = {}
        for doc in found:
            by_ticket.setdefault(doc["ticket_id"], []).append(doc["message_id"])
        return by_ticket

    async def record(self, docs: Sequence[Doc]) -> None:
        """Insert the outcomes; one recorded already (a redelivered batch) is kept as it is."""
        if not docs:
            return
        try:
            await self.collection.insert_many(list(docs), ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors) or not errors:
                raise TransientError(f"sent log write failed: {exc.details!r}"[:500]) from exc
        except PyMongoError as exc:
            raise TransientError(f"sent log write failed: {exc!r}") from exc


def sent_doc(
    *, reply_id: str, ticket_id: str, status: str, message_id: str, detail: str, at: datetime
) -> Doc:
    return {
        "_id": reply_id,
        "ticket_id": ticket_id,
        "status": status,
        "message_id": message_id,
        "detail": detail,
        "at": at,
    }
