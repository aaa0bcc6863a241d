"""The desk's operational state: queues per team, SLA risk, consumer lag.

Read from MongoDB, not from the commands stream, so it is right whoever changed a ticket
(the router's decisions, agents over REST) and after any restart.

*When it is read.* The gauges are refreshed on a timer (`TICKET_API_OPS_REFRESH_S`,
default 15 s), not at scrape time: the cost stays one fixed set of queries per interval
however many Prometheus servers scrape, and a scrape never waits for MongoDB.
`GET /v1/ops/status` reads afresh (an admin's or agent's request, rare).

*What it costs.* One read per refresh: the unresolved tickets (index `sla`: status first),
six small fields each, counted here. Five aggregations over the same tickets cost the
MongoDB-wire test server (SecantusDB) about 3 s of its single core per refresh at 10,000
waiting tickets, and stalled the pipeline's writes every 15 s (the bench's p95 at 40
events/s went from ~0.3 s to 1.5 s); the one read costs about 0.45 s there. The cost
follows the open tickets, never the history.

*Definitions.* Waiting: new or open and unassigned (pending tickets wait on the requester
or on peers, not on the desk). Queued: waiting with a queue place from the router. SLA
targets come from the service catalogue: `response` is at risk while nobody has the
ticket past `warn_fraction` of `response_minutes` (the desk records no first reply yet,
so taking the ticket counts as the response); `resolution` while it is new, open or
pending past that share of `resolution_minutes`. Tickets without a service have no target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from deskstream.events import TicketStatus
from deskstream.lag import GroupLag, PartitionLag
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from deskstream_ticket_api import metrics
from deskstream_ticket_api.db import Doc

log = logging.getLogger(__name__)

NO_TEAM = "none"
WAITING = [TicketStatus.NEW.value, TicketStatus.OPEN.value]
UNRESOLVED = [TicketStatus.NEW.value, TicketStatus.OPEN.value, TicketStatus.PENDING.value]


@dataclass(frozen=True)
class TeamQueue:
    team: str
    waiting: int
    queued: int
    oldest_ticket_id: str
    oldest_since: datetime

    def age_s(self, now: datetime) -> float:
        return max(0.0, (now - self.oldest_since).total_seconds())


@dataclass(frozen=True)
class SlaRisk:
    team: str
    service: str
    target: str  # response | resolution
    at_risk: int
    breached: int


# The few fields the gauges need from each unresolved ticket.
OPEN_FIELDS = {"team": 1, "service_id": 1, "created_at": 1, "assignee": 1, "status": 1, "queue": 1}


@dataclass(frozen=True)
class Snapshot:
    queues: list[TeamQueue]
    risks: list[SlaRisk]


async def snapshot(*, db: AsyncDatabase[Doc], now: datetime, warn_fraction: float) -> Snapshot:
    """The queues and SLA risks of this moment, from one read of the unresolved tickets."""
    services = await (
        db["services"]
        .find({}, {"team": 1, "response_minutes": 1, "resolution_minutes": 1})
        .to_list()
    )
    tickets = await db["tickets"].find({"status": {"$in": UNRESOLVED}}, OPEN_FIELDS).to_list()
    return Snapshot(queues(tickets), sla_risks(tickets, services, now, warn_fraction))


def _waiting(ticket: Doc) -> bool:
    return ticket.get("assignee") is None and ticket.get("status") in WAITING


def queues(tickets: list[Doc]) -> list[TeamQueue]:
    """Per team: tickets nobody has, those of them in the router's queue, and the oldest."""
    waiting: dict[str, list[Doc]] = {}
    for t in tickets:
        if _waiting(t):
            waiting.setdefault(t.get("team") or NO_TEAM, []).append(t)
    out = []
    for team, mine in sorted(waiting.items()):
        oldest = min(mine, key=lambda t: (t["created_at"], t["_id"]))
        out.append(
            TeamQueue(
                team=team,
                waiting=len(mine),
                queued=sum(isinstance(t.get("queue"), dict) for t in mine),
                oldest_ticket_id=oldest["_id"],
                oldest_since=oldest["created_at"],
            )
        )
    return out


