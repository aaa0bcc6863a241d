"""The one Kafka consumer runner: consume -> batch -> handle -> commit, with a dead-letter topic.

After a batch is handled, its dead letters and its consumed offsets go to Kafka in one
transaction: a crash before that commit leaves neither (the batch is handed over again),
after it both — so the dead-letter topic holds each poisoned record exactly once.

Contract for handlers (`async def handle(records) -> None`):
- Handling must be idempotent on the records' event ids: a batch is handed over again after
  a crash or a rebalance, because offsets are committed only after the handler returned.
- Raise `PoisonRecords({index: error})` for records that can never be processed (after
  handling the rest); they go to `deadletter.<stage>` with their original bytes.
- Raise a transient error (`TransientError`, or a type listed in `transient`) when a
  dependency is down: the runner pauses its partitions (no fetching, so no unbounded
  buffer), backs off, and hands the same batch over again until it succeeds.
- Any other exception is narrowed down by splitting the batch in halves; a single record
  that keeps failing `max_attempts` times is dead-lettered with the error and the count.

Metrics (deskstream.metrics), counted once per committed batch: records consumed per topic,
dead letters by reason, the batch's handling time and its records' ages, retries; and the
consumer lag of every assigned partition, read from the consumer's own fetch state (last
stable offset minus position) at most once a second: no broker call of its own.

With a `Watchdog`, each handling attempt and each commit is a timed step: one that hangs is
logged with where it waits and fails the service's `/healthz` (deskstream.watchdog).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from pydantic import BaseModel, ValidationError

from deskstream.cloudevents import header
from deskstream.events import DeadLetter
from deskstream.logs import event_context
from deskstream.metrics import Meter
from deskstream.producer import encode, producer_config
from deskstream.settings import ServiceSettings
from deskstream.watchdog import Watchdog

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
LAG_SAMPLE_S = 1.0


class TransientError(Exception):
    """A dependency is unavailable; the same batch will be retried after a pause."""


class PoisonRecords(Exception):
    """These records (index in the batch -> error) can never be processed."""

    def __init__(self, failures: dict[int, BaseException]) -> None:
        super().__init__(f"{len(failures)} poison record(s)")
        self.failures = failures


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp_ms: int

    def decode(self, model: type[M]) -> M:
        """The value as `model`; raises ValueError naming the problem if it is not one."""
        if self.value is None:
            raise ValueError("record has no value (tombstone)")
        return model.model_validate_json(self.value)


Handler = Callable[[list[Record]], Awaitable[None]]


def dead_letter_for(
    record: Record, *, stage: str, error: BaseException, attempts: int
) -> DeadLetter:
    """The dead-letter record of `record`: its original bytes, key, headers and the reason."""
    return DeadLetter(
        stage=stage,
        reason=str(error)[:4000] or type(error).__name__,
        error_type=type(error).__name__,
        attempts=attempts,
        original_topic=record.topic,
        original_partition=record.partition,
        original_offset=record.offset,
        original_key_b64=DeadLetter.b64(record.key),
        original_value_b64=DeadLetter.b64(record.value) or "",
        original_headers=[(k, DeadLetter.b64(v) or "") for k, v in record.headers],
        event_id=header(record.headers, "ce_id"),
    )


def decode_all(
    records: Sequence[Record], model: type[M]
) -> tuple[list[tuple[int, M]], dict[int, BaseException]]:
    """Decode a batch: the good ones with their index, and the failures for `PoisonRecords`."""
    good: list[tuple[int, M]] = []
    bad: dict[int, BaseException] = {}
    for i, record in enumerate(records):
        try:
            good.append((i, record.decode(model)))
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            bad[i] = exc
    return good, bad


class BatchRunner:
    def __init__(
        self,
        *,
        settings: ServiceSettings,
        stage: str,
        topics: Sequence[str],
        group_id: str,
        handler: Handler,
        max_batch: int = 500,
        max_wait_ms: int = 200,
        max_attempts: int = 3,
        transient: tuple[type[BaseException], ...] = (),
        backoff_max_s: float = 10.0,
        step: str | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.stage = stage
        self.topics = list(topics)
        self.meter = Meter.of(settings)
        # The metrics' step: what this runner consumes, by registry name.
        self.step = step or ",".join(self.meter.bare(t) for t in self.topics)
        self.handler = handler
        # Times each handling attempt and each commit (see deskstream.watchdog).
        self.watchdog = watchdog or Watchdog()
        self.group_id = group_id
        self.dlq_topic = settings.topics.deadletter(stage)
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.max_attempts = max_attempts
        self.transient = (TransientError, KafkaConnectionError, *transient)
        self.backoff_max_s = backoff_max_s
        self.consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=group_id,
            client_id=f"{settings.service_name}-{stage}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=max_batch,
        )
        # Dead letters and offsets are committed in one transaction (see module docstring).
        self.producer = AIOKafkaProducer(
            **producer_config(settings),
            transactional_id=f"{group_id}-{stage}-{uuid.uuid4().hex[:12]}",
        )
        self._stopping = asyncio.Event()
        self._letters: list[DeadLetter] = []
        self._letter_keys: list[bytes | None] = []
        self._letter_headers: list[list[tuple[str, bytes]]] = []
        self._lag_sampled_at = 0.0
        self._lag_reported: set[TopicPartition] = set()
        self.batches_done = 0

    async def start(self) -> None:
        await self.producer.start()
        try:
            await self.consumer.start()
        except BaseException:
            await self.producer.stop()
            raise

    def stop(self) -> None:
        """Finish the batch in hand, commit it, and return from `run()`."""
        self._stopping.set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                fetched = await self.consumer.getmany(
                    timeout_ms=self.max_wait_ms, max_records=self.max_batch
                )
                records = [
                    Record(
                        m.topic, m.partition, m.offset, m.key, m.value, m.headers or (), m.timestamp
                    )
                    for msgs in fetched.values()
                    for m in msgs
                ]
                if records:
                    started = time.monotonic()
                    await self._handle_until_done(records)
                    await self._commit(records)
                    self.meter.handled(
                        self.step,
                        ((r.topic, r.timestamp_ms) for r in records),
                        time.monotonic() - started,
                    )
                    self.batches_done += 1
                await self._sample_lag()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def _sample_lag(self) -> None:
        """Lag per assigned partition from the consumer's fetch state; at most once a second.

        The last stable offset (read_committed) and the position are what the consumer
        already knows from its fetches; `position` returns at once for a partition that
        has been fetched, so this asks the broker nothing.
        """
        now = time.monotonic()
        if now - self._lag_sampled_at < LAG_SAMPLE_S:
            return
        self._lag_sampled_at = now
        assigned = self.consumer.assignment()
        for tp in self._lag_reported - assigned:
            self.meter.forget_lag(self.group_id, tp.topic, tp.partition)
        self._lag_reported &= assigned
        for tp in assigned:
            end = self.consumer.last_stable_offset(tp)
            if end is None or end < 0:
                end = self.consumer.highwater(tp)
            if end is None:
                continue  # not fetched yet: nothing known without asking the broker
            try:
                position = await self.consumer.position(tp)
            except IllegalStateError:
                continue  # revoked meanwhile (a rebalance): its new owner reports it
            self.meter.lag(self.group_id, tp.topic, tp.partition, end - position)
            self._lag_reported.add(tp)

    async def _commit(self, records: Sequence[Record]) -> None:
        """Publish the batch's dead letters and commit its offsets, atomically."""
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            offsets[TopicPartition(r.topic, r.partition)] = r.offset + 1
        delay = 0.2
        while True:
            try:
                with self.watchdog.step(f"{self.stage}: commit"):
                    await self._commit_once(offsets)
                break
            except KafkaError as exc:
                # The transaction was aborted: nothing of it is visible; try it again.
                log.warning(
                    "commit failed, retrying",
                    extra={"stage": self.stage, "error": repr(exc), "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
        for letter in self._letters:
            self.meter.dead_letter(letter.error_type)
        if self._letters:
            self.meter.produced(self.dlq_topic, len(self._letters))
        self._letters, self._letter_keys, self._letter_headers = [], [], []

    async def _commit_once(self, offsets: dict[TopicPartition, int]) -> None:
        async with self.producer.transaction():
            for letter, key, headers in zip(
                self._letters, self._letter_keys, self._letter_headers, strict=True
            ):
                await self.producer.send(
                    self.dlq_topic, key=key, value=encode(letter), headers=headers
                )
            await self.producer.send_offsets_to_transaction(
                {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()}, self.group_id
            )

    async def _handle_until_done(self, records: list[Record]) -> None:
        """Handle the batch, retrying transient failures with pauses until it goes through."""
        delay = 0.2
        while True:
            try:
                with self.watchdog.step(f"{self.stage}: handle {len(records)} records"):
                    await self._handle(records, attempts={})
                return
            except self.transient as exc:
                self._letters, self._letter_keys, self._letter_headers = [], [], []
                log.warning(
                    "dependency unavailable, pausing consumption",
                    extra={"stage": self.stage, "error": repr(exc), "retry_in_s": delay},
                )
                self.meter.retried(self.step)
                partitions = self.consumer.assignment()
                self.consumer.pause(*partitions)
                try:
                    await asyncio.sleep(delay)
                finally:
                    self.consumer.resume(
                        *[p for p in partitions if p in self.consumer.assignment()]
                    )
                delay = min(delay * 2, self.backoff_max_s)

    async def _handle(
        self, records: list[Record], attempts: dict[tuple[str, int, int], int]
    ) -> None:
        try:
            await self.handler(records)
        except self.transient:
            raise
        except PoisonRecords as poison:
            await self.dead_letter([(records[i], exc, 1) for i, exc in poison.failures.items()])
        except Exception as exc:
            if len(records) > 1:
                # Narrow the failure down: the good half goes through, the bad half splits on.
                mid = len(records) // 2
                await self._handle(records[:mid], attempts)
                await self._handle(records[mid:], attempts)
                return
            only = records[0]
            key = (only.topic, only.partition, only.offset)
            attempts[key] = attempts.get(key, 0) + 1
            if attempts[key] < self.max_attempts:
                await self._handle(records, attempts)
            else:
                await self.dead_letter([(records[0], exc, attempts[key])])

    async def dead_letter(self, failures: Sequence[tuple[Record, BaseException, int]]) -> None:
        """Queue the failed records, with their original bytes and the reason, for the commit."""
        for record, exc, attempts in failures:
            letter = dead_letter_for(record, stage=self.stage, error=exc, attempts=attempts)
            with event_context(event_id=letter.event_id):
                log.error(
                    "record dead-lettered",
                    extra={
                        "stage": self.stage,
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "error_type": letter.error_type,
                        "error": letter.reason[:300],
                        "attempts": attempts,
                    },
                )
            self._letters.append(letter)
            self._letter_keys.append(record.key)
            self._letter_headers.append(list(record.headers))


async def run_until_stopped(runner: BatchRunner, stop: asyncio.Event) -> Any:
    """Run `runner` until `stop` is set (e.g. by SIGTERM), then let it finish its batch."""
    await runner.start()
    task = asyncio.create_task(runner.run())
    await stop.wait()
    runner.stop()
    return await task
