"""ingest-social: X mentions and DMs into `inbound.social`; replies from `outbound.social` to X.

tweepy's synchronous `Client` (requests) is used on both sides: the poller runs in a
thread of its own, like ingest-email's IMAP workers, sharing the synchronous lease and
producer built for such threads; the replier is the shared async `BatchRunner`, whose
handler runs each (blocking) X call in a worker thread. One client library, one way of
pointing it at a base URL (xclient.py), and no second HTTP stack for the same API.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError
from deskstream.events import Channel
from deskstream.health import KafkaProbe, Readiness
from deskstream.lease import LeaseStore
from deskstream.lifecycle import start_with_retry
from deskstream.metrics import Meter
from deskstream.producer import ProducerHolder, Publisher, sync_producer
from deskstream.runner import BatchRunner
from deskstream.service import run_worker
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from deskstream_ingest_social.delivery import Replier
from deskstream_ingest_social.poller import ENDPOINT, AccountPoller
from deskstream_ingest_social.publish import STAGE, PagePublisher
from deskstream_ingest_social.settings import IngestSocialSettings
from deskstream_ingest_social.state import XState
from deskstream_ingest_social.xclient import make_client

log = logging.getLogger("deskstream_ingest_social")


def mongo_client(settings: IngestSocialSettings) -> MongoClient[dict[str, Any]]:
    return MongoClient(
        settings.mongodb_uri.get_secret_value(),
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        appname=settings.service_name,
    )


def build_poller(
    settings: IngestSocialSettings,
    mongo: MongoClient[dict[str, Any]],
    producers: ProducerHolder,
    state: XState,
    stop: threading.Event,
) -> AccountPoller:
    db = mongo[settings.mongodb_database]
    return AccountPoller(
        settings=settings,
        client=make_client(settings),
        store=LeaseStore(
            db[settings.state_collection], owner=settings.instance_id, ttl_s=settings.lease_ttl_s
        ),
        publisher=PagePublisher(
            producers,
            settings.topics,
            source=f"/deskstream/{settings.service_name}",
            endpoint=lambda kind: f"x:{ENDPOINT[kind]}",
            flush_timeout_s=settings.kafka_flush_timeout_s,
        ),
        sources=db[settings.sources_collection],
        state=state,
        stop=stop,
    )


async def serve(settings: IngestSocialSettings) -> None:
    mongo = mongo_client(settings)
    db = mongo[settings.mongodb_database]
    meter = Meter.of(settings)
    producers = ProducerHolder(lambda: sync_producer(settings), meter=meter)
    state = XState(meter)
    stop_threads = threading.Event()
    if settings.x_enabled:
        poller = build_poller(settings, mongo, producers, state, stop_threads)
        target: Callable[[], object] = poller.run
    else:
        target = stop_threads.wait  # nothing to poll: the thread only waits for the stop
    thread = threading.Thread(target=target, name=f"x-{settings.x_user_id}", daemon=True)

    async def poller_alive() -> None:
        if thread.ident is not None and not thread.is_alive():
            raise RuntimeError("the X poller thread stopped")

    if not settings.x_enabled:
        log.warning(
            "no X account configured (INGEST_SOCIAL_X_USER_ID): polling nothing, and replies "
            "on outbound.social are reported undelivered"
        )

    readiness = Readiness(meter=meter)
    readiness.add(
        "kafka",
        KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name),
        connection="kafka",
    )
    readiness.add(
        "mongodb", lambda: asyncio.to_thread(mongo.admin.command, "ping"), connection="mongodb"
    )
    readiness.add("x", state.check)
    readiness.add("poller", poller_alive)

    async def body(stop: asyncio.Event) -> None:
        thread.start()
        publisher = Publisher(settings)
        try:
            if not await start_with_retry(publisher.start, "kafka producer", stop):
                return
            replier = Replier(
                settings=settings,
                client=make_client(settings) if settings.x_enabled else None,
                sources=db[settings.sources_collection],
                deliveries=db[settings.deliveries_collection],
                publisher=publisher,
                state=state,
                stop=stop_threads,
            )
            runner = BatchRunner(
                settings=settings,
                stage=STAGE,
                topics=[settings.topics.outbound(Channel.SOCIAL)],
                group_id=f"{settings.topic_prefix}{settings.reply_group_id}",
                handler=replier.handle,
                max_batch=50,
                transient=(KafkaError, PyMongoError),
            )
            if not await start_with_retry(runner.start, "reply consumer", stop):
                return
            task = asyncio.create_task(runner.run())
            await stop.wait()
            # Threads first: a reply waiting out a back-off is reported at once (see
            # delivery.py) instead of holding the stop for up to a rate-limit window.
            stop_threads.set()
            runner.stop()
            await task
        finally:
            # The poller finishes its page, publishes it and releases the lease.
            stop_threads.set()
            await asyncio.to_thread(thread.join, 30)
            await publisher.stop()
            await asyncio.to_thread(producers.close, 5)
            await asyncio.to_thread(mongo.close)

    await run_worker(settings, readiness, body)


def main() -> None:
    asyncio.run(serve(IngestSocialSettings()))


if __name__ == "__main__":
    main()
