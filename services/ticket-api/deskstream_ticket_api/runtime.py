"""The process's moving parts: MongoDB, the producer, the commands consumer and the outbox relay.

Everything starts in the background and retries until its dependency answers, so the
service comes up (and reports not-ready, with the reason) while MongoDB or Kafka is down,
instead of crash-looping. The consumer and the relay start only after the indexes exist:
the unique indexes are the idempotency guards they rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from deskstream.health import KafkaProbe, Readiness, mongo_probe
from deskstream.lag import GroupLag
from deskstream.lifecycle import BackgroundStart
from deskstream.metrics import Meter
from deskstream.producer import Publisher
from deskstream.runner import BatchRunner
from deskstream.watchdog import Watchdog, dump_tasks_on_sigusr1
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, PyMongoError

from deskstream_ticket_api import auth, commands, ops
from deskstream_ticket_api.db import Doc, Store, ensure_indexes, supports_transactions
from deskstream_ticket_api.outbox import Waker
from deskstream_ticket_api.relay import OutboxRelay
from deskstream_ticket_api.settings import TicketApiSettings

log = logging.getLogger(__name__)

STAGE = "ticket-api"
STOP_TIMEOUT_S = 20.0


class Runtime:
    def __init__(self, settings: TicketApiSettings) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            settings.mongodb_uri.get_secret_value(),
            serverSelectionTimeoutMS=2000,
            socketTimeoutMS=settings.mongodb_socket_timeout_ms,
            tz_aware=True,
        )
        self.store = Store(self.client, self.client[settings.mongodb_database])
        # The plain producer publishes portal requests; the relay has its own transactional
        # one, and the commands runner its own for dead letters and offsets.
        self.publisher = Publisher(settings)
        self.producer = BackgroundStart("kafka producer", self.publisher.start, self.publisher.stop)
        self.waker = Waker()
        # The consumer's batches and the relay's turns; a hang fails /healthz.
        self.watchdog = Watchdog(stuck_after_s=settings.stuck_after_s)
        self.relay = (
            OutboxRelay(
                store=self.store, settings=settings, waker=self.waker, watchdog=self.watchdog
            )
            if settings.relay_enabled
            else None
        )
        # Lag of other services' groups for GET /v1/ops/status (asked only on request).
        self.group_lag = GroupLag(settings.kafka_bootstrap_servers, settings.service_name)
        self.store_problem: str | None = "store not initialised yet"
        self.consumer_running = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: asyncio.Task[None] | None = None

        self.readiness = Readiness(meter=Meter.of(settings))
        self.readiness.add("mongodb", mongo_probe(self.client), connection="mongodb")
        self.kafka_probe = KafkaProbe(settings.kafka_bootstrap_servers, settings.service_name)
        self.readiness.add("kafka", self.kafka_probe, connection="kafka")
        self.readiness.add("producer", self.producer.check)
        self.readiness.add("store", self._store_check)
        if settings.consumer_enabled:
            self.readiness.add("commands consumer", self._consumer_check)

    async def _store_check(self) -> None:
        if self.store_problem is not None:
            raise RuntimeError(self.store_problem)

    async def _consumer_check(self) -> None:
        if not self.consumer_running:
            raise RuntimeError("tickets.commands consumer not running")

    async def start(self) -> None:
        self._stop.clear()
        dump_tasks_on_sigusr1()
        self._watch = asyncio.create_task(self.watchdog.watch(), name="watchdog")
        self.producer.begin()
        self._tasks.append(asyncio.create_task(self._init_then_work(), name="ticket-api-init"))

    async def stop(self) -> None:
        self._stop.set()
        self.waker.wake()
        if self._watch is not None:
            self._watch.cancel()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            for task in late:
                log.warning("task did not stop in time", extra={"task": task.get_name()})
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._tasks.clear()
        await self.producer.close()
        await self.kafka_probe.close()
        await self.group_lag.close()
        await self.client.close()

    async def _init_then_work(self) -> None:
        if not await self._init_store():
            return
        workers = []
        if self.settings.consumer_enabled:
            workers.append(asyncio.create_task(self._run_commands(), name="commands-consumer"))
        if self.relay is not None:
            workers.append(asyncio.create_task(self.relay.run(self._stop), name="outbox-relay"))
        if self.settings.ops_refresh_s > 0:
            workers.append(
                asyncio.create_task(
                    ops.refresh_every(
                        db=self.store.db,
                        interval_s=self.settings.ops_refresh_s,
                        warn_fraction=self.settings.sla_warn_fraction,
                        stop=self._stop,
                    ),
                    name="ops-metrics",
                )
            )
        if workers:
            await asyncio.gather(*workers)

    async def _init_store(self) -> bool:
        delay = 0.5
        while not self._stop.is_set():
            try:
                if not await supports_transactions(client=self.client):
                    self.store_problem = (
                        "MongoDB runs standalone: the outbox needs transactions; "
                        "run a replica set (one member is enough) or mongos"
                    )
                    log.error(self.store_problem)
                    return False
                await ensure_indexes(db=self.store.db)
                await auth.store_bootstrap_admin(db=self.store.db, key=self.settings.admin_api_key)
                self.store_problem = None
                return True
            except PyMongoError as exc:
                self.store_problem = f"store not initialised yet: {type(exc).__name__}"
                log.warning("waiting for MongoDB", extra={"error": repr(exc)})
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
        return False

    async def _run_commands(self) -> None:
        """Run the tickets.commands consumer; start a fresh one if it ever fails."""
        delay = 0.5
        while not self._stop.is_set():
            runner = BatchRunner(
                settings=self.settings,
                stage=STAGE,
                topics=[self.topics.name("tickets.commands")],
                group_id=f"{self.settings.topic_prefix}ticket-api-commands",
                handler=commands.handler(
                    store=self.store,
                    topics=self.topics,
                    waker=self.waker,
                    chunk=self.settings.command_chunk,
                ),
                max_batch=self.settings.command_batch,
                max_wait_ms=self.settings.command_wait_ms,
                # A MongoDB outage pauses consumption; the batch is retried once it is back.
                transient=(ConnectionFailure,),
                watchdog=self.watchdog,
            )
            try:
                await runner.start()
            except Exception as exc:  # Kafka not reachable yet: retry with a new runner
                log.warning("commands consumer cannot start", extra={"error": repr(exc)})
                with contextlib.suppress(Exception):
                    await runner.consumer.stop()
                with contextlib.suppress(Exception):
                    await runner.producer.stop()
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.consumer_running = True
            try:
                await self._until_stopped(runner)
                delay = 0.5
            except Exception as exc:  # the runner died; a new one resumes from the commits
                log.error("commands consumer failed; restarting", extra={"error": repr(exc)})
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                self.consumer_running = False

    async def _until_stopped(self, runner: BatchRunner) -> None:
        run = asyncio.create_task(runner.run())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not run.done():
            runner.stop()  # finish the batch in hand and commit it
            try:
                await asyncio.wait_for(asyncio.shield(run), STOP_TIMEOUT_S - 2)
            except TimeoutError:
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
            return
        run.result()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
