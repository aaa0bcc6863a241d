"""The heartbeat that keeps a mailbox's lease while its worker works it.

The shared `deskstream.lease.LeaseKeeper`, reporting to this service's lease gauge.
"""

from __future__ import annotations

from deskstream.lease import LeaseKeeper as _SharedKeeper

from deskstream_ingest_email.metrics import LEASE_HELD
from deskstream_ingest_email.store import MailboxStore


class LeaseKeeper(_SharedKeeper):
    """`with LeaseKeeper(...) as lease:` renews every `heartbeat_s`; `lease.check()` raises
    `LeaseLost` once a renewal found another owner (or failed for longer than the TTL)."""

    def __init__(self, store: MailboxStore, key: str, *, heartbeat_s: float, ttl_s: float) -> None:
        super().__init__(
            store.leases,
            key,
            heartbeat_s=heartbeat_s,
            ttl_s=ttl_s,
            on_held=lambda held: LEASE_HELD.labels(key).set(1 if held else 0),
        )