def sla_risks(
    tickets: list[Doc], services: list[Doc], now: datetime, warn_fraction: float
) -> list[SlaRisk]:
    """Open tickets past `warn_fraction` of their service's targets, and past the targets."""
    by_service: dict[str, list[Doc]] = {}
    for t in tickets:
        by_service.setdefault(t.get("service_id") or "", []).append(t)
    out: list[SlaRisk] = []
    for target, minutes in (("response", "response_minutes"), ("resolution", "resolution_minutes")):
        for s in services:
            mine = by_service.get(s["_id"], [])
            if target == "response":
                mine = [t for t in mine if _waiting(t)]
            warned = breached = 0
            if s.get(minutes):
                warn_before = now - timedelta(minutes=s[minutes] * warn_fraction)
                breach_before = now - timedelta(minutes=s[minutes])
                ages = [t["created_at"] for t in mine if t.get("created_at") is not None]
                warned = sum(at < warn_before for at in ages)
                breached = sum(at < breach_before for at in ages)
            out.append(
                SlaRisk(s.get("team") or NO_TEAM, s["_id"], target, warned - breached, breached)
            )
    return out


def export(queue: list[TeamQueue], risks: list[SlaRisk], now: datetime) -> None:
    """Set the gauges to this snapshot; teams and services no longer in it disappear.

    Cleared and set without an await in between, so no scrape sees a half-made snapshot.
    """
    for gauge in (metrics.TICKETS_WAITING, metrics.QUEUE_DEPTH, metrics.OLDEST_WAITING_SECONDS):
        gauge.clear()
    for q in queue:
        metrics.TICKETS_WAITING.labels(q.team).set(q.waiting)
        metrics.QUEUE_DEPTH.labels(q.team).set(q.queued)
        metrics.OLDEST_WAITING_SECONDS.labels(q.team).set(q.age_s(now))
    metrics.SLA_AT_RISK.clear()
    metrics.SLA_BREACHED.clear()
    for r in risks:
        metrics.SLA_AT_RISK.labels(r.team, r.service, r.target).set(r.at_risk)
        metrics.SLA_BREACHED.labels(r.team, r.service, r.target).set(r.breached)
    metrics.OPS_REFRESHED.set(time.time())


async def refresh(*, db: AsyncDatabase[Doc], warn_fraction: float, now: datetime) -> None:
    snap = await snapshot(db=db, now=now, warn_fraction=warn_fraction)
    export(snap.queues, snap.risks, now)


async def refresh_every(
    *, db: AsyncDatabase[Doc], interval_s: float, warn_fraction: float, stop: asyncio.Event
) -> None:
    """Refresh the gauges until `stop`; a MongoDB outage leaves the last values standing."""
    while not stop.is_set():
        try:
            await refresh(db=db, warn_fraction=warn_fraction, now=datetime.now(UTC))
        except PyMongoError as exc:
            log.warning("queue metrics not refreshed", extra={"error": repr(exc)[:300]})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def group_lags(
    lag: GroupLag, groups: list[str], timeout_s: float = 5.0
) -> list[tuple[str, list[PartitionLag] | None, str | None]]:
    """Each group's partitions, or the error that kept the broker from answering in time."""
    out: list[tuple[str, list[PartitionLag] | None, str | None]] = []
    for group in groups:
        try:
            out.append((group, await asyncio.wait_for(lag.lag(group), timeout_s), None))
        except TimeoutError:
            await lag.close()
            out.append((group, None, f"Kafka did not answer within {timeout_s:.0f} s"))
        except Exception as exc:  # Kafka down: the status says so instead of failing
            out.append((group, None, f"{type(exc).__name__}: {exc}"[:300]))
    return out
