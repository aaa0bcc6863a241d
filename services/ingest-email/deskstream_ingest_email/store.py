"""Checkpoint and lease of each mailbox: the shared lease store with IMAP's two fields.

`{_id: <mailbox key>, owner, lease_until, uidvalidity, last_uid, updated_at}`

The lease, its expiry and the fencing of checkpoint writes on the owner are
`deskstream.lease` (shared with ingest-social); this module only names the checkpoint:
the last UID whose mail Kafka acknowledged, under the folder's UIDVALIDITY.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deskstream.lease import LeaseLost, LeaseStore
from pymongo.collection import Collection

__all__ = ["Checkpoint", "LeaseLost", "MailboxStore"]


@dataclass(frozen=True)
class Checkpoint:
    uidvalidity: int | None
    last_uid: int


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MailboxStore:
    """A mailbox's lease (delegated to the shared store) and its UID checkpoint."""

    def __init__(
        self,
        collection: Collection[dict[str, Any]],
        *,
        owner: str,
        ttl_s: float,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.leases = LeaseStore(
            collection,
            owner=owner,
            ttl_s=ttl_s,
            initial={"uidvalidity": None, "last_uid": 0},
            clock=clock,
        )
        self.owner = owner

    def acquire(self, key: str) -> bool:
        return self.leases.acquire(key)

    def renew(self, key: str) -> None:
        self.leases.renew(key)

    def release(self, key: str) -> None:
        self.leases.release(key)

    def holder(self, key: str) -> str | None:
        return self.leases.holder(key)

    def checkpoint(self, key: str) -> Checkpoint:
        state = self.leases.checkpoint(key)
        return Checkpoint(state.get("uidvalidity"), int(state.get("last_uid") or 0))

    def advance(self, key: str, *, uidvalidity: int, last_uid: int) -> None:
        """Record that every mail up to `last_uid` is on Kafka (fenced on the lease)."""
        self.leases.save(key, {"uidvalidity": uidvalidity, "last_uid": last_uid})
