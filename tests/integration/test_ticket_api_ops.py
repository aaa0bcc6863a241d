"""The ticket-api's view of the desk's queues and SLA risk, on the real MongoDB-wire server.

Tickets are made through the commands consumer's own function with back-dated commands
(a ticket's `created_at` is its create command's `issued_at`), so SLA risk is measured
without waiting; the app runs in-process with its real lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from deskstream import ids
from deskstream_ticket_api import ops
from prometheus_client import REGISTRY

from tests.conftest import Infra
from tests.integration.test_ticket_api_kit import (
    Api,
    assign_cmd,
    create_cmd,
    deflect_cmd,
    inbound,
    queue_cmd,
    running_api,
    settings_for,
)

TEAM = "ops-team"


@pytest.fixture
async def api(infra: Infra, topic_prefix: str, mongo_db: Any) -> AsyncIterator[Api]:
    settings = settings_for(infra, topic_prefix, mongo_db.name, ops_refresh_s=0)
    async with running_api(settings) as api:
        yield api


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_queues_sla_risk_gauges_and_ops_status(api: Api) -> None:
    c, now = api.client, datetime.now(UTC)
    assert (
        await c.post("/v1/teams", json={"team_id": TEAM, "name": "Ops"}, headers=api.admin)
    ).status_code == 201
    service = {"service_id": "ops-vpn", "name": "VPN", "team": TEAM, "response_minutes": 10}
    resp = await c.post(
        "/v1/catalogue/services", json={**service, "resolution_minutes": 100}, headers=api.admin
    )
    assert resp.status_code == 201, resp.text

    def ticket(n: int, minutes_ago: float) -> tuple[str, Any]:
        message = inbound(source_id=f"ops-{n}")
        command = create_cmd(message, team=TEAM, service_id="ops-vpn").model_copy(
            update={"issued_at": now - timedelta(minutes=minutes_ago)}
        )
        return ids.ticket_id_for(message.event_id), command

    # Waiting on the desk: 12 min (response breached), 9 min (at risk: past 8 of 10), 1 min.
    (old, c_old), (risky, c_risky), (fresh, c_fresh) = ticket(1, 12), ticket(2, 9), ticket(3, 1)
    # Taken by an agent 85 minutes ago: no response risk, resolution at risk (past 80 of 100).
    (taken, c_taken), (deflected, c_deflected) = ticket(4, 85), ticket(5, 200)
    decisions = "deskstream_routing_decisions_total"
    before = {
        o: gauge(decisions, outcome=o, channel="email", team=TEAM) or 0
        for o in ("assigned", "queued", "queue_moved", "deflected")
    }
    assert await api.apply(c_old, c_risky, c_fresh, c_taken, c_deflected) == {}
    assert (
        await api.apply(
            queue_cmd(old, TEAM, 1),
            queue_cmd(old, TEAM, 2),  # moved back one place
            assign_cmd(taken, "someone", team=TEAM),
            deflect_cmd(deflected),  # pending: waits for self-service, not for the desk
        )
        == {}
    )
    after = {
        o: (gauge(decisions, outcome=o, channel="email", team=TEAM) or 0) - before[o]
        for o in before
    }
    assert after == {"assigned": 1, "queued": 1, "queue_moved": 1, "deflected": 1}

    snap = await ops.snapshot(db=api.runtime.store.db, now=now, warn_fraction=0.8)
    queues = {q.team: q for q in snap.queues}
    q = queues[TEAM]
    assert (q.waiting, q.queued, q.oldest_ticket_id) == (3, 1, old)
    assert 11 * 60 < q.age_s(now) < 13 * 60

    risks = {(r.service, r.target): (r.at_risk, r.breached) for r in snap.risks}
    assert risks[("ops-vpn", "response")] == (1, 1)  # risky; old
    # Resolution (100 min): taken (85) at risk; deflected (200, pending) breached.
    assert risks[("ops-vpn", "resolution")] == (1, 1)

    await ops.refresh(db=api.runtime.store.db, warn_fraction=0.8, now=now)
    assert gauge("deskstream_tickets_waiting", team=TEAM) == 3
    assert gauge("deskstream_queue_depth", team=TEAM) == 1
    assert (gauge("deskstream_oldest_waiting_ticket_age_seconds", team=TEAM) or 0) > 11 * 60
    sla = {"team": TEAM, "service": "ops-vpn"}
    assert gauge("deskstream_tickets_sla_at_risk", target="response", **sla) == 1
    assert gauge("deskstream_tickets_sla_breached", target="response", **sla) == 1
    assert gauge("deskstream_tickets_sla_at_risk", target="resolution", **sla) == 1

    # The same over REST, for staff (admins and agents) only.
    agent = {"agent_id": "someone", "name": "Some One", "teams": [TEAM]}
    assert (await c.post("/v1/agents", json=agent, headers=api.admin)).status_code == 201
    someone = api.auth(await api.issue_key("agent", "someone"))
    assert (await c.get("/v1/ops/status", headers=someone)).status_code == 200
    resp = await c.get("/v1/ops/status", headers=api.admin)
    assert resp.status_code == 200, resp.text
    status = resp.json()
    (team,) = [t for t in status["teams"] if t["team"] == TEAM]
    assert team["oldest_unassigned"]["ticket_id"] == old
    assert (team["waiting"], team["queued"]) == (3, 1)
    assert {(s["target"], s["at_risk"], s["breached"]) for s in status["sla"]} == {
        ("response", 1, 1),
        ("resolution", 1, 1),
    }
    assert {g["group"] for g in status["consumer_lag"]} == {"router", "ticket-api-commands"}
    portal = api.auth(await api.issue_key("portal", "maria"))
    assert (await c.get("/v1/ops/status", headers=portal)).status_code == 403
    assert (await c.get("/v1/ops/status")).status_code == 401

    # Once nobody waits any more, the team's gauges go away with the next refresh.
    assert (
        await api.apply(
            assign_cmd(old, "someone", 2, team=TEAM),
            assign_cmd(risky, "someone", 3, team=TEAM),
            assign_cmd(fresh, "someone", 4, team=TEAM),
        )
        == {}
    )
    await ops.refresh(db=api.runtime.store.db, warn_fraction=0.8, now=now)
    assert gauge("deskstream_tickets_waiting", team=TEAM) is None
