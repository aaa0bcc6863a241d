"""Helpers for the ticket-api tests: the app in-process or through its entry point, and Kafka reads.

(It holds no tests itself; it is named like a test module so it lives beside them.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from deskstream import ids
from deskstream.cloudevents import ce_headers, header
from deskstream.events import (
    AppendMessage,
    AssignTicket,
    Channel,
    CreateTicket,
    DeflectTicket,
    InboundMessage,
    QueueTicket,
    SenderIdentity,
)
from deskstream.producer import encode
from deskstream.topics import TOPICS
from deskstream_ticket_api import commands
from deskstream_ticket_api.app import create_app
from deskstream_ticket_api.runtime import Runtime
from deskstream_ticket_api.settings import TicketApiSettings
from fastapi import FastAPI

from tests.conftest import Infra, free_port

ADMIN_KEY = "ticket-api-test-admin-key-0123456789"
REPO = Path(__file__).resolve().parents[2]


def settings_for(infra: Infra, prefix: str, database: str, **overrides: Any) -> TicketApiSettings:
    values: dict[str, Any] = {
        "admin_api_key": ADMIN_KEY,
        "kafka_bootstrap_servers": infra.kafka,
        "topic_prefix": prefix,
        "mongodb_uri": infra.mongodb_uri,
        "mongodb_database": database,
        "consumer_enabled": False,
        "relay_lease_s": 2.0,
        "relay_poll_ms": 100,
        **overrides,
    }
    return TicketApiSettings(**values)


@dataclass
class Api:
    """The app running in this process (its real lifespan), and an HTTP client for it."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: TicketApiSettings
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def runtime(self) -> Runtime:
        rt: Runtime = self.app.state.runtime
        return rt

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.auth(ADMIN_KEY)

    async def issue_key(self, role: str, subject: str) -> str:
        resp = await self.client.post(
            "/v1/api-keys", json={"role": role, "subject": subject}, headers=self.admin
        )
        assert resp.status_code == 201, resp.text
        key: str = resp.json()["key"]
        return key

    async def apply(self, *cmds: commands.Command) -> dict[int, Exception]:
        """Apply commands through the consumer's own function (no Kafka in between)."""
        rejected, _ = await commands.apply_commands(
            store=self.runtime.store,
            topics=self.runtime.topics,
            commands=list(enumerate(cmds)),
        )
        self.runtime.waker.wake()
        return rejected


@contextlib.asynccontextmanager
async def running_api(settings: TicketApiSettings) -> AsyncIterator[Api]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://ticket-api") as client,
    ):
        deadline = time.monotonic() + 30
        while True:
            resp = await client.get("/readyz")
            if resp.status_code == 200:
                break
            assert time.monotonic() < deadline, resp.text
            await asyncio.sleep(0.1)
        yield Api(app, client, settings)


# --- Commands -------------------------------------------------------------------------


def inbound(
    *,
    source_id: str,
    channel: Channel = Channel.EMAIL,
    sender: str = "maria@example.com",
    kind: str = "email",
    subject: str = "VPN drops every hour",
    text: str = "It keeps dropping.",
    conversation_key: str | None = None,
) -> InboundMessage:
    event_id = ids.event_id(channel.value, source_id)
    return InboundMessage(
        event_id=event_id,
        channel=channel,
        conversation_key=conversation_key or f"conv:{source_id}",
        sender=SenderIdentity(channel=channel, kind=kind, id=sender),
        subject=subject,
        text=text,
        received_at=datetime.now(UTC),
    )


def create_cmd(message: InboundMessage, **extra: Any) -> CreateTicket:
    ticket_id = ids.ticket_id_for(message.event_id)
    return CreateTicket(
        command_id=f"router:{message.event_id}:create",
        ticket_id=ticket_id,
        message=message,
        **extra,
    )


def append_cmd(ticket_id: str, message: InboundMessage) -> AppendMessage:
    return AppendMessage(
        command_id=f"router:{message.event_id}:append", ticket_id=ticket_id, message=message
    )


def assign_cmd(ticket_id: str, agent: str, n: int = 1, **extra: Any) -> AssignTicket:
    return AssignTicket(
        command_id=f"router:{ticket_id}:assign:{n}", ticket_id=ticket_id, agent_id=agent, **extra
    )


