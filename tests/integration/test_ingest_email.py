"""ingest-email against real Dovecot, Kafka and MongoDB, run through its real entry point.

Each test gets a fresh IMAP folder of the user `desk`, a fresh topic prefix and a fresh
database; the service runs as `python -m deskstream_ingest_email` and the tests read what
it published with aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from deskstream.events import DeadLetter, InboundMessage
from deskstream.ids import event_id
from deskstream.producer import ProducerHolder, sync_producer
from deskstream_ingest_email.classify import ClassifyContext
from deskstream_ingest_email.normalise import NormaliseConfig
from deskstream_ingest_email.parse import normalise_message_id
from deskstream_ingest_email.publish import BatchPublisher
from deskstream_ingest_email.settings import IngestEmailSettings, Mailbox
from deskstream_ingest_email.store import MailboxStore
from deskstream_ingest_email.worker import MailboxWorker
from imapclient import IMAPClient
from imapclient.imapclient import FLAGGED, SEEN
from pymongo import MongoClient

from tests.conftest import Infra, free_port

REPO = Path(__file__).resolve().parent.parent.parent
CORPUS = REPO / "tests" / "fixtures" / "email"
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text())
ENTRIES: dict[str, dict[str, Any]] = {e["file"]: e for e in MANIFEST["messages"]}
USER = "desk"


# --- helpers --------------------------------------------------------------------------


def imap(infra: Infra) -> IMAPClient:
    client = IMAPClient(infra.imap_host, port=infra.imap_port, ssl=False, timeout=30)
    client.login(USER, infra.imap_users[USER])
    return client


@pytest.fixture
def folder(infra: Infra) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    with imap(infra) as client:
        client.create_folder(name)
    yield name
    with imap(infra) as client, contextlib.suppress(Exception):
        client.delete_folder(name)


def append(infra: Infra, folder: str, mails: list[bytes]) -> list[tuple[int, int]]:
    """APPEND each mail; (UIDVALIDITY, UID) of each, from the server's APPENDUID answers."""
    placed = []
    with imap(infra) as client:
        for raw in mails:
            answer = client.append(folder, raw)
            match = re.search(rb"APPENDUID (\d+) (\d+)", answer)
            assert match, answer
            placed.append((int(match.group(1)), int(match.group(2))))
    return placed


def generated_mail(n: int, tag: str, *, with_id: bool = True) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"User {n} <user{n}@example.com>"
    msg["To"] = "servicedesk@example.com"
    msg["Subject"] = f"Generated request {tag}-{n}"
    if with_id:
        msg["Message-ID"] = f"<{tag}-{n}@Generated.Example.com>"
    msg.set_content(f"Request number {n} of run {tag}.")
    return msg.as_bytes()


