"""The pipeline: inbound.* -> router -> tickets.commands -> ticket-api -> MongoDB -> tickets.events.

Each measurement gets a fresh installation — its own topic prefix and database, the
ticket-api and the router started through their production entry points, the demo
organisation loaded through the ticket API — then a warm-up (consumer groups joined, the
roster reached the router), then the measured events, either paced at an offered rate or
all at once (saturation).

Latency per ticket, without polling MongoDB: a `Tracker` follows `tickets.events` (and
`tickets.commands`, for the per-hop split) with `read_committed`. The ticket-api writes a
TicketCreated into its outbox in the same MongoDB transaction as the ticket, and the relay
publishes it only after that transaction committed, so the record's Kafka timestamp
(CreateTime, stamped by the relay's producer when it sends) is an upper bound of the
moment the ticket was persisted. Latency = that timestamp minus the wall-clock time the
bench handed the inbound record to its producer (same host clock). The time the bench
consumed the record is reported too ("seen").
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from deskstream.cloudevents import header
from deskstream.producer import Publisher
from deskstream.settings import ServiceSettings
from deskstream.topics import Topics, ensure_topics
from pymongo import AsyncMongoClient

from bench import services
from bench.infra import REPO, BenchInfra
from bench.report import latency_summary
from bench.workload import Inbound

TICK_S = 0.02  # the paced producer hands over what is due every 20 ms, acks gathered later
STALL_S = 90.0  # no new ticket for this long: the pipeline is stuck, fail
TICKET_API_METRICS = (
    "deskstream_processing_duration_seconds_sum",
    "deskstream_processing_duration_seconds_count",
    "deskstream_events_consumed_total",
    "deskstream_events_produced_total",
    "deskstream_ticket_api_commands_total",
)


def _demo_org() -> Any:
    """deploy/local/demo_org.py, imported by path (deploy/local is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "deskstream_demo_org", REPO / "deploy" / "local" / "demo_org.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Tracker:
    """Per ticket id: Kafka timestamps (ms) of its create command, TicketCreated, decision."""

    bootstrap: str
    topics: Topics
    create_command: dict[str, int] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)
    created_seen: dict[str, float] = field(default_factory=dict)  # bench clock, ms
    decided: dict[str, tuple[str, int]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topics.name("tickets.commands"),
            self.topics.name("tickets.events"),
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",  # only what the relay's transactions committed
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        commands = self.topics.name("tickets.commands")
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            seen = time.time() * 1000
            for tp, msgs in batch.items():
                for m in msgs:
                    # The CloudEvents type header says what it is: no JSON parsing needed.
                    kind = header(m.headers, "ce_type") or ""
                    tid = (m.key or b"").decode()
                    if tp.topic == commands:
                        if kind == "io.deskstream.command.create.v1":
                            self.create_command.setdefault(tid, m.timestamp)
                    elif kind == "deskstream.ticket.created":
                        self.created.setdefault(tid, m.timestamp)
                        self.created_seen.setdefault(tid, seen)
                    elif kind in ("deskstream.ticket.assigned", "deskstream.ticket.queued"):
                        self.decided.setdefault(tid, (kind.rsplit(".", 1)[1], m.timestamp))

    async def wait_for(
        self, what: str, have: Callable[[], int], want: int, alive: Callable[[], None]
    ) -> None:
        """Until have() >= want; fails when nothing moved for STALL_S or a service died."""
        last, moved = -1, time.monotonic()
        while (n := have()) < want:
            alive()
            if n != last:
                last, moved = n, time.monotonic()
            elif time.monotonic() - moved > STALL_S:
                raise RuntimeError(f"{what}: stuck at {n} of {want} for {STALL_S:.0f}s")
            await asyncio.sleep(0.05)


async def _produce(
    publisher: Publisher, topics: Topics, msgs: Sequence[Inbound], rate: float | None
) -> dict[str, float]:
    """Hand every message to the producer (paced or not); gather the acks once at the end.

    Returns the bench-clock send time (ms) per ticket id. The inbound record's own Kafka
    timestamp is stamped inside the same `send` call, from the same clock.
    """
    sent: dict[str, float] = {}
    acks = []

    async def send(m: Inbound) -> None:
        sent[m.ticket_id] = time.time() * 1000
        acks.append(await publisher.send_raw(topics.inbound(m.channel), m.key, m.value, m.headers))

    if rate is None:
        for m in msgs:
            await send(m)
    else:
        started, done = time.monotonic(), 0
        while done < len(msgs):
            due = min(len(msgs), int((time.monotonic() - started) * rate) + 1)
            for m in msgs[done:due]:
                await send(m)
            done = due
            await asyncio.sleep(TICK_S)
    await asyncio.gather(*acks)
    return sent


def changelog_stats(bootstrap: str, prefix: str) -> dict[str, dict[str, int]]:
    """Per router changelog topic: records written and the size of the newest record.

    Faust writes a table key's whole value on every change; the router keeps a team's
    queue inside its `teams` value, so a growing queue makes every write bigger. (Blocking
    kafka-python: its consumer learns every topic's partitions from `topics()`.)
    """
    from kafka import KafkaConsumer
    from kafka import TopicPartition as TP

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    out: dict[str, dict[str, int]] = {}
    try:
        names = sorted(
            t
            for t in consumer.topics()
            if t.startswith(f"{prefix}router-") and t.endswith("-changelog")
        )
        for topic in names:
            tps = [TP(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = consumer.end_offsets(tps)
            newest = 0
            for tp, end in ends.items():
                if not end:
                    continue
                consumer.assign([tp])
                consumer.seek(tp, end - 1)
                for records in consumer.poll(timeout_ms=5000, max_records=1).values():
                    newest = max(newest, *(len(r.value or b"") for r in records))
            out[topic.removeprefix(prefix)] = {
                "records": sum(ends.values()),
                "newest_record_bytes_max": newest,
            }
    finally:
        consumer.close()
    return out


async def _count_tickets(uri: str, database: str) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        return await client[database]["tickets"].count_documents({})
    finally:
        await client.close()


async def run_phase(
    *,
    infra: BenchInfra,
    name: str,
    run_id: str,
    warmup: Sequence[Inbound],
    measured: Sequence[Inbound],
    rate: float | None,
    log_level: str = "WARNING",
) -> dict[str, Any]:
    prefix = f"bench-{run_id}-{name}."
    database = f"bench_{run_id}_{name}".replace("-", "_")
    topics = Topics(prefix)
    await asyncio.to_thread(ensure_topics, infra.kafka, prefix)
    admin_key = secrets.token_urlsafe(24)
    env = {
        **infra.env(),
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka,
        "MONGODB_URI": infra.mongodb_uri,
        "MONGODB_DATABASE": database,
        "DESKSTREAM_TOPIC_PREFIX": prefix,
        "TICKET_API_ADMIN_API_KEY": admin_key,
        # A step (batch, commit, relay turn) hanging this long is logged with where it
        # waits, before the bench's own stall check (STALL_S) gives up on the phase.
        "TICKET_API_STUCK_AFTER_S": str(STALL_S / 2),
        "LOG_LEVEL": log_level,
    }
    logs, work = infra.run_dir / "logs", infra.run_dir / "work"
    started: list[services.Service] = []
    tracker = Tracker(infra.kafka, topics)
    publisher = Publisher(
        ServiceSettings(kafka_bootstrap_servers=infra.kafka, service_name="bench-ingest")
    )
    try:
        api = services.start("ticket-api", env, logs / f"{name}-ticket-api.log", work)
        started.append(api)
        await asyncio.to_thread(services.wait_ready, [api])
        # The roster and catalogue go out through the ticket-api's outbox; the router is
        # ready only once it has read the catalogue, so it starts after the load.
        await asyncio.to_thread(_demo_org().load, api.url, admin_key)
        router = services.start("router", env, logs / f"{name}-router.log", work)
        started.append(router)
        await asyncio.to_thread(services.wait_ready, [router])

        def alive() -> None:
            for s in started:
                if s.proc.poll() is not None:
                    raise RuntimeError(f"{s.name} exited with {s.proc.returncode}; see {s.log}")

        await tracker.start()
        await publisher.start()
        # Warm-up: consumer groups joined, Faust tables and the roster in place.
        await _produce(publisher, topics, warmup, None)
        wids = {m.ticket_id for m in warmup}
        await tracker.wait_for(
            f"{name} warm-up decisions",
            lambda: len(wids & tracker.decided.keys()),
            len(wids),
            alive,
        )

        ids = [m.ticket_id for m in measured]
        want = set(ids)
        cpu = services.CpuMeter(
            {
                "router": router.proc.pid,
                "ticket-api": api.proc.pid,
                "kafka": infra.pid("kafka"),
                "mongo": infra.pid("mongo"),
                "bench": os.getpid(),
            }
        )
        metrics_before = services.scrape(api.url, TICKET_API_METRICS)
        cpu.start()
        t0 = time.time() * 1000
        sent = await _produce(publisher, topics, measured, rate)
        handed_over = time.time() * 1000
        try:
            await tracker.wait_for(
                f"{name} tickets", lambda: len(want & tracker.created.keys()), len(want), alive
            )
        except RuntimeError:
            # Stuck: have the ticket-api log where each of its tasks waits, for the report.
            api.proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(1)
            print(f"  stalled: task dump and logs in {logs}", flush=True)
            raise
        cpu_use = cpu.stop()
        metrics_after = services.scrape(api.url, TICKET_API_METRICS)
        last_seen = max(tracker.created_seen[t] for t in ids)
        wall_s = (last_seen - t0) / 1000
        # Decisions trail the tickets: give them a moment, but do not fail the phase on it.
        try:
            await tracker.wait_for(
                f"{name} decisions", lambda: len(want & tracker.decided.keys()), len(want), alive
            )
        except RuntimeError as exc:
            print(f"  warning: {exc}", flush=True)
    finally:
        await publisher.stop()
        await tracker.stop()
        await asyncio.to_thread(services.stop, [s.proc for s in reversed(started)])

    changelogs = await asyncio.to_thread(changelog_stats, infra.kafka, prefix)
    in_mongo = await _count_tickets(infra.mongodb_uri, database)
    expected = len(warmup) + len(measured)
    if in_mongo != expected:
        raise RuntimeError(
            f"{name}: MongoDB holds {in_mongo} tickets in {database}, expected {expected}"
        )
    decided = {t: tracker.decided[t] for t in ids if t in tracker.decided}
    per_second = [0] * (int(wall_s) + 1)
    for t in ids:
        per_second[min(int((tracker.created_seen[t] - t0) / 1000), len(per_second) - 1)] += 1
    return {
        "prefix": prefix,
        "database": database,
        "events": len(measured),
        "warmup_events": len(warmup),
        "offered_rate": rate,
        "tickets_in_mongodb": in_mongo,
        "send_s": round((handed_over - t0) / 1000, 3),
        "wall_s": round(wall_s, 3),
        "events_per_s": round(len(ids) / wall_s, 1),
        "latency_ms": {
            "persisted": latency_summary([tracker.created[t] - sent[t] for t in ids]),
            "seen": latency_summary([tracker.created_seen[t] - sent[t] for t in ids]),
            "router_hop": latency_summary([tracker.create_command[t] - sent[t] for t in ids]),
            "ticket_api_hop": latency_summary(
                [tracker.created[t] - tracker.create_command[t] for t in ids]
            ),
            "decision": latency_summary([ts - sent[t] for t, (_, ts) in decided.items()]),
            "assigned": latency_summary(
                [ts - sent[t] for t, (k, ts) in decided.items() if k == "assigned"]
            ),
        },
        "decisions": {
            "assigned": sum(1 for k, _ in decided.values() if k == "assigned"),
            "queued": sum(1 for k, _ in decided.values() if k == "queued"),
            "missing": len(ids) - len(decided),
        },
        "cpu_cores": cpu_use,
        "ticket_api_metrics_delta": {
            k: round(v - metrics_before.get(k, 0.0), 3) for k, v in metrics_after.items()
        },
        "router_changelogs": changelogs,
        "completed_per_second": per_second,
    }
