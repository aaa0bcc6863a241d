"""A steady stream of events through the whole desk, and the counts that prove that nothing
was lost and nothing doubled.

Traffic comes in the way people send it: signed webhooks to ingest-chat, mail appended to
the IMAP mailbox that ingest-email watches, mentions on the local X server that
ingest-social polls. Every event is a new conversation, so every event must end as exactly
one ticket with exactly one message in MongoDB and one `created` event on tickets.events.
A sender retries what was not accepted (a webhook answered 5xx or not at all, an IMAP
APPEND that failed), as real senders do; a retry carries the same event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import httpx
from deskstream.topics import STAGES
from imapclient import IMAPClient

from tests.integration.test_ingest_chat import webhook_headers
from tests.integration.test_ingest_social_e2e import SocialDesk
from tests.integration.test_ticket_api_kit import created_per_ticket, read_topic, repeated_ids
from tests.kafka_helpers import Collector
from tests.services import wait_status

WEBHOOK_SECRET = "fault-webhook-secret-0123456789abcdef"
SERVICES = ("ticket-api", "router", "ingest-email", "ingest-chat", "ingest-social")
CHANNELS = ("webhook", "email", "x")


@dataclass
class Row:
    fault: str
    sent: int
    persisted: int
    lost: int
    duplicates: int
    dead_lettered: int
    recovery_s: float
    restarts: int = 0  # by the supervisor (a process that exited), not by the fault itself

    def cells(self) -> tuple[str, ...]:
        return (
            self.fault,
            str(self.sent),
            str(self.persisted),
            str(self.lost),
            str(self.duplicates),
            str(self.dead_lettered),
            f"{self.recovery_s:.1f}",
            str(self.restarts),
        )


RESULTS: list[Row] = []


@dataclass
class FaultDesk(SocialDesk):
    """All five services on the fault infrastructure, ingest-social on the local X.

    `supervise()` plays the part of compose's `restart: unless-stopped` and Kubernetes'
    restart policy: a service process that exited is started again. A fault's own kill is
    not the supervisor's business (`held` until the fault restarts it)."""

    held: set[str] = field(default_factory=set)
    restarts: Counter[str] = field(default_factory=Counter)

    def env(self) -> dict[str, str]:
        return {**super().env(), "INGEST_CHAT_WEBHOOK_SECRET": WEBHOOK_SECRET}

    def sigkill(self, name: str) -> None:
        self.held.add(name)
        super().sigkill(name)

    def restart(self, name: str) -> None:
        self.launch(name)
        self.held.discard(name)

    async def supervise(self) -> None:
        while True:
            for name in SERVICES:
                if name not in self.held and self.procs[name].poll() is not None:
                    print(f"supervisor: {name} exited ({self.procs[name].returncode}); restarting")
                    self.restarts[name] += 1
                    self.restart(name)
            await asyncio.sleep(0.5)

    async def until_ready(self, timeout: float = 180) -> float:
        """Seconds until every service answers /readyz with 200 (no human involved)."""
        ports = [self.ports[name] for name in SERVICES]
        return await asyncio.to_thread(wait_status, ports, 200, timeout)

    def dead_processes(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]


