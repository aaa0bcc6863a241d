"""The live view of `make run`: one line per ticket event as it happens, with the router's why.

It follows `tickets.events` (read_committed: the relay publishes in Kafka transactions) from
where the topic ends when the view starts, so earlier runs do not flood the terminal, and
for assignments and queueing it asks the ticket API for the router's stored explanation
(GET /v1/tickets/{id}/explanation). It runs in a thread of the `make run` process, with
its own asyncio loop: signals reach only the main thread, which stops the view on Ctrl-C.

    12:03:04  DS-7K2M6QXA  email   vpn               new: 'VPN keeps dropping' from raj@...
    12:03:04  DS-7K2M6QXA  email   vpn               -> ana (online, skill vpn 4, load 0/15; ...)
    12:03:05  DS-Q4ZT7LBN  portal  password-reset    queued #1 in service-desk (nobody ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from deskstream.events import (
    TICKET_EVENT,
    MessageAdded,
    StatusChanged,
    TicketAssigned,
    TicketCreated,
    TicketQueued,
    TicketStatus,
)
from pydantic import ValidationError

EXPLAIN_ATTEMPTS = 3
RETRY_S = 2.0
TICKETS_REMEMBERED = 10_000  # channel and service of recent tickets, for their later lines
ROUTER_COMMAND = "route:"  # the router's command ids; other causes are people or the API

_write_lock = threading.Lock()


def say(line: str) -> None:
    """Print one line; a single write under a lock, so two threads never mix their lines."""
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# --- formatting (pure) ------------------------------------------------------------------


def skills_text(required: dict[str, int]) -> str:
    return ", ".join(f"{s}>={lvl}" for s, lvl in sorted(required.items())) or "no skill"


def _skill_fit(required: dict[str, int], surplus: int) -> str:
    if not required:
        return "no skill required"
    if len(required) == 1:
        # One required skill: the winner's level is the minimum plus the surplus.
        ((skill, level),) = required.items()
        return f"skill {skill} {level + surplus}"
    return f"skills {skills_text(required)} (+{surplus})"


def _rule(expl: dict[str, Any]) -> str:
    return f"; rule {expl['classification_rule']}" if expl.get("classification_rule") else ""


def why_assigned(expl: dict[str, Any]) -> str:
    """`online, skill vpn 4, load 0/15; passed over ben (skill: vpn 2 < 3); rule vpn@v1`."""
    if expl.get("replayed"):
        return "the router repeated an earlier decision"
    candidates: list[dict[str, Any]] = expl.get("candidates") or []
    winner = next((c for c in candidates if c.get("agent_id") == expl.get("winner")), None)
    parts = []
    if winner is not None:
        qualified = sum(1 for c in candidates if c.get("filtered_by") is None)
        load = f"{winner['load']['total']}/{winner['caps']['total']}"
        parts += [
            str(winner.get("presence", "?")),
            _skill_fit(expl.get("required_skills") or {}, int(winner.get("skill_surplus", 0))),
            f"least load {load} of {qualified} qualified" if qualified > 1 else f"load {load}",
        ]
    text = ", ".join(parts) or "no candidate details"
    passed = [f"{c['agent_id']} ({c['filtered_by']})" for c in candidates if c.get("filtered_by")]
    if passed:
        text += "; passed over " + ", ".join(passed)
    return text + _rule(expl)


def why_queued(expl: dict[str, Any]) -> str:
    """`nobody qualifies for accounts>=1: frank (presence: offline); rule accounts@v1`."""
    candidates: list[dict[str, Any]] = expl.get("candidates") or []
    need = skills_text(expl.get("required_skills") or {})
    if not candidates:
        text = f"no agent of team {expl.get('team', '?')} known to the router; needs {need}"
    else:
        reasons = ", ".join(f"{c['agent_id']} ({c.get('filtered_by')})" for c in candidates)
        text = f"nobody qualifies for {need}: {reasons}"
    return text + _rule(expl)


def line(at: datetime, ticket_id: str, channel: str, service: str, text: str) -> str:
    clock = at.astimezone().strftime("%H:%M:%S")
    return f"{clock}  {ticket_id}  {channel:<7} {service:<17} {text}"


# --- the view ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveConfig:
    kafka: str
    topic: str  # tickets.events under the installation's prefix
    partitions: int
    api_url: str
    api_key: str  # an admin or agent key: the explanation is staff-only


class LiveView:
    def __init__(self, config: LiveConfig, out: Callable[[str], None] = say) -> None:
        self.config = config
        self.out = out
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._failed = False
        self._next: dict[int, int] = {}  # partition -> next offset, to resume after an error
        self._tickets: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._thread_main, name="live-view", daemon=True)

    # --- lifecycle (called from the main thread) ---

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the view's positions are fixed: every later event will be shown."""
        return self._ready.wait(timeout) and not self._failed

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(task.cancel)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the thread ---

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # the view is a convenience; it must never stop the desk
            self.out(f"live view: stopped after an error: {type(exc).__name__}: {exc}")
            self._failed = True
            self._ready.set()  # nobody need wait for it any longer

    async def _main(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        headers = {"Authorization": f"Bearer {self.config.api_key}"}
        try:
            async with httpx.AsyncClient(
                base_url=self.config.api_url, headers=headers, timeout=5
            ) as http:
                while not self._stopping.is_set():
                    try:
                        await self._follow(http)
                    except KafkaError as exc:
                        self.out(f"live view: Kafka error ({exc}); retrying in {RETRY_S:.0f}s")
                        await asyncio.sleep(RETRY_S)
        except asyncio.CancelledError:
            pass  # stop() cancelled us: a normal end

    async def _follow(self, http: httpx.AsyncClient) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.kafka,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id="deskstream-live-view",
        )
        await consumer.start()
        try:
            await self._position(consumer)
            self._ready.set()
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        await self._show(http, record.value)
                        self._next[tp.partition] = record.offset + 1
        finally:
            await consumer.stop()

    async def _position(self, consumer: AIOKafkaConsumer) -> None:
        """Resume where we were, else start at the end as it is now (resolved, not lazy)."""
        partitions = [TopicPartition(self.config.topic, p) for p in range(self.config.partitions)]
        consumer.assign(partitions)
        for tp in partitions:
            if tp.partition in self._next:
                consumer.seek(tp, self._next[tp.partition])
            else:
                await consumer.seek_to_end(tp)
                self._next[tp.partition] = await consumer.position(tp)

    # --- one event ---

    async def _show(self, http: httpx.AsyncClient, value: bytes | None) -> None:
        if value is None:
            return
        try:
            event = TICKET_EVENT.validate_json(value)
        except ValidationError:
            return  # a newer event type than this view knows: not for the terminal
        try:
            text = await self._describe(http, event)
        except Exception as exc:  # an explanation of a shape this view does not expect
            text = f"({event.type}; not shown: {type(exc).__name__}: {exc})"
        if text is not None:
            channel, service = self._tickets.get(event.ticket_id, (event.channel.value, "-"))
            self.out(line(event.occurred_at, event.ticket_id, channel, service, text))

    async def _describe(self, http: httpx.AsyncClient, event: Any) -> str | None:
        if isinstance(event, TicketCreated):
            self._remember(event.ticket_id, event.channel.value, event.service_id or "-")
            return f"new: {event.subject[:60]!r} from {event.requester.id}"
        if isinstance(event, TicketAssigned):
            why = await self._why(http, event, why_assigned)
            return f"-> {event.agent_id} ({why})"
        if isinstance(event, TicketQueued):
            why = await self._why(http, event, why_queued)
            return f"queued #{event.position} in {event.team} ({why})"
        if isinstance(event, StatusChanged):
            if event.old is TicketStatus.NEW and event.new is TicketStatus.OPEN:
                return None  # the assignment line already says it
            return f"status {event.old.value} -> {event.new.value}"
        if isinstance(event, MessageAdded) and not (event.caused_by or "").startswith("create:"):
            kind = "note" if event.internal else "message"
            return f"{kind} from {event.author.id}"
        return None

    def _remember(self, ticket_id: str, channel: str, service: str) -> None:
        self._tickets[ticket_id] = (channel, service)
        while len(self._tickets) > TICKETS_REMEMBERED:
            self._tickets.popitem(last=False)

    async def _why(
        self,
        http: httpx.AsyncClient,
        event: TicketAssigned | TicketQueued,
        explain: Callable[[dict[str, Any]], str],
    ) -> str:
        cause = event.caused_by or ""
        if not cause.startswith(ROUTER_COMMAND):
            return f"by {cause or 'a person'}, through the API"
        expl, problem = await self._decision(http, event.ticket_id, cause)
        if expl is None:
            return f"explanation unavailable: {problem}"
        if event.ticket_id not in self._tickets and expl.get("service_id"):
            self._remember(event.ticket_id, event.channel.value, str(expl["service_id"]))
        return explain(expl)

    async def _decision(
        self, http: httpx.AsyncClient, ticket_id: str, command_id: str
    ) -> tuple[dict[str, Any] | None, str]:
        """The router's explanation stored for `command_id`, or (None, what went wrong)."""
        problem = ""
        for attempt in range(1, EXPLAIN_ATTEMPTS + 1):
            try:
                resp = await http.get(f"/v1/tickets/{ticket_id}/explanation")
                if resp.status_code == 200:
                    for decision in resp.json()["decisions"]:
                        if decision["command_id"] == command_id:
                            return dict(decision["explanation"]), ""
                    problem = "decision not stored"
                else:
                    problem = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt < EXPLAIN_ATTEMPTS:
                await asyncio.sleep(0.5 * attempt)
        return None, problem
