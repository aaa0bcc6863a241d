"""The desk's operational state: queues per team, SLA risk, consumer lag.

Read from MongoDB, not from the commands stream, so it is right whoever changed a ticket
(the router's decisions, agents over REST) and after any restart.

*When it is read.* The gauges are refreshed on a timer (`TICKET_API_OPS_REFRESH_S`,
default 15 s), not at scrape time: the cost stays one fixed set of queries per interval
however many Prometheus servers scrape, and a scrape never waits for MongoDB.
`GET /v1/ops/status` reads afresh (an admin's or agent's request, rare).

*What it costs.* Five aggregations per refresh, each served by an index on `tickets`:
- waiting tickets (`waiting`: assignee, status, team, created_at) — it reads only the
  tickets nobody has, so the cost follows the queues, not the ticket history;
- SLA risk (`sla`: status, service_id, created_at): per target and level, one `$or` of
  one range per service (`created_at` older than the service's threshold), grouped by
  service — each branch is an index range over open tickets of one service.

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
from typing import Any

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


async def queues(*, db: AsyncDatabase[Doc]) -> list[TeamQueue]:
    """Per team: tickets nobody has, those of them in the router's queue, and the oldest."""
    pipeline: list[dict[str, Any]] = [
        {"$match": {"assignee": None, "status": {"$in": WAITING}}},
        {"$sort": {"created_at": 1, "_id": 1}},
        {
            "$group": {
                "_id": "$team",
                "waiting": {"$sum": 1},
                "queued": {"$sum": {"$cond": [{"$eq": [{"$type": "$queue"}, "object"]}, 1, 0]}},
                "oldest_at": {"$first": "$created_at"},
                "oldest_id": {"$first": "$_id"},
            }
        },
    ]
    rows = await (await db["tickets"].aggregate(pipeline)).to_list()
    return sorted(
        (
            TeamQueue(
                team=row["_id"] or NO_TEAM,
                waiting=int(row["waiting"]),
                queued=int(row["queued"]),
                oldest_ticket_id=row["oldest_id"],
                oldest_since=row["oldest_at"],
            )
            for row in rows
        ),
        key=lambda q: q.team,
    )


async def sla_risks(
    *, db: AsyncDatabase[Doc], now: datetime, warn_fraction: float
) -> list[SlaRisk]:
    """Open tickets past `warn_fraction` of their service's targets, and past the targets."""
    services = await (
        db["services"]
        .find({}, {"team": 1, "response_minutes": 1, "resolution_minutes": 1})
        .to_list()
    )
    if not services:
        return []
    targets = (
        ("response", "response_minutes", {"assignee": None, "status": {"$in": WAITING}}),
        ("resolution", "resolution_minutes", {"status": {"$in": UNRESOLVED}}),
    )
    out: list[SlaRisk] = []
    for target, minutes, match in targets:
        counts = {}
        for level, fraction in (("warn", warn_fraction), ("breach", 1.0)):
            branches = [
                {
                    "service_id": s["_id"],
                    "created_at": {"$lt": now - timedelta(minutes=s[minutes] * fraction)},
                }
                for s in services
                if s.get(minutes)
            ]
            pipeline: list[dict[str, Any]] = [
                {"$match": {**match, "$or": branches}},
                {"$group": {"_id": "$service_id", "n": {"$sum": 1}}},
            ]
            rows = await (await db["tickets"].aggregate(pipeline)).to_list()
            counts[level] = {row["_id"]: int(row["n"]) for row in rows}
        for s in services:
            warned = counts["warn"].get(s["_id"], 0)
            breached = counts["breach"].get(s["_id"], 0)
            team = s.get("team") or NO_TEAM
            out.append(SlaRisk(team, s["_id"], target, warned - breached, breached))
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
    queue = await queues(db=db)
    risks = await sla_risks(db=db, now=now, warn_fraction=warn_fraction)
    export(queue, risks, now)


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
