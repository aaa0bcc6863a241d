"""The runner's contract under a real crash: effects exactly once, dead letters exactly once."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from deskstream.events import DeadLetter

from tests.conftest import Infra

HERE = Path(__file__).resolve().parent
TOTAL = 10_000


async def committed_total(infra: Infra, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset > 0)


async def read_all(infra: Infra, topic: str, expected: int, timeout: float) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        quiet_until = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            got += [m for msgs in batch.values() for m in msgs]
            # Read on a little past the expected count, so extra records would be seen.
            if len(got) >= expected:
                quiet_until = quiet_until or time.monotonic() + 3
                if time.monotonic() > quiet_until:
                    break
    finally:
        await consumer.stop()
    return got


async def test_sigkill_between_handling_and_commit(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> None:
    topic = f"{topic_prefix}inbound.chat"
    partitions = 6  # inbound.chat in the registry
    rng = random.Random(7)
    poison_json = {rng.randrange(TOTAL) for _ in range(15)}
    poison_explode = {rng.randrange(TOTAL) for _ in range(15)} - poison_json
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka, enable_idempotence=True, linger_ms=10
    )
    await producer.start()
    try:
        futures = []
        for i in range(TOTAL):
            if i in poison_json:
                value = b"\xff not json " + str(i).encode()
            elif i in poison_explode:
                value = json.dumps({"event_id": f"e{i}", "n": i, "explode": True}).encode()
            else:
                value = json.dumps({"event_id": f"e{i}", "n": i}).encode()
            futures.append(
                await producer.send(
                    topic,
                    value,
                    key=f"conv-{i % 97}".encode(),
                    headers=[("ce_id", f"e{i}".encode())],
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert len({f.result().partition for f in futures}) == partitions

    stats = tmp_path / "stats.json"
    env = infra.service_env(
        topic_prefix, MONGODB_DATABASE=mongo_db.name, STATS_FILE=str(stats), LOG_LEVEL="WARNING"
    )
    argv = [sys.executable, str(HERE / "runner_worker.py")]

    crashed = subprocess.run(argv, env={**env, "CRASH_AFTER_BATCHES": "6"}, timeout=180)
    assert crashed.returncode == -signal.SIGKILL
    handled_before_crash = json.loads(stats.read_text())["handled"]
    group = f"{topic_prefix}runner-test"
    committed = await committed_total(infra, group, topic)
    # The kill landed after handling and before committing: handled work is uncommitted.
    assert committed < handled_before_crash
    effects_after_crash = await mongo_db["effects"].count_documents({})
    assert effects_after_crash > 0

    worker = subprocess.Popen(argv, env=env)
    try:
        letters = await read_all(
            infra,
            f"{topic_prefix}deadletter.router",
            len(poison_json | poison_explode),
            timeout=180,
        )
        deadline = time.monotonic() + 180
        while await committed_total(infra, group, topic) < TOTAL and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0

    restart = json.loads(stats.read_text())
    assert restart["duplicates"] > 0, "the restarted worker must have seen redelivered records"
    docs = await mongo_db["effects"].find({}, {"n": 1}).to_list(None)
    expected = set(range(TOTAL)) - poison_json - poison_explode
    assert len(docs) == len(expected)
    assert sorted(d["n"] for d in docs) == sorted(expected)
    assert {d["_id"] for d in docs} == {f"e{i}" for i in expected}

    assert len(letters) == len(poison_json | poison_explode)
    by_value = {}
    for record in letters:
        letter = DeadLetter.model_validate_json(record.value)
        by_value[letter.original_value()] = letter
        assert letter.stage == "router"
        assert letter.reason
        assert record.key == base64.b64decode(letter.original_key_b64 or "")
        ce_id = dict(letter.original_headers)["ce_id"]
        assert letter.event_id == base64.b64decode(ce_id).decode()
    for i in poison_json:
        letter = by_value[b"\xff not json " + str(i).encode()]
        assert (letter.error_type, letter.attempts) == ("ValidationError", 1)
    for i in poison_explode:
        letter = by_value[json.dumps({"event_id": f"e{i}", "n": i, "explode": True}).encode()]
        assert (letter.error_type, letter.attempts) == ("ValueError", 3)
        assert letter.reason == "this record makes the handler fail"
    assert await committed_total(infra, group, topic) == TOTAL
