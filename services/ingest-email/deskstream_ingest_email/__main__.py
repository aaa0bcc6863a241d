"""ingest-email: turns mail in IMAP mailboxes into `InboundMessage`s on `inbound.email`.

The IMAP client is blocking, so each configured mailbox gets a worker thread; they share
one synchronous (kafka-python) producer and one PyMongo client for checkpoints and leases.
The asyncio side serves the ops routes and runs the reply sender (`outbound.email` -> SMTP,
see outbound.py) until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from functools import partial
from typing import Any

from deskstream.health import KafkaProbe, Readiness
from deskstream.metrics import Meter
from deskstream.producer import ProducerHolder, sync_producer
from deskstream.service import run_worker
from pymongo import MongoClient

from deskstream_ingest_email.classify import ClassifyContext
from deskstream_ingest_email.normalise import NormaliseConfig
from deskstream_ingest_email.outbound import ReplyService
from deskstream_ingest_email.publish import BatchPublisher
from deskstream_ingest_email.settings import IngestEmailSettings, Mailbox
from deskstream_ingest_email.smtp_send import probe
from deskstream_ingest_email.store import MailboxStore
from deskstream_ingest_email.worker import MailboxWorker, connect

log = logging.getLogger("deskstream_ingest_email")


def imap_login(mailbox: Mailbox) -> None:
    connect(mailbox, 5).logout()


def mongo_client(settings: IngestEmailSettings) -> MongoClient[dict[str, Any]]:
    return MongoClient(
        settings.mongodb_uri.get_secret_value(),
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        appname=settings.service_name,
    )


def build_workers(
    settings: IngestEmailSettings,
    mongo: MongoClient[dict[str, Any]],
    producers: ProducerHolder,
    stop: threading.Event,
) -> list[MailboxWorker]:
    store = MailboxStore(
        mongo[settings.mongodb_database][settings.state_collection],
        owner=settings.instance_id,
        ttl_s=settings.lease_ttl_s,
    )
    publisher = BatchPublisher(
        producers,
        settings.topics,
        source=f"/deskstream/{settings.service_name}",
        flush_timeout_s=settings.kafka_flush_timeout_s,
    )
    config = NormaliseConfig(
        attachment_limit=settings.attachment_limit_bytes,
        classify=ClassifyContext(
            own_addresses=settings.own_addresses(),
            allowed_list_ids=frozenset(i.lower() for i in settings.allowed_list_ids),
        ),
    )
    return [
        MailboxWorker(
            mailbox=mailbox,
            settings=settings,
            store=store,
            publisher=publisher,
            config=config,
            stop=stop,
        )
        for mailbox in settings.resolved_mailboxes()
    ]


async def serve(settings: IngestEmailSettings) -> None:
    mongo = mongo_client(settings)
    meter = Meter.of(settings)
    producers = ProducerHolder(lambda: sync_producer(settings), meter=meter)
    stop_workers = threading.Event()
    workers = build_workers(settings, mongo, producers, stop_workers)
    threads = [
        threading.Thread(target=w.run, name=f"mailbox-{w.key}", daemon=True) for w in workers
    ]

    async def workers_alive() -> None:
        dead = [t.name for t in threads if t.ident is not None and not t.is_alive()]
        if dead:
            raise RuntimeError(f"worker thread(s) stopped: {', '.join(dead)}")

    readiness = Readiness(meter=meter)
    readiness.add(
        "kafka",
        KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name),
        connection="kafka",
    )
    for mailbox in settings.resolved_mailboxes():
        readiness.add(f"imap:{mailbox.key}", partial(asyncio.to_thread, imap_login, mailbox))
    readiness.add(
        "mongodb", lambda: asyncio.to_thread(mongo.admin.command, "ping"), connection="mongodb"
    )
    readiness.add("workers", workers_alive)
    replies = ReplyService(settings) if settings.replies_enabled else None
    if replies is not None:
        readiness.add("smtp", partial(asyncio.to_thread, probe, replies.smtp))

    async def body(stop: asyncio.Event) -> None:
        for thread in threads:
            thread.start()
        sender = asyncio.create_task(replies.run(stop)) if replies is not None else None
        try:
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {stopped, *([sender] if sender else [])}, return_when=asyncio.FIRST_COMPLETED
            )
            stopped.cancel()
            if sender is not None and sender.done() and not stop.is_set():
                # The reply sender failed: exit non-zero rather than look healthy without it.
                sender.result()
                raise RuntimeError("the reply sender stopped")
        finally:
            # Workers finish their batch, acknowledge it and release their leases.
            stop_workers.set()
            for thread in threads:
                await asyncio.to_thread(thread.join, 20)
            if sender is not None:
                stop.set()
                with contextlib.suppress(Exception):
                    await sender  # finishes its batch and commits it
            await asyncio.to_thread(producers.close, 5)
            await asyncio.to_thread(mongo.close)

    await run_worker(settings, readiness, body)


def main() -> None:
    asyncio.run(serve(IngestEmailSettings()))


if __name__ == "__main__":
    main()
