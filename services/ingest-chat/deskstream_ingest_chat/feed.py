"""Every replica's own read of `tickets.events` and `outbound.chat`, for the sockets it holds.

A visitor's socket lives on one replica, and Kafka cannot know which. So each replica
reads both topics in full, without a consumer group (nothing to commit, no rebalancing),
starting `webchat_window_s` back in time: after a restart it knows every recent
conversation again, so any replica can resume any of them. Only the sockets attached
here are written to; everything else is kept in the hub's bounded state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from deskstream.metrics import Meter

from deskstream_ingest_chat.hub import Hub
from deskstream_ingest_chat.settings import IngestChatSettings

log = logging.getLogger(__name__)


class Feed:
    def __init__(self, settings: IngestChatSettings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.meter = Meter.of(settings)
        self.events_topic = settings.topics.name("tickets.events")
        self.replies_topic = settings.topics.name("outbound.chat")
        self.consumer: AIOKafkaConsumer | None = None
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=f"{self.settings.service_name}-webchat-feed",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",  # the ticket-api publishes in transactions
            max_poll_records=500,
        )
        await consumer.start()
        try:
            await self._assign(consumer)
        except BaseException:
            await consumer.stop()
            raise
        self.consumer = consumer

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        # The consumer's own metadata covers subscribed topics only; a manual assignment
        # needs the partitions from the cluster's full metadata.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [
            TopicPartition(topic, p)
            for topic in (self.events_topic, self.replies_topic)
            for p in sorted(cluster.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            raise RuntimeError("tickets.events / outbound.chat not found")
        consumer.assign(partitions)
        since_ms = int((time.time() - self.settings.webchat_window_s) * 1000)
        found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
        for tp in partitions:
            at = found.get(tp)
            if at is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, at.offset)

    async def stop(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            # With the broker gone, aiokafka's fetcher can end in a CancelledError of its
            # own while stopping; the consumer is closed either way.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await consumer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("feed not started")
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            for tp, records in batch.items():
                self.meter.consumed(tp.topic, len(records))
                for record in records:
                    await self._apply(tp.topic, record.value)
            if not batch:
                self.caught_up.set()

    async def _apply(self, topic: str, value: bytes | None) -> None:
        if value is None:
            return
        try:
            data = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            # Not ours to dead-letter: the topic's own consumers do that; skip it here.
            log.warning("undecodable record on the web-chat feed", extra={"topic": topic})
            return
        if not isinstance(data, dict):
            return
        if topic == self.events_topic:
            await self.hub.ticket_event(data)
        else:
            await self.hub.reply(data)
