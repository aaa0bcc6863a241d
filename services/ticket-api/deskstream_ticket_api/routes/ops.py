"""Operations: consumer lag and the oldest unassigned ticket per team, without extra tools."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from deskstream_ticket_api import ops
from deskstream_ticket_api.auth import STAFF, Principal
from deskstream_ticket_api.models import (
    GroupLagRead,
    OldestTicketRead,
    OpsStatusRead,
    PartitionLagRead,
    SlaRiskRead,
    TeamQueueRead,
)
from deskstream_ticket_api.routes.deps import RuntimeDep, documented

router = APIRouter(tags=["ops"], responses=documented(403))
Staff = Annotated[Principal, Depends(STAFF)]


@router.get("/ops/status", response_model=OpsStatusRead)
async def status(rt: RuntimeDep, _: Staff) -> OpsStatusRead:
    """Read now: the consumer groups' lag (TICKET_API_OPS_GROUPS: the router's and this
    service's by default), each team's waiting tickets and oldest unassigned one, SLA risk."""
    now = datetime.now(UTC)
    prefix = rt.settings.topic_prefix
    groups = [prefix + g for g in rt.settings.ops_groups]
    lags = []
    for group, partitions, error in await ops.group_lags(rt.group_lag, groups):
        parts = [
            PartitionLagRead(
                topic=p.topic.removeprefix(prefix),
                partition=p.partition,
                committed=p.committed,
                end=p.end,
                lag=p.lag,
            )
            for p in partitions or []
        ]
        lags.append(
            GroupLagRead(
                group=group.removeprefix(prefix),
                lag=None if partitions is None else sum(p.lag for p in parts),
                partitions=parts,
                error=error,
            )
        )
    snap = await ops.snapshot(db=rt.store.db, now=now, warn_fraction=rt.settings.sla_warn_fraction)
    return OpsStatusRead(
        at=now,
        consumer_lag=lags,
        teams=[
            TeamQueueRead(
                team=q.team,
                waiting=q.waiting,
                queued=q.queued,
                oldest_unassigned=OldestTicketRead(
                    ticket_id=q.oldest_ticket_id, since=q.oldest_since, age_s=q.age_s(now)
                ),
            )
            for q in snap.queues
        ],
        sla=[
            SlaRiskRead(
                team=r.team,
                service=r.service,
                target=r.target,
                at_risk=r.at_risk,
                breached=r.breached,
            )
            for r in snap.risks
            if r.at_risk or r.breached
        ],
    )
