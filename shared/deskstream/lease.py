"""One active worker per source (a mailbox, an X account): a lease and a fenced checkpoint.

One MongoDB document per source key:
`{_id: <key>, owner, lease_until, updated_at, <checkpoint fields...>}`

- The lease makes one replica the active worker of a key: it is taken when free or expired,
  renewed by the holder's heartbeat (`LeaseKeeper`), and released on a clean stop so a
  standby takes over at once (after a crash: once `lease_until` has passed).
- The checkpoint is a flat dict of the source's own fields (an IMAP UID, an X since_id),
  kept beside the lease fields in the same document. Every checkpoint write is fenced on
  the owner: a worker that lost its lease (paused, partitioned) can no longer move the
  checkpoint, and learns so from `LeaseLost`.

Synchronous PyMongo on purpose: the workers that use it (IMAP, X) run blocking clients in
threads of their own.

Clocks: expiry is compared with the local clock of the replica that wants the lease, so
replicas' clocks must agree to well within the TTL (NTP gives milliseconds).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern

from deskstream.metrics import Meter

log = logging.getLogger(__name__)

# The lease's own fields: a checkpoint can neither read nor overwrite them.
RESERVED = frozenset({"_id", "owner", "lease_until", "updated_at"})


class LeaseLost(Exception):
    """Another worker holds this key now; stop working it without acknowledging anything."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LeaseStore:
    """Leases and checkpoints of many keys in one collection, as seen by one `owner`."""

    def __init__(
        self,
        collection: Collection[dict[str, Any]],
        *,
        owner: str,
        ttl_s: float,
        initial: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        # Majority: an acknowledged checkpoint survives the loss of the primary.
        self._col = collection.with_options(write_concern=WriteConcern(w="majority"))
        self.owner = owner
        self.ttl = timedelta(seconds=ttl_s)
        self._initial = _checked(initial or {})
        self._clock = clock

    def acquire(self, key: str) -> bool:
        """Take or renew the lease of `key`; False while another live worker holds it.

        A key seen for the first time starts with the `initial` checkpoint.
        """
        now = self._clock()
        update: dict[str, Any] = {"$set": {"owner": self.owner, "lease_until": now + self.ttl}}
        if self._initial:
            update["$setOnInsert"] = dict(self._initial)
        try:
            doc = self._col.find_one_and_update(
                {
                    "_id": key,
                    "$or": [{"owner": self.owner}, {"owner": None}, {"lease_until": {"$lt": now}}],
                },
                update,
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # the document exists and its filter did not match: held
        return doc is not None and doc.get("owner") == self.owner

    def renew(self, key: str) -> None:
        """Extend the lease by the TTL; `LeaseLost` when someone else holds it now."""
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
        owner = doc.get("owner") if doc else None
        return str(owner) if owner is not None else None

    def checkpoint(self, key: str) -> dict[str, Any]:
        """The checkpoint fields of `key` (the `initial` ones where nothing was saved yet)."""
        doc = self._col.find_one({"_id": key}) or {}
        state = dict(self._initial)
        state.update({k: v for k, v in doc.items() if k not in RESERVED})
        return state

    def save(self, key: str, values: Mapping[str, Any]) -> None:
        """Set checkpoint fields of `key`, only while this owner holds its lease."""
        fields = _checked(values)
        result = self._col.update_one(
            {"_id": key, "owner": self.owner},
            {"$set": {**fields, "updated_at": self._clock()}},
        )
        if result.matched_count == 0:
            raise LeaseLost(key)


def _checked(values: Mapping[str, Any]) -> dict[str, Any]:
    clash = RESERVED.intersection(values)
    if clash:
        raise ValueError(f"checkpoint fields may not be named {sorted(clash)}")
    return dict(values)


class LeaseKeeper:
    """The heartbeat that keeps a key's lease while its worker works it.

    `with LeaseKeeper(...) as lease:` renews every `heartbeat_s` in a thread of its own, so
    a slow step of the worker (a large fetch, a Kafka flush waiting out a broker restart)
    does not let the lease lapse and hand the key to a standby mid-batch. `lease.check()`
    raises `LeaseLost` once a renewal found another owner, or renewals failed for longer
    than the TTL. Every step of the worker must be bounded by a timeout, so a stuck worker
    cannot keep a lease for ever; the checkpoint write is fenced on the owner in any case.
    """

    def __init__(
        self,
        store: LeaseStore,
        key: str,
        *,
        heartbeat_s: float,
        ttl_s: float,
        meter: Meter | None = None,
    ) -> None:
        self._store = store
        self._key = key
        self._heartbeat_s = heartbeat_s
        self._ttl_s = ttl_s
        self._meter = meter  # deskstream_lease_held{lease=key} while the keeper runs
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{key}", daemon=True)

    def __enter__(self) -> Self:
        if self._meter is not None:
            self._meter.lease(self._key, True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self._heartbeat_s + 5)
        if self._meter is not None:
            self._meter.lease(self._key, False)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        if self._lost.is_set():
            raise LeaseLost(self._key)

    def _run(self) -> None:
        failing_for = 0.0
        while not self._stop.wait(self._heartbeat_s):
            try:
                self._store.renew(self._key)
                failing_for = 0.0
            except LeaseLost:
                log.warning("lease taken over by another worker", extra={"lease": self._key})
                self._lost.set()
                return
            except Exception as exc:  # MongoDB unreachable: the lease runs out meanwhile
                failing_for += self._heartbeat_s
                log.warning("lease renewal failed", extra={"lease": self._key, "error": repr(exc)})
                if failing_for >= self._ttl_s:
                    self._lost.set()
                    return
