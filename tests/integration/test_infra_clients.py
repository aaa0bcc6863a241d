"""The real infrastructure answers every client the project uses."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from imapclient import IMAPClient
from kafka import KafkaConsumer, KafkaProducer

from tests.conftest import Infra, free_port

HERE = Path(__file__).resolve().parent


async def test_aiokafka_produces_and_consumes(infra: Infra, topic_prefix: str) -> None:
    topic = f"{topic_prefix}inbound.email"
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka, enable_idempotence=True)
    await producer.start()
    try:
        sent = [f"m{i}".encode() for i in range(50)]
        await asyncio.gather(*[await producer.send(topic, v, key=v) for v in sent])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka,
        auto_offset_reset="earliest",
        group_id=f"g-{uuid.uuid4().hex}",
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                got += [m.value for m in msgs if m.value is not None]
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(sent)


def test_kafka_python_produces_and_consumes(infra: Infra, topic_prefix: str) -> None:
    topic = f"{topic_prefix}inbound.portal"
    producer = KafkaProducer(bootstrap_servers=infra.kafka, enable_idempotence=True, acks="all")
    for i in range(20):
        producer.send(topic, key=b"k", value=f"v{i}".encode())
    producer.flush(30)
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka,
        auto_offset_reset="earliest",
        group_id=f"g-{uuid.uuid4().hex}",
        consumer_timeout_ms=10_000,
    )
    got = [m.value for m in consumer]
    consumer.close()
    # One key, one partition: the order is kept.
    assert got == [f"v{i}".encode() for i in range(20)]


async def test_faust_agent_round_trip(infra: Infra, topic_prefix: str) -> None:
    port = str(free_port())
    env = infra.service_env(topic_prefix, ROUTER_HTTP_PORT=port, LOG_LEVEL="WARNING")
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "faust_echo_app.py"), "worker", "--web-port", port],
        env=env,
        cwd=HERE.parent.parent,
    )
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka)
    consumer = AIOKafkaConsumer(
        f"{topic_prefix}outbound.chat",
        bootstrap_servers=infra.kafka,
        auto_offset_reset="earliest",
        group_id=f"g-{uuid.uuid4().hex}",
    )
    await producer.start()
    await consumer.start()
    try:
        sends = [
            await producer.send(
                f"{topic_prefix}inbound.chat", f"hello {i}".encode(), key=f"conv-{i % 3}".encode()
            )
            for i in range(30)
        ]
        await asyncio.gather(*sends)
        got: dict[bytes, list[bytes]] = {}
        deadline = time.monotonic() + 90
        while sum(map(len, got.values())) < 30 and time.monotonic() < deadline:
            assert worker.poll() is None, "the Faust worker died"
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    got.setdefault(m.key or b"", []).append(m.value or b"")
    finally:
        await producer.stop()
        await consumer.stop()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()  # never leave a worker behind
            worker.wait()
            raise
    assert sum(map(len, got.values())) == 30
    # Per conversation the table counted 1..10 in order: state and ordering both held.
    for key, values in got.items():
        assert [v.rsplit(b"|", 1)[1] for v in values] == [str(n).encode() for n in range(1, 11)], (
            key
        )


async def test_async_mongo_client_writes_and_reads(mongo_db: Any) -> None:
    tickets = mongo_db["tickets"]
    await tickets.create_index("event_id", unique=True)
    await tickets.insert_many([{"event_id": f"e{i}", "n": i} for i in range(100)], ordered=False)
    assert await tickets.count_documents({"n": {"$gte": 50}}) == 50
    doc = await tickets.find_one({"event_id": "e7"})
    assert doc is not None
    assert doc["n"] == 7


def test_imap_login_and_see_an_appended_message(infra: Infra) -> None:
    msg = EmailMessage()
    marker = uuid.uuid4().hex
    msg["From"] = "Maria <maria@example.com>"
    msg["To"] = "servicedesk@example.com"
    msg["Subject"] = f"Printer on 3rd floor jams {marker}"
    msg["Message-ID"] = f"<{marker}@example.com>"
    msg.set_content("The printer jams on every second page.")
    with IMAPClient(infra.imap_host, port=infra.imap_port, ssl=False, timeout=10) as client:
        client.login("alice", infra.imap_users["alice"])
        client.append("INBOX", msg.as_bytes())
        client.select_folder("INBOX")
        uids = client.search(["SUBJECT", marker])
        assert len(uids) == 1
        fetched = client.fetch(uids, ["RFC822"])[uids[0]][b"RFC822"]
        assert email.message_from_bytes(fetched, policy=email.policy.default)["Message-ID"] == (
            f"<{marker}@example.com>"
        )
        assert b"IDLE" in client.capabilities()


def test_smtp_server_accepts_a_mail(infra: Infra) -> None:
    marker = uuid.uuid4().hex
    msg = EmailMessage()
    msg["From"] = "noreply@desk.example.com"
    msg["To"] = "maria@example.com"
    msg["Subject"] = f"[#DS-ABCDEFGH] Your request {marker}"
    msg.set_content("We are on it.")
    with smtplib.SMTP(infra.smtp_host, infra.smtp_port, timeout=10) as smtp:
        refused = smtp.send_message(msg)
    assert refused == {}
    if infra.smtp_maildir is not None:  # our own sink: the mail is in its Maildir
        deadline = time.monotonic() + 10
        found = False
        while not found and time.monotonic() < deadline:
            found = any(
                marker in p.read_text(errors="replace")
                for p in (infra.smtp_maildir / "new").glob("*")
            )
            time.sleep(0.1)
        assert found
