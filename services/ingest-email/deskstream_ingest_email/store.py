"""Checkpoint and lease of each mailbox, in one MongoDB document per mailbox.

`{_id: <mailbox key>, owner, lease_until, uidvalidity, last_uid, updated_at}`

- The lease makes one replica the active worker of a mailbox: it is taken when free or
  expired, renewed by the holder's heartbeat, and released on a clean stop so a standby
  takes over at once (after a crash: once `lease_until` has passed).
- The checkpoint is the last UID whose mail Kafka acknowledged. Every write is fenced on
  the owner: a worker that lost its lease (paused, partitioned) can no longer move the
  checkpoint, and learns so from `LeaseLost`.

Clocks: expiry is compared with the local clock of the replica that wants the lease, so
replicas' clocks must agree to well within the TTL (NTP gives milliseconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern


class LeaseLost(Exception):
    """Another worker holds this mailbox now; stop working it without acknowledging."""


@dataclass(frozen=True)
class Checkpoint:
    uidvalidity: int | None
    last_uid: int


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MailboxStore:
    def __init__(
        self,
        collection: Collection[dict[str, Any]],
        *,
        owner: str,
        ttl_s: float,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        # Majority: an acknowledged checkpoint survives the loss of the primary.
        self._col = collection.with_options(write_concern=WriteConcern(w="majority"))
        self.owner = owner
        self.ttl = timedelta(seconds=ttl_s)
        self._clock = clock

    def acquire(self, key: str) -> bool:
        """Take or renew the lease of `key`; False while another live worker holds it."""
        now = self._clock()
        try:
            doc = self._col.find_one_and_update(
                {
                    "_id": key,
                    "$or": [{"owner": self.owner}, {"owner": None}, {"lease_until": {"$lt": now}}],
                },
                {
                    "$set": {"owner": self.owner, "lease_until": now + self.ttl},
                    "$setOnInsert": {"uidvalidity": None, "last_uid": 0},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # the document exists and its filter did not match: held
        return doc is not None and doc.get("owner") == self.owner

    def renew(self, key: str) -> None:
        now = self._clock()
        result = self._col.update_one(
            {"_id": key, "owner": self.owner}, {"$set": {"lease_until": now + self.ttl}}
        )
        if result.matched_count == 0:
            raise LeaseLost(key)

    def release(self, key: str) -> None:
        self._col.update_one({"_id": key, "owner": self.owner}, {"$set": {"owner": None}})

    def holder(self, key: str) -> str | None:
        doc = self._col.find_one({"_id": key}, {"owner": 1})
        return doc.get("owner") if doc else None

    def checkpoint(self, key: str) -> Checkpoint:
        doc = self._col.find_one({"_id": key}) or {}
        return Checkpoint(doc.get("uidvalidity"), int(doc.get("last_uid") or 0))

    def advance(self, key: str, *, uidvalidity: int, last_uid: int) -> None:
        """Record that every mail up to `last_uid` is on Kafka (fenced on the lease)."""
        result = self._col.update_one(
            {"_id": key, "owner": self.owner},
            {
                "$set": {
                    "uidvalidity": uidvalidity,
                    "last_uid": last_uid,
                    "updated_at": self._clock(),
                }
            },
        )
        if result.matched_count == 0:
            raise LeaseLost(key)