def queue_cmd(ticket_id: str, team: str, position: int) -> QueueTicket:
    return QueueTicket(
        command_id=f"router:{ticket_id}:queue:{position}",
        ticket_id=ticket_id,
        team=team,
        position=position,
    )


def deflect_cmd(ticket_id: str) -> DeflectTicket:
    return DeflectTicket(
        command_id=f"router:{ticket_id}:deflect",
        ticket_id=ticket_id,
        target="self-service",
        explanation={"rule": "password-reset", "$score": 0.93},
    )


async def publish_commands(
    infra: Infra, topic: str, cmds: Sequence[Any], raw: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Publish commands (keyed by ticket id) and raw (key, value) records, then wait for acks."""
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                key=c.ticket_id.encode(),
                value=encode(c),
                headers=ce_headers(
                    event_id=c.command_id, event_type=f"deskstream.command.{c.type}", source="/t"
                ),
            )
            for c in cmds
        ]
        futures += [await producer.send(topic, key=k, value=v) for k, v in raw]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# --- Reading topics -------------------------------------------------------------------


async def read_topic(
    infra: Infra,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord[bytes, bytes]]], bool] | None = None,
    timeout: float = 30.0,
    settle: float = 1.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of `topic` from the beginning.

    Reads until `until(records)` holds, then `settle` seconds more (to catch duplicates
    that would arrive late); without `until`, until `settle` seconds bring nothing new.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=infra.kafka,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        spec = next(t for t in TOPICS if topic.endswith(t.name))
        tps = [TopicPartition(topic, p) for p in range(spec.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        met_at: float | None = None
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=200)
            got = [m for msgs in fetched.values() for m in msgs]
            records += got
            now = time.monotonic()
            if got:
                quiet_since = now
            if until is not None:
                if met_at is None and until(records):
                    met_at = now
                if met_at is not None and now - met_at >= settle:
                    break
            elif now - quiet_since >= settle:
                break
        return records
    finally:
        await consumer.stop()


def ce_ids(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[str]:
    return [header(r.headers, "ce_id") or "" for r in records]


def repeated_ids(records: Iterable[ConsumerRecord[bytes, bytes]]) -> dict[str, int]:
    """ce_ids published more than once, with how often."""
    return {i: n for i, n in Counter(ce_ids(records)).items() if n > 1}


def assert_each_once(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[str]:
    records = list(records)
    dupes = sorted(repeated_ids(records))
    assert not dupes, f"{len(dupes)} ce_id(s) more than once, e.g. {dupes[:5]}"
    return ce_ids(records)


def created_per_ticket(records: Iterable[ConsumerRecord[bytes, bytes]]) -> Counter[str]:
    """tickets.events: how many `created` events each ticket has."""
    values = (json.loads(r.value) for r in records if r.value)
    return Counter(v["ticket_id"] for v in values if v.get("type") == "created")


# --- The service through its entry point ----------------------------------------------


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


def start_service(infra: Infra, prefix: str, database: str, log_dir: Path, **env: str) -> Service:
    port = free_port()
    log = log_dir / f"ticket-api-{uuid.uuid4().hex[:6]}.log"
    settings = {
        "TICKET_API_ADMIN_API_KEY": ADMIN_KEY,
        "TICKET_API_HTTP_PORT": str(port),
        "MONGODB_DATABASE": database,
        "TICKET_API_RELAY_LEASE_S": "2",
        "TICKET_API_RELAY_POLL_MS": "100",
        "TICKET_API_RELAY_READBACK_MARGIN_MS": "5000",
        **env,
    }
    environment = infra.service_env(prefix, **settings)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deskstream_ticket_api"],
            env=environment,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Service(proc, port, log)


async def wait_ready(service: Service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=service.url, timeout=2) as client:
        while True:
            assert service.proc.poll() is None, f"ticket-api exited: {service.output()}"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"not ready in {timeout}s: {service.output()}"
            await asyncio.sleep(0.1)


def stop_service(service: Service, timeout: float = 30.0) -> int | None:
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
    try:
        return service.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()
        return None


def kill_service(service: Service) -> None:
    if service.proc.poll() is None:
        os.kill(service.proc.pid, signal.SIGKILL)
    service.proc.wait(10)


# --- A MongoDB connection that can be cut at an exact command --------------------------


class CuttingProxy:
    """A TCP proxy to MongoDB that swallows a chosen command and everything after it.

    Lets a test stop a real service's write at one exact point (e.g. the relay's mark of
    the outbox) without any hook in the service: the command is never delivered, as if the
    process had died just before sending it. Messages are framed by the wire protocol's
    length prefix, so the cut falls between messages.
    """

    def __init__(self, upstream_host: str, upstream_port: int, marker: bytes) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.marker = marker
        self.armed = False
        self.cut = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    def uri(self) -> str:
        # Direct: the server's hello names its real address, which would bypass the proxy.
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def to_server() -> None:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(head, "little") - 4)
                if self.cut.is_set():
                    continue
                if self.armed and self.marker in body:
                    self.cut.set()
                    continue
                up_writer.write(head + body)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()


# --- A served ticket-api with a small desk and a key per role -------------------------


@dataclass
class ServedDesk:
    """The ticket-api through its entry point, seeded over REST (and Kafka for tickets).

    `keys` has one key per role (admin, agent, portal) and one of a second portal user
    (`other-portal`); `ids` names what exists: a team, an agent (the agent key's), a
    service, the portal user's ticket and contact, and the other user's ticket.
    """

    service: Service
    keys: dict[str, str]
    ids: dict[str, str]

    @property
    def url(self) -> str:
        return self.service.url

    def headers(self, role: str | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.keys[role]}"}


@contextlib.asynccontextmanager
async def served_desk(
    infra: Infra, prefix: str, database: str, log_dir: Path, **env: str
) -> AsyncIterator[ServedDesk]:
    service = start_service(infra, prefix, database, log_dir, **env)
    try:
        await wait_ready(service, timeout=60)
        yield await _seed(infra, prefix, service)
    finally:
        stop_service(service)


async def _seed(infra: Infra, prefix: str, service: Service) -> ServedDesk:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    named = {"team": "network", "agent": "alice", "service": "vpn"}
    async with httpx.AsyncClient(base_url=service.url, headers=admin, timeout=30) as http:
        for path, body in (
            ("/v1/teams", {"team_id": "network", "name": "Network"}),
            (
                "/v1/agents",
                {"agent_id": "alice", "name": "Alice", "teams": ["network"], "skills": {"vpn": 4}},
            ),
            ("/v1/catalogue/services", {"service_id": "vpn", "name": "VPN", "team": "network"}),
        ):
            resp = await http.post(path, json=body)
            assert resp.status_code == 201, resp.text
        keys = {"admin": ADMIN_KEY}
        for role, kind, subject in (
            ("agent", "agent", "alice"),
            ("portal", "portal", "maria"),
            ("other-portal", "portal", "omar"),
        ):
            resp = await http.post("/v1/api-keys", json={"role": kind, "subject": subject})
            assert resp.status_code == 201, resp.text
            keys[role] = resp.json()["key"]
        mine = inbound(source_id="maria-1", channel=Channel.PORTAL, sender="maria", kind="portal")
        theirs = inbound(source_id="omar-1", channel=Channel.PORTAL, sender="omar", kind="portal")
        await publish_commands(
            infra, f"{prefix}tickets.commands", [create_cmd(mine), create_cmd(theirs)]
        )
        named["ticket"] = ids.ticket_id_for(mine.event_id)
        named["other-ticket"] = ids.ticket_id_for(theirs.event_id)
        deadline = time.monotonic() + 60
        for ticket in (named["ticket"], named["other-ticket"]):
            while (await http.get(f"/v1/tickets/{ticket}")).status_code != 200:
                assert time.monotonic() < deadline, f"ticket {ticket} never appeared"
                await asyncio.sleep(0.2)
        portal = {"Authorization": f"Bearer {keys['portal']}"}
        resp = await http.get("/v1/portal/contact", headers=portal)
        assert resp.status_code == 200, resp.text
        named["contact"] = resp.json()["contact_id"]
    return ServedDesk(service, keys, named)