class Traffic:
    """`total` events, one channel after the other, at `rate` per second."""

    def __init__(self, desk: FaultDesk, total: int, rate: float) -> None:
        self.desk, self.total, self.rate = desk, total, rate
        self.run = uuid.uuid4().hex[:8]
        self.sent: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self._imap: IMAPClient | None = None
        self._imap_lock = threading.Lock()
        self._slots = asyncio.Semaphore(16)

    async def drive(
        self, fault: Callable[[], Coroutine[Any, Any, float]], at: float = 0.3
    ) -> float:
        """Send everything; start `fault` once `at` of the events were started. Returns
        the fault's recovery seconds."""
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.desk.ports['ingest-chat']}")
        fault_task: asyncio.Task[float] | None = None
        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        try:
            for n in range(self.total):
                if n % 100 == 0:
                    print(
                        f"traffic: {n} started, {self.accepted} accepted, "
                        f"retries {dict(self.retries)}, {time.monotonic() - started:.0f} s",
                        flush=True,
                    )
                if n == int(self.total * at):
                    fault_task = asyncio.create_task(fault())
                delay = started + n / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._slots.acquire()
                tasks.append(asyncio.create_task(self._send(http, n)))
            await asyncio.gather(*tasks)
            assert fault_task is not None
            return await fault_task
        finally:
            for task in tasks:
                task.cancel()
            await http.aclose()
            if self._imap is not None:
                with contextlib.suppress(Exception):  # the server may have dropped it
                    self._imap.logout()

    async def _send(self, http: httpx.AsyncClient, n: int) -> None:
        try:
            channel = CHANNELS[n % len(CHANNELS)]
            deadline = time.monotonic() + 300
            while True:
                try:
                    if channel == "webhook":
                        accepted = await self._webhook(http, n)
                    elif channel == "email":
                        accepted = await asyncio.to_thread(self._email, n)
                    else:
                        self._mention(n)
                        accepted = True
                except AssertionError:
                    raise
                except Exception:  # refused, dropped, timed out: a sender retries
                    accepted = False
                if accepted:
                    self.sent[channel] += 1
                    return
                self.retries[channel] += 1
                assert time.monotonic() < deadline, f"{channel} event {n} never accepted"
                await asyncio.sleep(0.3)
        finally:
            self._slots.release()

    async def canary(self, db: Any, timeout: float = 300) -> None:
        """One more webhook event, sent now; returns once its ticket is in MongoDB."""
        started = time.monotonic()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.desk.ports['ingest-chat']}"
        ) as http:
            while not await self._webhook(http, "canary"):
                assert time.monotonic() - started < timeout, "the canary was never accepted"
                await asyncio.sleep(0.2)
        self.sent["webhook"] += 1
        key = f"webhook:mattermost:support/{self.run}-canary"
        while not await db["tickets"].find_one({"conversation_key": key}, {"_id": 1}):
            assert time.monotonic() - started < timeout, "the canary never became a ticket"
            await asyncio.sleep(0.2)

    async def _webhook(self, http: httpx.AsyncClient, n: int | str) -> bool:
        body = json.dumps(
            {
                "source": "mattermost",
                "message_id": f"{self.run}-m{n}",
                "conversation_id": f"support/{self.run}-{n}",
                "sender": {"id": f"u-{n}", "name": f"User {n}", "handle": f"user{n}"},
                "text": f"The printer on floor {hash(n) % 9} jams (request {self.run}-{n})",
            }
        ).encode()
        resp = await http.post(
            "/webhooks/chat",
            content=body,
            headers=webhook_headers(body, WEBHOOK_SECRET),
            timeout=15,
        )
        assert resp.status_code < 400 or resp.status_code >= 500, resp.text  # 4xx: our bug
        return resp.status_code < 300

    def _email(self, n: int) -> bool:
        msg = EmailMessage()
        msg["From"] = f"User {n} <user{n}@example.com>"
        msg["To"] = "servicedesk@example.com"
        msg["Subject"] = f"VPN will not connect ({self.run}-{n})"
        msg["Message-ID"] = f"<{self.run}-{n}@faults.example.com>"
        msg.set_content(f"Request {n} of run {self.run}: the VPN client times out.")
        with self._imap_lock:
            try:
                if self._imap is None:
                    self._imap = self.desk.imap()
                self._imap.append(self.desk.folder, msg.as_bytes())
                return True
            except Exception:
                # Dropped or refused: reconnect on the next try. An APPEND whose answer was
                # lost may have been stored; the repeat has the same Message-ID.
                self._imap = None
                return False

    def _mention(self, n: int) -> None:
        api = self.desk.x.api
        author = api.user(str(2_000_000 + n), f"xuser{n}", f"X User {n}")
        api.mention(author, f"@{api.desk_username} my VPN is down ({self.run}-{n})")

    @property
    def accepted(self) -> int:
        return sum(self.sent.values())


async def outcome(desk: FaultDesk, db: Any, sent: int, timeout: float = 300) -> dict[str, int]:
    """Wait until every accepted event is a ticket (or `timeout`), then count.

    Every event opened its own conversation, so: lost = accepted events whose conversation
    has no ticket; duplicates = tickets beyond one per conversation, messages beyond one
    per ticket, and events published more than once on tickets.events.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await db["tickets"].count_documents({}) >= sent:
            break
        await asyncio.sleep(1)
    await asyncio.sleep(3)  # anything doubled would arrive now
    keys = [
        t["conversation_key"]
        for t in await db["tickets"].find({}, {"conversation_key": 1}).to_list()
    ]
    conversations = len(set(keys))
    messages = await db["messages"].count_documents({})
    records = await read_topic(
        desk.infra,
        f"{desk.prefix}tickets.events",
        until=lambda got: len(created_per_ticket(got)) >= conversations,
        timeout=60,
        settle=3,
    )
    created = created_per_ticket(records)
    return {
        "tickets": len(keys),
        "messages": messages,
        "created": len(created),
        "lost": max(sent - conversations, 0) + max(conversations - len(created), 0),
        "duplicates": (len(keys) - conversations)
        + (messages - len(keys))
        + sum(n - 1 for n in created.values())
        + sum(n - 1 for n in repeated_ids(records).values()),
    }


async def where(desk: FaultDesk, db: Any) -> dict[str, Any]:
    """Per channel: inbound records (distinct event ids), create commands, tickets."""
    channels = ("chat", "email", "social")
    topics = [f"{desk.prefix}inbound.{c}" for c in channels] + [f"{desk.prefix}tickets.commands"]
    async with Collector(desk.infra.kafka, *topics) as seen:
        await asyncio.sleep(5)
    inbound: dict[str, set[str]] = {c: set() for c in channels}
    creates: Counter[str] = Counter()
    for r in seen.records:
        value = json.loads(r.value)
        if r.topic.endswith("tickets.commands"):
            if value["type"] == "create":
                creates[value["message"]["channel"]] += 1
        else:
            inbound[r.topic.rsplit(".", 1)[-1]].add(value["event_id"])
    return {
        c: {
            "inbound": len(inbound[c]),
            "creates": creates[c],
            "tickets": await db["tickets"].count_documents({"channel": c}),
        }
        for c in channels
    }


async def dead_letters(desk: FaultDesk) -> list[dict[str, Any]]:
    return [
        json.loads(r.value)
        for stage in STAGES
        for r in await read_topic(desk.infra, f"{desk.prefix}deadletter.{stage}")
    ]
