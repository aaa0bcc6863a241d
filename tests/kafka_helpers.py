"""Small helpers for tests that talk to the real broker: publish models, collect records."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from deskstream.cloudevents import ce_headers
from pydantic import BaseModel


async def publish(bootstrap: str, topic: str, items: list[tuple[str, BaseModel | None]]) -> None:
    """Publish (key, model) pairs in one batch; None publishes a tombstone."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = []
        for key, model in items:
            value = None if model is None else model.model_dump_json().encode()
            headers = ce_headers(
                event_id=f"test:{uuid.uuid4().hex}", event_type="test", source="/tests"
            )
            futures.append(await producer.send(topic, value, key=key.encode(), headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class Collector:
    """Reads a topic from the beginning in the background; `wait_for` polls what arrived."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            group_id=f"collector-{uuid.uuid4().hex}",
        )
        self.records: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                self.records.extend(msgs)

    async def wait_for(self, predicate: Callable[[list[Any]], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate(self.records)
            if result:
                return result
            await asyncio.sleep(0.2)
        raise AssertionError(f"condition not met within {timeout}s; {len(self.records)} records")


async def roster_reached(
    bootstrap: str, prefix: str, agent_id: str, check: Callable[[dict[str, Any]], bool]
) -> None:
    """Wait until the router's ledger sent a snapshot of `agent_id` that passes `check`."""
    async with Collector(bootstrap, f"{prefix}routing.requests") as internal:
        await internal.wait_for(
            lambda records: any(
                snap["type"] == "agent" and snap["state"]["agent_id"] == agent_id and check(snap)
                for snap in (json.loads(r.value) for r in records)
            )
        )
