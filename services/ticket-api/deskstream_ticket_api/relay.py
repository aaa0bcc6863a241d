"""The outbox relay: publishes pending outbox documents in order, exactly once.

Why exactly once, in three parts:

1. *Nothing is lost.* A change and its outbox documents commit in one MongoDB transaction;
   a document stays pending until Kafka acknowledged its record, so a crash anywhere before
   that leaves it pending and a later relay publishes it.
2. *Nothing is published twice by a crash between publish and mark.* On taking over, the
   relay first starts a transactional producer with the installation's fixed
   `transactional.id`: Kafka then completes or aborts whatever transaction an earlier relay
   left open (and fences that producer, should it still live). Only then does it read the
   target topics back (`read_committed`, from `offsets_for_times` of the oldest pending
   document minus a margin, up to the end offsets), collect the `ce_id` headers, and mark
   every pending document it found as published. Everything still pending after that is
   known not to be on Kafka.
3. *Nothing is published twice by two relays.* One relay per installation holds a lease in
   MongoDB; others stand by. A relay that lost its lease (a long pause) stops publishing,
   and its producer is fenced by its successor's, so a late commit of its own fails.

Each batch is one Kafka transaction (publish_many, then commit), then one `update_many`
marks it: no per-record awaits. A mark that fails is retried before anything new is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from deskstream.cloudevents import ce_headers, header
from deskstream.metrics import Meter
from deskstream.producer import OutRecord, Publisher
from deskstream.watchdog import Watchdog
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from deskstream_ticket_api.db import Doc, Store
from deskstream_ticket_api.metrics import FAILURES, PENDING, RECOVERED
from deskstream_ticket_api.outbox import Pending, Waker
from deskstream_ticket_api.settings import TicketApiSettings

log = logging.getLogger(__name__)

LEASE_NAME = "outbox-relay"


class TransactionalPublisher(Publisher):
    """The project's publisher with a fixed `transactional.id`: every batch is one transaction.

    Starting it (`init_transactions`) resolves any transaction a previous holder of the id
    left open and fences that producer; that is what makes the read-back conclusive.
    """

    def __init__(self, settings: TicketApiSettings, transactional_id: str) -> None:
        super().__init__(settings)
        self._config = {**self._config, "transactional_id": transactional_id}

    async def publish_many(self, records: Iterable[OutRecord]) -> None:
        async with self.producer.transaction():
            await super().publish_many(records)

    async def publish_pending(self, pending: Sequence[Pending]) -> None:
        """One transaction for the batch, in outbox order; tombstones keep their place."""
        async with self.producer.transaction():
            run: list[OutRecord] = []
            tombstones = []
            for p in pending:
                if p.value is not None:
                    run.append(p.out_record())
                    continue
                await Publisher.publish_many(self, run)
                run = []
                tombstones.append(
                    await self.producer.send(
                        p.topic,
                        key=p.key.encode() if p.key is not None else None,
                        value=None,
                        headers=ce_headers(
                            event_id=p.event_id, event_type=p.type, source=self.source
                        ),
                    )
                )
            await Publisher.publish_many(self, run)
            if tombstones:
                await asyncio.gather(*tombstones)
                for p in pending:
                    if p.value is None:
                        self.meter.produced(p.topic)


class Lease:
    """A MongoDB lease: one holder at a time, renewed while it works, taken over on expiry."""

    def __init__(self, *, store: Store, name: str, ttl_s: float) -> None:
        self.store = store
        self.name = name
        self.ttl_s = ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._since: float | None = None  # monotonic time of the last successful (re)acquire

    async def acquire(self) -> bool:
        started = time.monotonic()
        now = datetime.now(UTC)
        try:
            await self.store["leases"].find_one_and_update(
                {"_id": self.name, "$or": [{"owner": self.owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": self.owner, "expires_at": now + timedelta(seconds=self.ttl_s)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            # Held by someone else and not expired: the upsert's insert hit the existing _id.
            self._since = None
            return False
        self._since = started
        return True

    def valid(self) -> bool:
        """Held with a safety margin: publishing stops well before the lease could expire."""
        return self._since is not None and time.monotonic() < self._since + self.ttl_s * 0.6

    async def keep(self) -> bool:
        """Renew once a third of the term has passed; False when the lease was lost."""
        if self._since is not None and time.monotonic() < self._since + self.ttl_s / 3:
            return True
        return await self.acquire()

    async def release(self) -> None:
        if self._since is None:
            return
        self._since = None
        await self.store["leases"].update_one(
            {"_id": self.name, "owner": self.owner},
            {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}},
        )


class OutboxRelay:
    def __init__(
        self,
        *,
        store: Store,
        settings: TicketApiSettings,
        waker: Waker,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.store = store
        # Times the read-back and each publish turn (see deskstream.watchdog).
        self.watchdog = watchdog or Watchdog()
        self.settings = settings
        self.waker = waker
        self.lease = Lease(store=store, name=LEASE_NAME, ttl_s=settings.relay_lease_s)
        # One id per installation (topic prefix): a successor's producer fences its predecessor.
        self.transactional_id = f"{settings.topic_prefix}ticket-api-outbox-relay"
        self.active = False
        # Published (Kafka committed) but not yet marked: never sent again, only marked.
        self._unmarked: set[str] = set()
        self._pending_sampled_at = 0.0
        self.meter = Meter.of(settings)

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the lease and publish until `stop`; stand by while another relay holds it."""
        delay = 0.5
        try:
            while not stop.is_set():
                try:
                    if await self.lease.acquire():
                        await self._serve(stop)
                        delay = 0.5
                    else:
                        await _sleep_unless(stop, self.settings.relay_lease_s / 3)
                except (PyMongoError, KafkaError, OSError, TimeoutError) as exc:
                    log.warning(
                        "outbox relay interrupted, retrying",
                        extra={"error": repr(exc), "retry_in_s": delay},
                    )
                    await _sleep_unless(stop, delay)
                    delay = min(delay * 2, 10.0)
                except Exception as exc:
                    # Not a dependency: e.g. an outbox value this version cannot decode. The
                    # relay must not die silently; it says so loudly and tries again, and
                    # the pending gauge shows the backlog growing.
                    FAILURES.inc()
                    log.error(
                        "outbox relay failed, retrying",
                        extra={"error": repr(exc), "retry_in_s": 10.0},
                        exc_info=True,
                    )
                    await _sleep_unless(stop, 10.0)
        finally:
            with contextlib.suppress(PyMongoError):
                await self.lease.release()

    async def _serve(self, stop: asyncio.Event) -> None:
        publisher = TransactionalPublisher(self.settings, self.transactional_id)
        await publisher.start()
        try:
            self.active = True
            self.meter.lease(LEASE_NAME, True)
            log.info("outbox relay active", extra={"owner": self.lease.owner})
            with self.watchdog.step("outbox relay: read-back"):
                await self.recover(publisher)
            while not stop.is_set():
                with self.watchdog.step("outbox relay: publish"):
                    if not await self.lease.keep():
                        log.warning("outbox relay lost its lease; standing by")
                        return
                    sent = await self.publish_once(publisher)
                if sent < self.settings.relay_batch:
                    await self.waker.wait(self.settings.relay_poll_ms / 1000)
        finally:
            self.active = False
            self.meter.lease(LEASE_NAME, False)
            await publisher.stop()

    async def publish_once(self, publisher: TransactionalPublisher) -> int:
        """Publish the oldest pending batch in one Kafka transaction, then mark it."""
        if self._unmarked:
            await self._mark(self._unmarked)
        docs = (
            await self.store["outbox"]
            .find({"published": False})
            .sort("order", ASCENDING)
            .limit(self.settings.relay_batch)
            .to_list()
        )
        self._sample_pending(len(docs))
        if not docs:
            return 0
        if not self.lease.valid():
            return 0  # renew first (the caller's next turn), then publish
        pending = [Pending.from_doc(d) for d in docs]
        await publisher.publish_pending(pending)
        ids = [p.event_id for p in pending]
        self._unmarked.update(ids)
        await self._mark(ids)
        return len(ids)

    async def _mark(self, ids: Iterable[str]) -> None:
        batch = list(ids)
        await self.store["outbox"].update_many(
            {"_id": {"$in": batch}},
            {"$set": {"published": True, "published_at": datetime.now(UTC)}},
        )
        self._unmarked.difference_update(batch)

    async def recover(self, publisher: Publisher) -> int:
        """Mark pending documents whose records already are on Kafka; returns how many."""
        docs = (
            await self.store["outbox"]
            .find(
                {"published": False},
                {"_id": 1, "topic": 1, "key": 1, "order": 1, "created_at": 1, "compacted": 1},
            )
            .sort("order", ASCENDING)
            .to_list()
        )
        if not docs:
            return 0
        started = time.monotonic()
        oldest = min(d["created_at"] for d in docs)
        since_ms = int(oldest.timestamp() * 1000) - self.settings.relay_readback_margin_ms
        wanted = {d["_id"] for d in docs}
        found = await read_back(
            settings=self.settings,
            publisher=publisher,
            topics=sorted({d["topic"] for d in docs}),
            since_ms=max(since_ms, 0),
            wanted=wanted,
        )
        found |= self._unmarked & wanted
        done = found | superseded(docs, found)
        if done:
            await self._mark(done)
            RECOVERED.inc(len(done))
        log.info(
            "outbox read-back done",
            extra={
                "pending": len(docs),
                "already_published": len(found),
                "superseded": len(done) - len(found),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return len(done)

    def _sample_pending(self, seen: int) -> None:
        # A full batch means a backlog; the exact count is not worth a query per batch.
        if seen < self.settings.relay_batch:
            PENDING.set(seen)
        elif time.monotonic() - self._pending_sampled_at > 5:
            self._pending_sampled_at = time.monotonic()
            PENDING.set(seen)


def superseded(docs: Sequence[Doc], found: set[str]) -> set[str]:
    """Pending records on compacted topics older than a record of the same key already out.

    Compaction may have removed such a record, or it was never sent; either way sending it
    now would put an outdated value after the newer one, so it is marked instead.
    """
    newest_out: dict[tuple[str, str | None], int] = {}
    for d in docs:
        if d["_id"] in found and d.get("compacted"):
            k = (d["topic"], d["key"])
            newest_out[k] = max(newest_out.get(k, 0), d["order"])
    return {
        d["_id"]
        for d in docs
        if d.get("compacted")
        and d["_id"] not in found
        and d["order"] < newest_out.get((d["topic"], d["key"]), -1)
    }


async def read_back(
    *,
    settings: TicketApiSettings,
    publisher: Publisher,
    topics: Sequence[str],
    since_ms: int,
    wanted: set[str],
    timeout_s: float = 120.0,
) -> set[str]:
    """The `ce_id`s in `wanted` that are committed on `topics` at or after `since_ms`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-outbox-readback",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",  # aborted (fenced) transactions do not count
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: set[str] = set()
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await publisher.producer.partitions_for(topic))
        ]
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        # Under read_committed the end offset is the last stable offset: nothing is undecided.
        ends = await consumer.end_offsets(tps)
        begin = {}
        for tp in tps:
            start = starts.get(tp)
            if start is not None and start.offset < ends[tp]:
                begin[tp] = start.offset
        if not begin:
            return found
        consumer.assign(list(begin))
        for tp, offset in begin.items():
            consumer.seek(tp, offset)
        live = list(begin)
        deadline = time.monotonic() + timeout_s
        while live:
            fetched = await consumer.getmany(*live, timeout_ms=500, max_records=5000)
            for msgs in fetched.values():
                for m in msgs:
                    ce_id = header(m.headers, "ce_id")
                    if ce_id in wanted:
                        found.add(ce_id)
            live = [tp for tp in live if await consumer.position(tp) < ends[tp]]
            if live and time.monotonic() > deadline:
                raise TimeoutError(f"outbox read-back did not reach the end of {live}")
        return found
    finally:
        await consumer.stop()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
