"""Every router worker's view of the whole service catalogue (`catalogue.services`, compacted).

The catalogue is small and every stage-1 partition needs all of it, so each worker reads
the compacted topic in full (no consumer group) and follows it; `loaded` is set once the
end offsets seen at start-up are reached, so no request is classified on a partial view.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from deskstream.events import ServiceEntry
from pydantic import ValidationError

log = logging.getLogger(__name__)


class CatalogueView:
    def __init__(self, bootstrap_servers: str, topic: str, partitions: int) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.services: dict[str, ServiceEntry] = {}
        self.loaded = asyncio.Event()

    async def check(self) -> None:
        """Readiness: the catalogue has been read up to where it stood at start-up."""
        if not self.loaded.is_set():
            raise RuntimeError("service catalogue not loaded yet")

    async def run(self) -> None:
        """Follow the topic for the life of the worker, starting over after a failure."""
        delay = 0.5
        while True:
            try:
                await self._follow()
            except KafkaError as exc:
                log.warning(
                    "catalogue reader failed, retrying",
                    extra={"error": repr(exc), "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for messages in batch.values():
                    for m in messages:
                        self._apply(m.key, m.value)
                if not self.loaded.is_set() and all(
                    await asyncio.gather(*(self._reached(consumer, tp, end[tp]) for tp in end))
                ):
                    self.loaded.set()
                    log.info("service catalogue loaded", extra={"services": len(self.services)})
        finally:
            await consumer.stop()

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
        return bool(await consumer.position(tp) >= end)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        service_id = key.decode("utf-8", "replace")
        if value is None:  # a tombstone: the service was removed
            self.services.pop(service_id, None)
            return
        try:
            self.services[service_id] = ServiceEntry.model_validate_json(value)
        except ValidationError as exc:
            log.error(
                "bad catalogue record skipped",
                extra={"service_id": service_id, "error": str(exc)[:300]},
            )