class Service:
    """`python -m deskstream_ingest_email` as a process, its logs in a file."""

    def __init__(
        self, infra: Infra, prefix: str, folder: str, database: str, log: Path, **extra: str
    ) -> None:
        self.port = free_port()
        self.log_path = log
        self.env = infra.service_env(
            prefix,
            IMAP_USER=USER,
            IMAP_PASSWORD=infra.imap_users[USER],
            IMAP_FOLDER=folder,
            MONGODB_DATABASE=database,
            INGEST_EMAIL_HTTP_PORT=str(self.port),
            INGEST_EMAIL_DESK_ADDRESSES=",".join(MANIFEST["desk_addresses"]),
            INGEST_EMAIL_ATTACHMENT_LIMIT_BYTES=str(MANIFEST["attachment_size_limit_bytes"]),
            LOG_LEVEL="INFO",
            **extra,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deskstream_ingest_email"],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"http://127.0.0.1:{self.port}/readyz")
            return r.status_code, r.json()

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            assert self.proc.poll() is None, self.logs()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if (await self.readyz())[0] == 200:
                    return
            await asyncio.sleep(0.2)
        raise AssertionError(f"not ready in {timeout}s: {self.logs()[-3000:]}")

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running(*services: Service) -> Iterator[None]:
    try:
        yield
    finally:
        for service in services:
            service.terminate()


class Topics:
    """Everything on the prefix's inbound.email and deadletter.ingest-email, from the start."""

    def __init__(self, infra: Infra, prefix: str) -> None:
        self.inbound_topic = f"{prefix}inbound.email"
        self.dlq_topic = f"{prefix}deadletter.ingest-email"
        self.consumer = AIOKafkaConsumer(
            self.inbound_topic,
            self.dlq_topic,
            bootstrap_servers=infra.kafka,
            auto_offset_reset="earliest",
            group_id=None,
        )
        self.inbound: list[tuple[bytes | None, InboundMessage, dict[str, str]]] = []
        self.dead: list[tuple[DeadLetter, dict[str, str]]] = []

    async def __aenter__(self) -> Topics:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    def ids(self) -> Counter[str]:
        return Counter(m.event_id for _, m, _ in self.inbound)

    async def until(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        """Read until `done()`; the seconds it took. `timeout` is a guard, not a target."""
        started = time.monotonic()
        while not done():
            assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
            for records in (await self.consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    headers = {k: v.decode() for k, v in r.headers or ()}
                    assert r.value is not None
                    if r.topic == self.inbound_topic:
                        msg = InboundMessage.model_validate_json(r.value)
                        self.inbound.append((r.key, msg, headers))
                    else:
                        self.dead.append((DeadLetter.model_validate_json(r.value), headers))
        return time.monotonic() - started

    async def settle(self, seconds: float = 2.0) -> None:
        """Read on for a while, to see anything published that should not have been."""
        deadline = time.monotonic() + seconds
        await self.until(lambda: time.monotonic() >= deadline, seconds + 30, "settle")


def service(infra: Infra, prefix: str, folder: str, db: Any, tmp: Path, **extra: str) -> Service:
    name = extra.pop("name", "ingest-email")
    return Service(infra, prefix, folder, db.name, tmp / f"{name}.log", **extra)


def mailbox_address(infra: Infra) -> str:
    return f"{USER}@{infra.imap_host}".lower()


# --- the corpus end to end ---------------------------------------------------------------


async def test_corpus_end_to_end(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str, tmp_path: Path
) -> None:
    files = list(ENTRIES)
    placed: dict[str, tuple[int, int]] = {}
    for file in files:
        raw = (CORPUS / file).read_bytes()
        if not raw:
            # Dovecot refuses to store a zero-byte message ("Can't save a zero byte
            # message"), so it can never reach the worker; the unit test covers it.
            with imap(infra) as client, pytest.raises(IMAPClient.Error, match="zero byte"):
                client.append(folder, raw)
            continue
        (placed[file],) = append(infra, folder, [raw])
    svc = service(infra, topic_prefix, folder, mongo_db, tmp_path)
    address = mailbox_address(infra)

    def expected_id(file: str) -> str:
        mid = ENTRIES[file]["message_id"]
        uidvalidity, uid = placed[file]
        if mid is None:
            return event_id("email", address, f"{uidvalidity}:{uid}")
        norm = normalise_message_id(mid)
        assert norm is not None
        return event_id("email", address, norm)

    published = [f for f in placed if ENTRIES[f]["outcome"] in {"ticket", "reply", "duplicate"}]
    dead = [f for f in placed if ENTRIES[f]["outcome"] == "deadletter"]
    ignored = [f for f in placed if ENTRIES[f]["outcome"] == "ignored"]

    async with Topics(infra, topic_prefix) as topics:
        with running(svc.start()):
            await svc.wait_ready()
            took = await topics.until(
                lambda: len(topics.inbound) >= len(published) and len(topics.dead) >= len(dead),
                timeout=90,
                what="the corpus",
            )
            await topics.settle()
            metrics = await svc.metrics()
        print(f"corpus of {len(placed)} mails on Kafka {took:.1f}s after the service was ready")

    # One event id per ticket and reply; the redelivered duplicate carries the same id.
    ids = topics.ids()
    assert set(ids) == {expected_id(f) for f in published}
    assert expected_id("38-duplicate-of-01-redelivered.eml") == expected_id(
        "01-plain-thunderbird-account-locked.eml"
    )
    assert sum(ids.values()) == len(published)  # nothing but the redelivery is repeated
    for file in ignored:
        assert expected_id(file) not in ids, file
    by_uid = {placed[f][1]: f for f in placed}
    for key, msg, headers in topics.inbound:
        assert key == msg.conversation_key.encode()
        assert headers["ce_id"] == msg.event_id
        assert headers["ce_type"] == "io.deskstream.inbound.email.v1"
        assert headers["ce_source"] == "/deskstream/ingest-email"
        assert msg.raw_ref is not None
        assert headers["raw_ref"] == msg.raw_ref
        uid = int(msg.raw_ref.rsplit("UID=", 1)[1])
        entry = ENTRIES[by_uid[uid]]
        assert msg.raw_ref.startswith(f"imap://{USER}@{infra.imap_host}:{infra.imap_port}/")
        if "subject" in entry:
            assert msg.subject == entry["subject"]

    # Dead letters: exactly the marked files, with the bytes as the server keeps them.
    assert sorted(d.event_id or "" for d, _ in topics.dead) == sorted(expected_id(f) for f in dead)
    with imap(infra) as client:
        client.select_folder(folder)
        stored = client.fetch([placed[f][1] for f in dead], [b"BODY.PEEK[]"])
        flags = client.get_flags([uid for uid, _ in ((p[1], f) for f, p in placed.items())])
    for letter, headers in topics.dead:
        (file,) = [f for f in dead if expected_id(f) == letter.event_id]
        uid = placed[file][1]
        assert letter.original_value() == stored[uid][b"BODY[]"]
        assert letter.stage == "ingest-email"
        assert letter.error_type == "UnparseableMail"
        assert headers["raw_ref"].endswith(f";UIDVALIDITY={placed[file][0]}/;UID={uid}")
        assert letter.raw_ref == headers["raw_ref"]
        assert FLAGGED in flags[uid]

    # Acknowledged at the source: every mail \Seen, and the checkpoint at the last UID.
    assert all(SEEN in f for f in flags.values())
    (state,) = await mongo_db["ingest_email_mailboxes"].find({}).to_list(None)
    assert state["last_uid"] == max(uid for _, uid in placed.values())
    assert state["uidvalidity"] == next(iter(placed.values()))[0]
    assert state["owner"] is None  # released on the clean stop

    for reason, count in Counter(ENTRIES[f]["reason"] for f in ignored).items():
        assert re.search(
            rf'deskstream_inputs_ignored_total{{reason="{reason}",service="ingest-email"}} '
            rf"{count}\.0",
            metrics,
        ), reason
    logs = svc.logs()
    assert infra.imap_users[USER] not in logs
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    ignored_logs = [x for x in lines if x["msg"] == "automatic mail ignored"]
    assert len(ignored_logs) == len(ignored)
    assert all(x["event_id"] and x["uid"] and x["mailbox"] for x in ignored_logs)


# --- IDLE, and a clean restart --------------------------------------------------------


async def test_idle_delivers_new_mail_and_a_restart_repeats_nothing(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    append(infra, folder, [generated_mail(0, tag)])
    # A poll interval far beyond the test: only IDLE can deliver in time. IDLE is re-issued
    # every second, so the mail below comes after several renewals.
    svc = service(
        infra,
        topic_prefix,
        folder,
        mongo_db,
        tmp_path,
        INGEST_EMAIL_POLL_INTERVAL_S="600",
        INGEST_EMAIL_IDLE_RENEW_S="1",
    )
    async with Topics(infra, topic_prefix) as topics:
        with running(svc.start()):
            await svc.wait_ready()
            await topics.until(lambda: len(topics.inbound) == 1, 60, "the first mail")
            await asyncio.sleep(3.5)  # the worker is idling now, on its fourth IDLE
            append(infra, folder, [generated_mail(1, tag)])
            # The deadline is a guard, not a speed target: below Dovecot's 30 s mailbox
            # check, so only IDLE's push can meet it, however loaded the machine is.
            took = await topics.until(lambda: len(topics.inbound) == 2, 25, "the idle mail")
            print(f"IDLE: new mail on Kafka {took:.2f}s after APPEND")
            assert svc.terminate() == 0
        assert '"idle": true' in svc.logs()

        # Stopped cleanly: mail that arrives meanwhile comes once, and nothing repeats.
        append(infra, folder, [generated_mail(2, tag), generated_mail(3, tag, with_id=False)])
        again = service(infra, topic_prefix, folder, mongo_db, tmp_path, name="again")
        with running(again.start()):
            await again.wait_ready()
            await topics.until(lambda: len(topics.inbound) >= 4, 60, "mail sent while down")
            await topics.settle()
    assert len(topics.inbound) == 4
    assert len(topics.ids()) == 4


async def test_without_idle_the_worker_polls(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str
) -> None:
    """A server without IDLE (the capability hidden from the worker) is polled."""

    class NoIdle(IMAPClient):  # type: ignore[misc]
        def capabilities(self) -> tuple[bytes, ...]:
            return tuple(c for c in super().capabilities() if c != b"IDLE")

    def connect_without_idle(mailbox: Mailbox, timeout_s: float) -> IMAPClient:
        client = NoIdle(mailbox.host, port=mailbox.port, ssl=mailbox.ssl, timeout=timeout_s)
        client.login(mailbox.user, mailbox.password.get_secret_value())
        return client

    env = infra.service_env(topic_prefix, IMAP_PASSWORD=infra.imap_users[USER])
    settings = IngestEmailSettings(
        imap_host=infra.imap_host,
        imap_port=infra.imap_port,
        imap_password=infra.imap_users[USER],
        imap_folder=folder,
        kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        topic_prefix=topic_prefix,
        poll_interval_s=0.5,
    )
    (mailbox,) = settings.resolved_mailboxes()
    mongo: MongoClient[dict[str, Any]] = MongoClient(infra.mongodb_uri, tz_aware=True)
    producers = ProducerHolder(lambda: sync_producer(settings))
    stop = threading.Event()
    worker = MailboxWorker(
        mailbox=mailbox,
        settings=settings,
        store=MailboxStore(mongo[mongo_db.name]["state"], owner="poller", ttl_s=30),
        publisher=BatchPublisher(producers, settings.topics, source="/test", flush_timeout_s=30),
        config=NormaliseConfig(10_000_000, ClassifyContext(frozenset())),
        stop=stop,
        connect=connect_without_idle,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    tag = uuid.uuid4().hex[:8]
    try:
        async with Topics(infra, topic_prefix) as topics:
            await asyncio.sleep(1)
            append(infra, folder, [generated_mail(0, tag)])
            took = await topics.until(lambda: len(topics.inbound) == 1, 30, "the polled mail")
            print(f"poll fallback: new mail on Kafka {took:.2f}s after APPEND")
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
        producers.close()
        mongo.close()
    assert not thread.is_alive()


# --- UIDVALIDITY and big mail ----------------------------------------------------------


async def test_a_new_uidvalidity_rereads_the_folder_under_the_same_event_ids(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    mails = [generated_mail(0, tag), generated_mail(1, tag), generated_mail(2, tag, with_id=False)]
    (old, *_) = append(infra, folder, mails)
    async with Topics(infra, topic_prefix) as topics:
        first = service(infra, topic_prefix, folder, mongo_db, tmp_path, name="first")
        with running(first.start()):
            await first.wait_ready()
            await topics.until(lambda: len(topics.inbound) == 3, 60, "the first reading")
        before = set(topics.ids())
        # The folder is rebuilt (as a server migration or a repaired index does): same
        # mail, new UIDVALIDITY, UIDs from 1 again.
        with imap(infra) as client:
            client.delete_folder(folder)
            client.create_folder(folder)
        (new, *_) = append(infra, folder, mails)
        assert new[0] != old[0]
        second = service(infra, topic_prefix, folder, mongo_db, tmp_path, name="second")
        with running(second.start()):
            await second.wait_ready()
            await topics.until(lambda: len(topics.inbound) == 6, 60, "the second reading")
            await topics.settle()
    assert "UIDVALIDITY changed; re-reading the whole folder" in second.logs()
    after = set(topics.ids()) - before
    # Mail with a Message-ID keeps its event id, so downstream drops the repeat; mail
    # without one is only known by its place in the folder, which is gone.
    assert len(set(topics.ids())) == 4
    assert len(after) == 1
    (state,) = await mongo_db["ingest_email_mailboxes"].find({}).to_list(None)
    assert (state["uidvalidity"], state["last_uid"]) == (new[0], 3)


async def test_big_mail_is_batched_by_size_and_dead_letters_stay_one_record(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    with_attachment = EmailMessage()
    with_attachment["From"] = "maria@example.com"
    with_attachment["Subject"] = f"Log files {tag}"
    with_attachment["Message-ID"] = f"<big-{tag}@example.com>"
    with_attachment.set_content("The logs are attached.")
    with_attachment.add_attachment(
        os.urandom(3_000_000), maintype="application", subtype="zip", filename="logs.zip"
    )
    junk = b"\xff\xd8\xff\xe0" + os.urandom(2_000_000)  # a JPEG, no headers: dead letter
    append(infra, folder, [with_attachment.as_bytes(), junk, generated_mail(0, tag)])
    svc = service(
        infra, topic_prefix, folder, mongo_db, tmp_path, INGEST_EMAIL_BATCH_MAX_BYTES="1000000"
    )
    async with Topics(infra, topic_prefix) as topics:
        with running(svc.start()):
            await svc.wait_ready()
            await topics.until(
                lambda: len(topics.inbound) == 2 and len(topics.dead) == 1, 60, "three mails"
            )
            metrics = await svc.metrics()
    big = next(m for _, m, _ in topics.inbound if m.subject.startswith("Log files"))
    (attachment,) = big.attachments
    assert attachment.omitted
    assert attachment.size == 3_000_000
    ((letter, _),) = topics.dead
    assert "original cut to 600000 of" in letter.reason
    assert len(letter.original_value()) == 600_000
    # Three mails, each too big to share a batch with the next: three batches.
    assert re.search(
        r'deskstream_processing_duration_seconds_count\{service="ingest-email",step="imap"\} 3\.0',
        metrics,
    )


# --- the connection drops ------------------------------------------------------------


class CuttableProxy:
    """A TCP proxy to the IMAP server that the test can cut, as a NAT box or a restart does."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.refusing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.refusing.is_set():
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


async def test_a_dropped_connection_is_reopened_with_back_off(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str, tmp_path: Path
) -> None:
    proxy = CuttableProxy(infra.imap_host, infra.imap_port)
    svc = service(
        infra,
        topic_prefix,
        folder,
        mongo_db,
        tmp_path,
        IMAP_PORT=str(proxy.port),
        INGEST_EMAIL_RECONNECT_BACKOFF_MAX_S="2",
    )
    tag = uuid.uuid4().hex[:8]
    try:
        async with Topics(infra, topic_prefix) as topics:
            with running(svc.start()):
                await svc.wait_ready()
                append(infra, folder, [generated_mail(0, tag)])
                # Sent as the worker starts: it must not wait for the server's next IDLE
                # check (30 s on Dovecot) because SEARCH did not see it (see _drain). The
                # deadline sits below that check, as a guard rather than a speed target.
                await topics.until(lambda: len(topics.inbound) == 1, 25, "mail 0")
                await asyncio.sleep(1)  # idling
                proxy.refusing.set()
                proxy.cut()
                append(infra, folder, [generated_mail(1, tag)])  # straight to Dovecot
                await asyncio.sleep(3)  # the worker retries into a refusing server
                status, body = await svc.readyz()
                assert status == 503
                assert len(topics.inbound) == 1
                proxy.refusing.clear()
                took = await topics.until(lambda: len(topics.inbound) == 2, 30, "mail after")
                print(f"reconnect: mail on Kafka {took:.1f}s after the server came back")
                metrics = await svc.metrics()
    finally:
        proxy.close()
    assert len(topics.ids()) == 2
    assert "mailbox session ended; reconnecting after a pause" in svc.logs()
    assert re.search(
        r'deskstream_connection_errors_total\{error="[^"]+",kind="imap",service="ingest-email"\} '
        r"[1-9]",
        metrics,
    )
    assert any(k.startswith("imap:") and v != "ok" for k, v in body["checks"].items())


# --- SIGKILL while mail arrives ---------------------------------------------------------


async def test_sigkill_while_mail_arrives_loses_nothing(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    total = 200
    mails = [generated_mail(n, tag, with_id=n % 25 != 0) for n in range(total)]
    placed: list[tuple[int, int]] = []

    # Mail flows while a worker runs, so every kill lands mid-stream however slowly the
    # (loaded) machine restarts the worker.
    worker_up = threading.Event()

    def deliver() -> None:  # one APPEND per mail, as a busy mailbox receives them
        for mail in mails:
            worker_up.wait()
            placed.extend(append(infra, folder, [mail]))
            time.sleep(0.03)

    appender = threading.Thread(target=deliver, daemon=True)
    batch = 20
    # Every incarnation is the same replica restarted (a stable instance id, as a pod name
    # gives): it takes its own lease back at once instead of waiting for it to expire.
    extra = {"INGEST_EMAIL_BATCH_SIZE": str(batch), "INGEST_EMAIL_INSTANCE_ID": "replica-1"}
    kill_points = (40, 100, 160)
    repeats: list[int] = []
    async with Topics(infra, topic_prefix) as topics:
        for n, point in enumerate(kill_points):
            svc = service(infra, topic_prefix, folder, mongo_db, tmp_path, name=f"run{n}", **extra)
            with running(svc.start()):
                await svc.wait_ready()
                worker_up.set()
                if appender.ident is None:
                    appender.start()

                def reached(point: int = point) -> bool:
                    return len(topics.ids()) >= point

                await topics.until(reached, 60, f"{point} mails")
                worker_up.clear()
                svc.kill()
            assert appender.is_alive(), "each kill should come while mail is still arriving"
            repeats.append(sum(topics.ids().values()) - len(topics.ids()) - sum(repeats))
        last = service(infra, topic_prefix, folder, mongo_db, tmp_path, name="last", **extra)
        with running(last.start()):
            await last.wait_ready()
            worker_up.set()
            await asyncio.to_thread(appender.join, 120)
            took = await topics.until(lambda: len(topics.ids()) >= total, 90, "every mail")
            await topics.settle()
        repeats.append(sum(topics.ids().values()) - len(topics.ids()) - sum(repeats))
        print(f"all {total} mails on Kafka {took:.1f}s after the last restart")

    address = mailbox_address(infra)
    expected = {
        event_id("email", address, f"<{tag}-{n}@generated.example.com>")
        if n % 25
        else event_id("email", address, f"{placed[n][0]}:{placed[n][1]}")
        for n in range(total)
    }
    ids = topics.ids()
    assert set(ids) == expected  # no loss, nothing invented
    duplicates = sum(ids.values()) - len(ids)
    kills = len(kill_points)
    print(
        f"SIGKILL x{kills}: {duplicates} duplicate record(s) of {total}, same event ids "
        f"(repeats per incarnation: {repeats})"
    )
    # At-least-once: only the batch in flight at a kill (sent, not yet checkpointed) is
    # sent again by the next incarnation.
    assert duplicates <= kills * batch


# --- two replicas, one lease -----------------------------------------------------------


async def test_two_replicas_share_a_mailbox_through_the_lease(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str, tmp_path: Path
) -> None:
    ttl = 4.0
    lease = {"INGEST_EMAIL_LEASE_TTL_S": str(ttl), "INGEST_EMAIL_LEASE_HEARTBEAT_S": "1"}
    a = service(
        infra,
        topic_prefix,
        folder,
        mongo_db,
        tmp_path,
        name="a",
        INGEST_EMAIL_INSTANCE_ID="replica-a",
        **lease,
    )
    b = service(
        infra,
        topic_prefix,
        folder,
        mongo_db,
        tmp_path,
        name="b",
        INGEST_EMAIL_INSTANCE_ID="replica-b",
        **lease,
    )
    tag = uuid.uuid4().hex[:8]
    state = mongo_db["ingest_email_mailboxes"]

    async def holder() -> str | None:
        doc = await state.find_one({})
        return doc.get("owner") if doc else None

    async with Topics(infra, topic_prefix) as topics:
        with running(a.start(), b.start()):
            await asyncio.gather(a.wait_ready(), b.wait_ready())
            append(infra, folder, [generated_mail(n, tag) for n in range(30)])
            await topics.until(lambda: len(topics.ids()) >= 30, 60, "the first 30")
            first_holder = await holder()
            assert first_holder in {"replica-a", "replica-b"}
            active, standby = (a, b) if first_holder == "replica-a" else (b, a)

            active.kill()
            killed_at = time.monotonic()
            append(infra, folder, [generated_mail(n, tag) for n in range(30, 60)])
            await topics.until(lambda: len(topics.ids()) >= 60, 60, "mail after the kill")
            taken_over = time.monotonic() - killed_at
            assert await holder() != first_holder
            await topics.settle()
            print(f"lease: the standby published {taken_over:.1f}s after the holder was killed")
            assert taken_over < ttl + 10  # lease expiry, one heartbeat, and the batch
    ids = topics.ids()
    assert len(ids) == 60
    assert set(ids.values()) == {1}  # two replicas, each mail published once
    logs = active.logs() + standby.logs()
    assert "standing by" in standby.logs()
    assert infra.imap_users[USER] not in logs


# --- the store's lease and fencing, against the real MongoDB ------------------------------


def test_lease_is_exclusive_expires_and_fences_the_checkpoint(infra: Infra) -> None:
    from datetime import timedelta

    from deskstream_ingest_email.store import LeaseLost

    client: MongoClient[dict[str, Any]] = MongoClient(infra.mongodb_uri, tz_aware=True)
    name = f"t_{uuid.uuid4().hex[:10]}"
    now = [datetime(2024, 3, 6, 12, 0, tzinfo=UTC)]
    try:
        col = client[name]["mailboxes"]
        a = MailboxStore(col, owner="a", ttl_s=30, clock=lambda: now[0])
        b = MailboxStore(col, owner="b", ttl_s=30, clock=lambda: now[0])
        assert a.acquire("box")
        assert not b.acquire("box")
        a.advance("box", uidvalidity=7, last_uid=10)
        now[0] += timedelta(seconds=20)
        a.renew("box")  # the heartbeat keeps it...
        now[0] += timedelta(seconds=20)
        assert not b.acquire("box")
        now[0] += timedelta(seconds=31)  # ...until it stops: the lease expires
        assert b.acquire("box")
        with pytest.raises(LeaseLost):
            a.advance("box", uidvalidity=7, last_uid=99)  # the old holder is fenced off
        with pytest.raises(LeaseLost):
            a.renew("box")
        assert b.checkpoint("box").last_uid == 10
        b.release("box")
        assert a.acquire("box")  # released: taken at once, no expiry to wait for
        assert a.checkpoint("box").uidvalidity == 7
    finally:
        client.drop_database(name)
        client.close()


# --- health ---------------------------------------------------------------------------


async def test_readyz_names_each_dependency_that_does_not_answer(
    infra: Infra, topic_prefix: str, mongo_db: Any, folder: str, tmp_path: Path
) -> None:
    dead = str(free_port())
    svc = Service(
        infra,
        topic_prefix,
        folder,
        mongo_db.name,
        tmp_path / "down.log",
        IMAP_PORT=dead,
        MONGODB_URI=f"mongodb://127.0.0.1:{dead}/?serverSelectionTimeoutMS=500",
    )
    with running(svc.start()):
        deadline = time.monotonic() + 30
        status, body = 0, dict[str, Any](checks={})
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                status, body = await svc.readyz()
                if body["checks"].get("kafka") == "ok":
                    break
            await asyncio.sleep(0.3)
        assert status == 503
        checks = body["checks"]
        assert checks["kafka"] == "ok"
        assert checks["mongodb"].startswith("failing")
        (imap_check,) = [v for k, v in checks.items() if k.startswith("imap:")]
        assert imap_check.startswith("failing")
        assert svc.proc is not None
        assert svc.proc.poll() is None  # not ready, but running and waiting
