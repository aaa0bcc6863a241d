"""Publishing inbound chat messages: acknowledged only once Kafka has them, each input once.

Slack retries a delivery it got no 2xx for within 3 s, and a webhook sender or a browser
may resend after a lost answer. The `Ingestor` remembers the dedupe keys it published (and
the ones in flight), so a retry awaits the first publish instead of sending a second record.
Across replicas the memory is not shared: a retry that reaches another replica publishes
the same deterministic event id again, which the router and the ticket-api drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from deskstream.logs import correlation
from deskstream.producer import OutRecord, Publisher
from deskstream.topics import Topics
from prometheus_client import Counter

from deskstream_ingest_chat.outcomes import Publish

log = logging.getLogger(__name__)

INBOUND = Counter(
    "deskstream_chat_inbound_total",
    "Inbound chat inputs by source and outcome (published, duplicate, ignored, rejected)",
    ["source", "outcome"],
)


class NotAcknowledged(Exception):
    """Kafka did not acknowledge in time; the sender should retry (it will be recognised)."""


class Ingestor:
    def __init__(
        self,
        publisher: Publisher,
        topics: Topics,
        *,
        ack_timeout_s: float,
        max_entries: int,
        ttl_s: float,
    ) -> None:
        self._publisher = publisher
        self._topic = topics.name("inbound.chat")
        self._ack_timeout_s = ack_timeout_s
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._done: OrderedDict[str, float] = OrderedDict()
        self._in_flight: dict[str, asyncio.Task[None]] = {}

    async def ingest(self, item: Publish, *, source: str, event_type: str) -> bool:
        """Publish `item` and return once Kafka has it: True if new, False if a duplicate.

        Raises NotAcknowledged when Kafka has not answered within the ack timeout; the
        publish goes on in the background, so a retry finds it in flight or done.
        """
        self._expire()
        key = item.dedupe_key
        if key in self._done:
            INBOUND.labels(source, "duplicate").inc()
            return False
        task = self._in_flight.get(key)
        first = task is None
        if task is None:
            task = asyncio.create_task(self._publish(item, event_type))
            self._in_flight[key] = task
            task.add_done_callback(lambda t, k=key: self._finished(k, t))  # type: ignore[misc]
        try:
            await asyncio.wait_for(asyncio.shield(task), self._ack_timeout_s)
        except TimeoutError:
            raise NotAcknowledged("Kafka has not acknowledged the message yet") from None
        except Exception as exc:  # the producer failed (no broker): the sender retries
            raise NotAcknowledged(f"Kafka did not take the message: {type(exc).__name__}") from exc
        INBOUND.labels(source, "published" if first else "duplicate").inc()
        log.info(
            "published" if first else "published before",
            extra={"source": source, **correlation(item.message)},
        )
        return first

    async def _publish(self, item: Publish, event_type: str) -> None:
        message = item.message
        await self._publisher.publish_many(
            [
                OutRecord(
                    topic=self._topic,
                    key=message.conversation_key,
                    value=message,
                    event_id=message.event_id,
                    event_type=event_type,
                )
            ]
        )

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        self._in_flight.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._done[key] = time.monotonic()
            while len(self._done) > self._max_entries:
                self._done.popitem(last=False)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._ttl_s
        while self._done:
            _, at = next(iter(self._done.items()))
            if at >= cutoff:
                break
            self._done.popitem(last=False)
