"""The heartbeat that keeps a mailbox's lease while its worker works it.

A thread of its own, so a slow step of the worker (a large fetch, a Kafka flush waiting out
a broker restart) does not let the lease lapse and hand the mailbox to a standby mid-batch.
Every step of the worker is bounded by a timeout, so a stuck worker cannot keep a lease
for ever; and the checkpoint write is fenced on the owner in any case.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from deskstream_ingest_email.metrics import LEASE_HELD
from deskstream_ingest_email.store import LeaseLost, MailboxStore

log = logging.getLogger(__name__)


class LeaseKeeper:
    """`with LeaseKeeper(...) as lease:` renews every `heartbeat_s`; `lease.check()` raises
    `LeaseLost` once a renewal found another owner (or failed for longer than the TTL)."""

    def __init__(self, store: MailboxStore, key: str, *, heartbeat_s: float, ttl_s: float) -> None:
        self._store = store
        self._key = key
        self._heartbeat_s = heartbeat_s
        self._ttl_s = ttl_s
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{key}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        LEASE_HELD.labels(self._key).set(1)
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
        LEASE_HELD.labels(self._key).set(0)

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
                log.warning("lease taken over by another worker", extra={"mailbox": self._key})
                self._lost.set()
                return
            except Exception as exc:  # MongoDB unreachable: the lease runs out meanwhile
                failing_for += self._heartbeat_s
                log.warning(
                    "lease renewal failed",
                    extra={"mailbox": self._key, "error": repr(exc)},
                )
                if failing_for >= self._ttl_s:
                    self._lost.set()
                    return
