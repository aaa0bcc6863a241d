"""K: raw Kafka produce -> consume throughput with the project's own client settings.

The producer is `deskstream.producer.Publisher` (idempotent, acks=all, linger, 256 KB
batches: `producer_config`); every record is handed over first and the acks are gathered
once at the end, as `Publisher.publish_many` does. A consumer set up like the project's
runner (read_committed, `getmany`) reads the same 6-partition registry topic
concurrently. The clock runs from the first send to the last record consumed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from deskstream.producer import Publisher
from deskstream.settings import ServiceSettings
from deskstream.topics import BY_NAME, Topics, ensure_topics

from bench.workload import Inbound

TOPIC = "inbound.email"  # any 6-partition registry topic; nothing consumes it but the bench


async def _consume(consumer: AIOKafkaConsumer, expected: int) -> tuple[int, int, float]:
    """Read until `expected` records arrived; returns records, bytes and the last arrival."""
    count = size = 0
    last = time.perf_counter()
    while count < expected:
        batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
        for msgs in batch.values():
            for m in msgs:
                count += 1
                size += len(m.value or b"") + len(m.key or b"")
        if batch:
            last = time.perf_counter()
    return count, size, last


async def run(*, bootstrap: str, prefix: str, records: list[Inbound]) -> dict[str, Any]:
    await asyncio.to_thread(ensure_topics, bootstrap, prefix)
    topic = Topics(prefix).name(TOPIC)
    settings = ServiceSettings(kafka_bootstrap_servers=bootstrap, service_name="bench-k")
    publisher = Publisher(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await publisher.start()
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(BY_NAME[TOPIC].partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        reader = asyncio.create_task(_consume(consumer, len(records)))
        started = time.perf_counter()
        acks = [await publisher.send_raw(topic, r.key, r.value, r.headers) for r in records]
        handed_over = time.perf_counter()
        await asyncio.gather(*acks)
        acked = time.perf_counter()
        count, size, last = await asyncio.wait_for(reader, timeout=300)
    finally:
        await consumer.stop()
        await publisher.stop()
    wall = last - started
    return {
        "records": count,
        "bytes": size,
        "avg_record_bytes": round(size / max(count, 1)),
        "partitions": BY_NAME[TOPIC].partitions,
        "producer_config": {
            k: v for k, v in publisher._config.items() if k not in {"bootstrap_servers"}
        },
        "send_loop_s": round(handed_over - started, 3),
        "all_acked_s": round(acked - started, 3),
        "end_to_end_s": round(wall, 3),
        "produce_records_per_s": round(count / (acked - started), 1),
        "records_per_s": round(count / wall, 1),
        "mb_per_s": round(size / wall / 1e6, 2),
    }
