"""Idempotent producing: one configuration for every producer, batched sends, CloudEvents headers.

`Publisher.publish_many` hands a whole batch to the producer and awaits the acks together:
the producer's linger fills Kafka batches, and the caller pays one round trip, not one per
record. The synchronous `sync_producer` (kafka-python) exists only for the IMAP worker,
whose client library is blocking. Both count what Kafka acknowledged
(`deskstream_events_produced_total`), once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber, UnknownProducerId
from pydantic import BaseModel

from deskstream.cloudevents import Headers, ce_headers
from deskstream.events import (
    AppendMessage,
    AssignTicket,
    CreateTicket,
    DeflectTicket,
    DeliveryResult,
    QueueTicket,
)
from deskstream.ids import event_id
from deskstream.metrics import Meter, channel_of, channel_of_topic
from deskstream.topics import DEAD_LETTER_MAX_BYTES

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from deskstream.settings import ServiceSettings


AnyCommand = (
    CreateTicket | AppendMessage | AssignTicket | QueueTicket | DeflectTicket | DeliveryResult
)


class PublishFailed(Exception):
    """Kafka did not acknowledge every record; the source must not be acknowledged."""


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=False).encode("utf-8")


@dataclass(frozen=True)
class OutRecord:
    """One record to publish: the model is encoded, the CloudEvents headers derived."""

    topic: str
    key: str | None
    value: BaseModel
    event_id: str
    event_type: str
    extra_headers: Headers | None = None


def producer_config(settings: ServiceSettings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.service_name,
        "enable_idempotence": True,  # retries never duplicate or reorder within a partition
        "acks": "all",
        "linger_ms": settings.kafka_linger_ms,
        "max_batch_size": 256 * 1024,
        "max_request_size": DEAD_LETTER_MAX_BYTES,  # a dead letter of a ~1 MB record
        "request_timeout_ms": 30_000,
    }


log = logging.getLogger(__name__)

# An idempotent producer whose broker lost its sequence state (a broker restart with
# batches in flight) gets these for every later send: it is wedged until replaced.
PRODUCER_STATE_LOST = (OutOfOrderSequenceNumber, UnknownProducerId)


class Publisher:
    """An `AIOKafkaProducer` with the project's settings and a batched publish.

    A producer whose state the broker lost is replaced by a fresh one (a new producer id);
    the publish that met it fails, so its caller answers or retries as for any failure.
    (Seen after a 30-second broker outage: ingest-chat answered 503 to every webhook,
    "OutOfOrderSequenceNumber", until restarted.)
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.source = f"/deskstream/{settings.service_name}"
        self.meter = Meter.of(settings)
        self._config = producer_config(settings)
        self._producer: AIOKafkaProducer | None = None
        self._renewing = asyncio.Lock()

    async def _renew(self, wedged: Any, error: BaseException) -> None:
        stop_wedged = wedged.stop
        async with self._renewing:
            if self._producer is not wedged:
                return  # another publish replaced it already
            log.warning(
                "the broker lost this producer's state; starting a fresh producer",
                extra={"error": repr(error)[:200]},
            )
            self._producer = None
            with contextlib.suppress(Exception):
                await stop_wedged()
            await self.start()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("publisher not started")
        return self._producer

    async def start(self) -> None:
        # aiokafka binds a producer to the running loop, so it is made here, not in __init__.
        producer = AIOKafkaProducer(**self._config)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish_many(self, records: Iterable[OutRecord]) -> None:
        """Send every record, then wait for all acks; raises if any send failed."""
        records = list(records)
        producer = self.producer
        try:
            futures = [
                await producer.send(
                    r.topic,
                    key=r.key.encode("utf-8") if r.key is not None else None,
                    value=encode(r.value),
                    headers=ce_headers(
                        event_id=r.event_id, event_type=r.event_type, source=self.source
                    )
                    + (r.extra_headers or []),
                )
                for r in records
            ]
            if futures:
                await asyncio.gather(*futures)
        except PRODUCER_STATE_LOST as exc:
            if not self._config.get("transactional_id"):  # a transactional one restarts whole
                await self._renew(producer, exc)
            raise
        if futures:
            self.meter.produced_each(
                (r.topic, channel_of(r.value) or channel_of_topic(self.meter.bare(r.topic)))
                for r in records
            )

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = await self.producer.send(
            topic, key=key, value=value, headers=headers
        )
        return fut


def sync_producer(settings: ServiceSettings) -> KafkaProducer:
    """A blocking idempotent producer (kafka-python) for the IMAP worker's threads."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=settings.service_name,
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.kafka_linger_ms,
        retries=2**31 - 1,
        max_request_size=DEAD_LETTER_MAX_BYTES,
    )


class ProducerHolder:
    """One thread-safe synchronous producer shared by a service's worker threads.

    Made on first use, so a worker started while Kafka is down backs off and retries
    instead of the whole service failing at start.
    """

    def __init__(self, factory: Callable[[], KafkaProducer], meter: Meter | None = None) -> None:
        self._factory = factory
        self._meter = meter
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = self._factory()
            return self._producer

    def close(self, timeout_s: float = 10) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout_s)
                self._producer = None

    def send_all(
        self, records: Sequence[tuple[str, bytes | None, bytes, Headers]], timeout_s: float
    ) -> None:
        """Send (topic, key, value, headers) records; return once Kafka acknowledged them all.

        One flush for the whole batch. Raises `PublishFailed` when any record was not
        acknowledged, so the caller acknowledges nothing at its source.
        """
        if not records:
            return
        try:
            producer = self.get()
            futures = [
                producer.send(topic, key=key, value=value, headers=headers)
                for topic, key, value, headers in records
            ]
            producer.flush(timeout=timeout_s)
        except Exception as exc:  # no broker, a timeout: the batch is sent again as a whole
            raise PublishFailed(f"batch not published: {exc!r}") from exc
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first: Any = failed[0].exception if failed[0].is_done else "not acknowledged"
            raise PublishFailed(f"{len(failed)} of {len(futures)} records failed: {first!r}")
        if self._meter is not None:
            self._meter.produced_each((topic, None) for topic, _, _, _ in records)


DELIVERY_DETAIL_MAX = DeliveryResult.model_fields["detail"].metadata[0].max_length


def delivery_result(
    channel: str,
    *,
    reply_id: str,
    ticket_id: str,
    delivered: bool,
    detail: str,
    id_parts: tuple[str, ...] = (),
) -> DeliveryResult:
    """What became of an agent's reply, for `tickets.commands`.

    Its command id derives from the channel and the reply (and `id_parts`), so a result
    reported again after a redelivery is applied once; `detail` is cut to what the
    command holds.
    """
    return DeliveryResult(
        command_id=event_id(f"{channel}-delivery", reply_id, *id_parts),
        ticket_id=ticket_id,
        reply_id=reply_id,
        delivered=delivered,
        detail=detail[:DELIVERY_DETAIL_MAX],
    )


def command_event_type(command: AnyCommand) -> str:
    return f"io.deskstream.command.{command.type}.v1"


def command_record(commands_topic: str, command: AnyCommand) -> OutRecord:
    """A ticket command for `tickets.commands`: keyed by its ticket, its id the event id."""
    return OutRecord(
        topic=commands_topic,
        key=command.ticket_id,
        value=command,
        event_id=command.command_id,
        event_type=command_event_type(command),
    )
