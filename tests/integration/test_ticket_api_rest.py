"""ticket-api REST on real Kafka and MongoDB: auth, input safety, roster, catalogue, tickets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from deskstream import ids
from deskstream.events import (
    TICKET_EVENT,
    AgentState,
    Channel,
    DeliveryResult,
    InboundMessage,
    OutboundReply,
    ServiceEntry,
    StatusChanged,
    TicketAssigned,
)

from tests.conftest import Infra
from tests.integration.test_ticket_api_kit import (
    Api,
    assert_each_once,
    assign_cmd,
    create_cmd,
    deflect_cmd,
    inbound,
    queue_cmd,
    read_topic,
    running_api,
    settings_for,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def api(infra: Infra, topic_prefix: str, mongo_db: Any) -> AsyncIterator[Api]:
    async with running_api(settings_for(infra, topic_prefix, mongo_db.name)) as running:
        yield running


async def seed_roster(api: Api) -> None:
    admin = api.admin
    for team in ("network", "apps"):
        resp = await api.client.post(
            "/v1/teams", json={"team_id": team, "name": team.title()}, headers=admin
        )
        assert resp.status_code == 201, resp.text
    for agent, teams in (("alice", ["network"]), ("bob", ["network", "apps"])):
        resp = await api.client.post(
            "/v1/agents",
            json={"agent_id": agent, "name": agent.title(), "teams": teams, "skills": {"vpn": 4}},
            headers=admin,
        )
        assert resp.status_code == 201, resp.text


def portal_message(user: str, n: int) -> InboundMessage:
    return inbound(
        source_id=f"{user}-{n}",
        channel=Channel.PORTAL,
        sender=user,
        kind="portal",
        subject=f"Laptop {n}",
    )


# --- Authentication and authorisation -------------------------------------------------


async def test_auth_matrix(api: Api) -> None:
    c = api.client
    # Open: the ops routes only.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await c.get(path)).status_code == 200, path
    # No key, a wrong key: 401 with a message saying how to authenticate.
    resp = await c.get("/v1/tickets")
    assert resp.status_code == 401
    assert "API key" in resp.json()["detail"]
    assert resp.headers["www-authenticate"] == "Bearer"
    assert (await c.get("/v1/tickets", headers={"X-API-Key": "nope" * 8})).status_code == 401
    assert (await c.get("/v1/openapi.json")).status_code == 401
    # The admin key from the setting, by either header.
    assert (await c.get("/v1/tickets", headers=api.admin)).status_code == 200
    from tests.integration.test_ticket_api_kit import ADMIN_KEY

    assert (await c.get("/v1/tickets", headers={"X-API-Key": ADMIN_KEY})).status_code == 200
    openapi = await c.get("/v1/openapi.json", headers=api.admin)
    assert openapi.status_code == 200
    assert "/v1/portal/requests" in openapi.json()["paths"]

    await seed_roster(api)
    alice = api.auth(await api.issue_key("agent", "alice"))
    maria = api.auth(await api.issue_key("portal", "maria"))
    omar = api.auth(await api.issue_key("portal", "omar"))
    # A key for an agent who does not exist is refused, naming the field.
    resp = await c.post(
        "/v1/api-keys", json={"role": "agent", "subject": "nobody"}, headers=api.admin
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "subject"]

    # Agents work tickets but manage neither the roster, the catalogue nor keys.
    assert (await c.get("/v1/tickets", headers=alice)).status_code == 200
    assert (await c.get("/v1/agents", headers=alice)).status_code == 200
    forbidden = [
        ("POST", "/v1/agents", {"agent_id": "eve", "name": "Eve"}),
        ("PATCH", "/v1/agents/bob", {"name": "Robert"}),
        ("DELETE", "/v1/agents/bob", None),
        ("POST", "/v1/teams", {"team_id": "x", "name": "X"}),
        ("POST", "/v1/catalogue/services", {"service_id": "s", "name": "S", "team": "apps"}),
        ("POST", "/v1/api-keys", {"role": "admin", "subject": "alice"}),
        ("GET", "/v1/api-keys", None),
        ("PUT", "/v1/agents/bob/presence", {"presence": "online"}),
    ]
    for method, path, body in forbidden:
        resp = await c.request(method, path, json=body, headers=alice)
        assert resp.status_code == 403, (method, path, resp.text)
        assert "role" in resp.text or "own" in resp.text
    resp = await c.put("/v1/agents/alice/presence", json={"presence": "online"}, headers=alice)
    assert resp.status_code == 200, resp.text
    assert resp.json()["presence"] == "online"

    # Portal users: portal routes only, and only their own tickets.
    assert (await c.get("/v1/tickets", headers=maria)).status_code == 403
    assert (await c.get("/v1/agents", headers=maria)).status_code == 403
    m1, o1 = portal_message("maria", 1), portal_message("omar", 1)
    assert await api.apply(create_cmd(m1), create_cmd(o1)) == {}
    mine, theirs = ids.ticket_id_for(m1.event_id), ids.ticket_id_for(o1.event_id)
    resp = await c.post(
        f"/v1/tickets/{mine}/messages",
        json={"text": "checked the asset register", "internal": True},
        headers=alice,
    )
    assert resp.status_code == 201, resp.text
    resp = await c.post(
        f"/v1/tickets/{mine}/messages", json={"text": "We are on it."}, headers=alice
    )
    assert resp.status_code == 201, resp.text

    resp = await c.get(f"/v1/portal/tickets/{mine}", headers=maria)
    assert resp.status_code == 200, resp.text
    assert resp.json()["ticket_id"] == mine
    assert "assignee" not in resp.json()
    resp = await c.get(f"/v1/portal/tickets/{theirs}", headers=maria)
    assert resp.status_code == 404
    assert (await c.get(f"/v1/portal/tickets/{theirs}/messages", headers=maria)).status_code == 404
    listed = (await c.get("/v1/portal/tickets", headers=maria)).json()["items"]
    assert [t["ticket_id"] for t in listed] == [mine]
    listed = (await c.get("/v1/portal/tickets", headers=omar)).json()["items"]
    assert [t["ticket_id"] for t in listed] == [theirs]
    # The requester sees the conversation, never the internal note.
    messages = (await c.get(f"/v1/portal/tickets/{mine}/messages", headers=maria)).json()
    texts = [m["text"] for m in messages["items"]]
    assert texts == [m1.text, "We are on it."]
    # Staff see everything; the explanation is for staff only.
    staff_view = (await c.get(f"/v1/tickets/{mine}/messages", headers=alice)).json()["items"]
    assert len(staff_view) == 3
    assert (await c.get(f"/v1/tickets/{mine}/explanation", headers=maria)).status_code == 403

    # Deleting an agent retires their keys with them.
    bob = api.auth(await api.issue_key("agent", "bob"))
    assert (await c.get("/v1/tickets", headers=bob)).status_code == 200
    assert (await c.delete("/v1/agents/bob", headers=api.admin)).status_code == 204
    assert (await c.get("/v1/tickets", headers=bob)).status_code == 401
    # A revoked key stops working at once.
    keys = (await c.get("/v1/api-keys", headers=api.admin)).json()
    omar_key = next(k for k in keys if k["subject"] == "omar")
    assert "hash" not in omar_key
    assert "key" not in omar_key
    resp = await c.delete(f"/v1/api-keys/{omar_key['key_id']}", headers=api.admin)
    assert resp.status_code == 204
    assert (await c.get("/v1/portal/tickets", headers=omar)).status_code == 401


# --- Input safety ---------------------------------------------------------------------


async def test_operator_injection_and_bad_input_are_rejected(api: Api) -> None:
    c, admin = api.client, api.admin
    await seed_roster(api)
    message = inbound(source_id="inject-1")
    assert await api.apply(create_cmd(message)) == {}
    ticket_id = ids.ticket_id_for(message.event_id)

    injected = [
        "/v1/tickets?status[$ne]=x",
        "/v1/tickets?team[$gt]=",
        '/v1/tickets?requester={"$ne": null}',
        "/v1/tickets?assignee=%7B%22%24ne%22%3Anull%7D",
        "/v1/tickets?status=%7B%22%24ne%22%3Anull%7D",
        "/v1/tickets?channel[$in]=email",
        "/v1/tickets?$where=1",
        "/v1/tickets?cursor=eyIkbmUiOm51bGx9",  # base64 of {"$ne":null}
        "/v1/agents?team[$ne]=x",
        "/v1/tickets/DS-AAAAAAAA%22%24ne",
    ]
    for path in injected:
        resp = await c.get(path, headers=admin)
        assert resp.status_code == 422, (path, resp.status_code, resp.text)
        assert resp.json()["detail"], path
    # A literal that merely looks odd matches nothing rather than everything.
    resp = await c.get("/v1/tickets", params={"requester": "maria@example.com"}, headers=admin)
    assert [t["ticket_id"] for t in resp.json()["items"]] == [ticket_id]
    resp = await c.get("/v1/tickets", params={"requester": "null"}, headers=admin)
    assert resp.json()["items"] == []

    bodies = [
        ("PATCH", f"/v1/tickets/{ticket_id}", {"status": {"$ne": None}}, "status"),
        ("POST", "/v1/agents", {"agent_id": {"$gt": ""}, "name": "X"}, "agent_id"),
        ("POST", "/v1/agents", {"agent_id": "$where", "name": "X"}, "agent_id"),
        ("POST", "/v1/agents", {"agent_id": "eve", "name": "Eve", "skills": {"$x": 1}}, "skills"),
        ("POST", "/v1/agents", {"agent_id": "eve", "name": "Eve", "skills": {"a.b": 1}}, "skills"),
        ("POST", "/v1/agents", {"agent_id": "eve", "name": "Eve", "skills": {"vpn": 6}}, "skills"),
        ("POST", "/v1/agents", {"agent_id": "eve", "name": "Eve", "role": "admin"}, "role"),
        ("POST", "/v1/agents", {"agent_id": "eve", "name": "Eve", "teams": ["nope"]}, "teams"),
        ("POST", "/v1/agents", {"agent_id": "eve"}, "name"),
        ("POST", "/v1/agents", {"agent_id": "e" * 101, "name": "E"}, "agent_id"),
        ("PATCH", "/v1/agents/alice", {"capacity": {"chat": 99}}, "capacity"),
        ("POST", f"/v1/tickets/{ticket_id}/messages", {"text": ""}, "text"),
        ("POST", f"/v1/tickets/{ticket_id}/assignment", {"agent_id": "ghost"}, "agent_id"),
    ]
    for method, path, body, field_name in bodies:
        resp = await c.request(method, path, json=body, headers=admin)
        assert resp.status_code == 422, (method, path, body, resp.text)
        assert field_name in json.dumps(resp.json()["detail"]), (field_name, resp.text)
    resp = await c.post(
        "/v1/agents", content=b"{not json", headers={**admin, "content-type": "application/json"}
    )
    assert resp.status_code == 422

    # Bodies over the limit are refused before they are parsed: declared and streamed.
    big = b'{"text": "' + b"x" * (1_100_000) + b'"}'
    resp = await c.post(
        f"/v1/tickets/{ticket_id}/messages",
        content=big,
        headers={**admin, "content-type": "application/json"},
    )
    assert resp.status_code == 413
    assert "larger than" in resp.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield b"x" * 100_000

    resp = await c.post(
        f"/v1/tickets/{ticket_id}/messages",
        content=chunks(),
        headers={**admin, "content-type": "application/json"},
    )
    assert resp.status_code == 413
    # Nothing was stored by any of it.
    resp = await c.get(f"/v1/tickets/{ticket_id}/messages", headers=admin)
    assert len(resp.json()["items"]) == 1


# --- Roster and catalogue -------------------------------------------------------------


async def test_agents_crud_publishes_agent_state(api: Api) -> None:
    c, admin = api.client, api.admin
    await c.post("/v1/teams", json={"team_id": "network", "name": "Network"}, headers=admin)
    await c.post("/v1/teams", json={"team_id": "apps", "name": "Apps"}, headers=admin)
    resp = await c.post(
        "/v1/agents",
        json={
            "agent_id": "alice",
            "name": "Alice",
            "teams": ["network"],
            "skills": {"vpn": 4, "wifi": 2},
            "capacity": {"email": 8, "chat": 2, "total": 10},
        },
        headers=admin,
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["capacity"]["chat"] == 2
    assert (
        await c.post("/v1/agents", json={"agent_id": "alice", "name": "A"}, headers=admin)
    ).status_code == 409
    resp = await c.patch(
        "/v1/agents/alice", json={"teams": ["network", "apps"], "skills": {"vpn": 5}}, headers=admin
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["skills"] == {"vpn": 5}
    assert resp.json()["version"] == 2
    resp = await c.put("/v1/agents/alice/presence", json={"presence": "online"}, headers=admin)
    assert resp.json()["presence"] == "online"
    # Teams with members cannot go.
    resp = await c.delete("/v1/teams/apps", headers=admin)
    assert resp.status_code == 409
    assert "agent" in resp.json()["detail"]
    listed = (await c.get("/v1/agents", params={"team": "apps"}, headers=admin)).json()
    assert [a["agent_id"] for a in listed["items"]] == ["alice"]
    assert (await c.delete("/v1/agents/alice", headers=admin)).status_code == 204
    assert (await c.get("/v1/agents/alice", headers=admin)).status_code == 404
    assert (await c.delete("/v1/teams/apps", headers=admin)).status_code == 204

    topic = api.settings.topics.name("agents.state")
    records = await read_topic(api_infra(api), topic, until=lambda rs: len(rs) >= 4)
    assert_each_once(records)
    assert [r.key for r in records] == [b"alice"] * 4
    states = [AgentState.model_validate_json(r.value) for r in records[:3]]
    assert [s.teams for s in states] == [["network"], ["network", "apps"], ["network", "apps"]]
    assert [s.skills for s in states] == [{"vpn": 4, "wifi": 2}, {"vpn": 5}, {"vpn": 5}]
    assert [s.presence.value for s in states] == ["offline", "offline", "online"]
    assert states[0].capacity.chat == 2
    assert records[3].value is None  # the tombstone removes the agent downstream


def api_infra(api: Api) -> Infra:
    s = api.settings
    return Infra(
        kafka=s.kafka_bootstrap_servers,
        mongodb_uri=s.mongodb_uri.get_secret_value(),
        imap_host="",
        imap_port=0,
        smtp_host="",
        smtp_port=0,
        smtp_maildir=None,
    )


async def test_catalogue_crud_and_critical_services_never_go_to_peers(api: Api) -> None:
    c, admin = api.client, api.admin
    await c.post("/v1/teams", json={"team_id": "finance", "name": "Finance IT"}, headers=admin)
    body = {
        "service_id": "erp",
        "name": "Finance ERP",
        "team": "finance",
        "required_skills": {"sap": 4},
        "criticality": "critical",
        "peers_allowed": True,
    }
    resp = await c.post("/v1/catalogue/services", json=body, headers=admin)
    assert resp.status_code == 422
    assert "critical services can never be opened to peers" in resp.text
    resp = await c.post(
        "/v1/catalogue/services",
        json={**body, "team": "nope", "peers_allowed": False},
        headers=admin,
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "team"]
    resp = await c.post(
        "/v1/catalogue/services", json={**body, "peers_allowed": False}, headers=admin
    )
    assert resp.status_code == 201, resp.text
    # Opening it to peers later is refused just the same, naming the field.
    resp = await c.patch("/v1/catalogue/services/erp", json={"peers_allowed": True}, headers=admin)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "peers_allowed"]
    resp = await c.post(
        "/v1/catalogue/services",
        json={
            "service_id": "printing",
            "name": "Printing",
            "team": "finance",
            "criticality": "low",
            "self_service_allowed": True,
            "peers_allowed": True,
        },
        headers=admin,
    )
    assert resp.status_code == 201, resp.text
    resp = await c.patch(
        "/v1/catalogue/services/erp",
        json={"criticality": "high", "peers_allowed": True},
        headers=admin,
    )
    assert resp.status_code == 200, resp.text
    listed = (await c.get("/v1/catalogue/services", params={"limit": 1}, headers=admin)).json()
    assert [s["service_id"] for s in listed["items"]] == ["erp"]
    nxt = await c.get(
        "/v1/catalogue/services", params={"cursor": listed["next_cursor"]}, headers=admin
    )
    assert [s["service_id"] for s in nxt.json()["items"]] == ["printing"]
    assert (await c.delete("/v1/catalogue/services/printing", headers=admin)).status_code == 204

    topic = api.settings.topics.name("catalogue.services")
    records = await read_topic(api_infra(api), topic, until=lambda rs: len(rs) >= 4)
    assert_each_once(records)
    assert [r.key for r in records] == [b"erp", b"printing", b"erp", b"printing"]
    first = ServiceEntry.model_validate_json(records[0].value)
    assert (first.criticality, first.peers_allowed) == ("critical", False)
    third = ServiceEntry.model_validate_json(records[2].value)
    assert (third.criticality, third.peers_allowed) == ("high", True)
    assert records[3].value is None


# --- Tickets --------------------------------------------------------------------------


async def test_status_lifecycle_and_manual_assignment(api: Api) -> None:
    c, admin = api.client, api.admin
    await seed_roster(api)
    message = inbound(source_id="life-1")
    ticket_id = ids.ticket_id_for(message.event_id)
    assert await api.apply(create_cmd(message, team="network")) == {}

    async def status(to: str) -> Any:
        return await c.patch(f"/v1/tickets/{ticket_id}", json={"status": to}, headers=admin)

    resp = await status("resolved")
    assert resp.status_code == 409
    assert resp.json()["detail"] == (
        "cannot change status from new to resolved; allowed: open, pending"
    )
    assert (await status("new")).json()["detail"] == "ticket is already new"
    assert (await status("bogus")).status_code == 422
    # Assignment opens a new ticket.
    resp = await c.post(
        f"/v1/tickets/{ticket_id}/assignment", json={"agent_id": "alice"}, headers=admin
    )
    assert resp.status_code == 200, resp.text
    assert (resp.json()["status"], resp.json()["assignee"]) == ("open", "alice")
    again = await c.post(
        f"/v1/tickets/{ticket_id}/assignment", json={"agent_id": "alice"}, headers=admin
    )
    assert again.status_code == 409
    resp = await c.post(
        f"/v1/tickets/{ticket_id}/assignment",
        json={"agent_id": "bob", "team": "apps"},
        headers=admin,
    )
    assert resp.json()["assignee"] == "bob"
    for to in ("pending", "open", "resolved", "closed"):
        resp = await status(to)
        assert resp.status_code == 200, (to, resp.text)
        assert resp.json()["status"] == to
    assert (await status("pending")).status_code == 409
    resp = await status("open")  # reopen
    assert resp.status_code == 200
    assert resp.json()["version"] == 8

    topic = api.settings.topics.name("tickets.events")
    records = await read_topic(api_infra(api), topic, until=lambda rs: len(rs) >= 10)
    assert_each_once(records)
    events = [TICKET_EVENT.validate_json(r.value) for r in records]
    assert [e.type for e in events] == [
        "created",
        "message_added",
        "assigned",
        "status_changed",
        "assigned",
        *["status_changed"] * 5,
    ]
    first, second = events[2], events[4]
    assert isinstance(first, TicketAssigned)
    assert isinstance(second, TicketAssigned)
    assert (first.agent_id, first.previous_agent_id, first.status.value) == ("alice", None, "open")
    assert (second.agent_id, second.previous_agent_id, second.team) == ("bob", "alice", "apps")
    changes = [e for e in events if isinstance(e, StatusChanged)]
    assert [(e.old.value, e.new.value) for e in changes] == [
        ("new", "open"),
        ("open", "pending"),
        ("pending", "open"),
        ("open", "resolved"),
        ("resolved", "closed"),
        ("closed", "open"),
    ]
    # Every status change names assignee, team and channel: load derives from this topic.
    assert {(e.assignee, e.channel.value) for e in changes[1:]} == {("bob", "email")}
    assert all(r.key == ticket_id.encode() for r in records)
    assert all(e.caused_by == "admin:bootstrap-admin" for e in events[2:])


async def test_ticket_filters_and_cursor_pagination(
    infra: Infra, topic_prefix: str, mongo_db: Any
) -> None:
    settings = settings_for(infra, topic_prefix, mongo_db.name, page_limit_max=7)
    async with running_api(settings) as api:
        await seed_roster(api)
        c, admin = api.client, api.admin
        cmds: list[Any] = []
        expected: dict[str, dict[str, Any]] = {}
        for n in range(23):
            channel = [Channel.EMAIL, Channel.CHAT, Channel.SOCIAL][n % 3]
            message = inbound(
                source_id=f"page-{n}",
                channel=channel,
                sender=f"user{n % 4}@example.com",
                kind=channel.value,
            )
            team = "network" if n % 2 else "apps"
            service = "vpn" if n % 5 == 0 else None
            cmds.append(create_cmd(message, team=team, service_id=service))
            tid = ids.ticket_id_for(message.event_id)
            expected[tid] = {
                "team": team,
                "channel": channel.value,
                "service_id": service,
                "requester": f"user{n % 4}@example.com",
                "status": "new",
                "assignee": None,
            }
            if n % 3 == 1:
                cmds.append(assign_cmd(tid, "alice" if n % 2 else "bob"))
                expected[tid].update(status="open", assignee="alice" if n % 2 else "bob")
            elif n % 7 == 0:
                cmds.append(deflect_cmd(tid))
                expected[tid]["status"] = "pending"
            elif n % 4 == 2:
                cmds.append(queue_cmd(tid, "network", n))
                expected[tid]["team"] = "network"
        assert await api.apply(*cmds) == {}

        async def all_pages(params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            cursor = None
            for _ in range(50):
                query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
                resp = await c.get("/v1/tickets", params=query, headers=admin)
                assert resp.status_code == 200, resp.text
                page = resp.json()
                assert len(page["items"]) <= 7  # the cap, whatever was asked
                items += page["items"]
                cursor = page["next_cursor"]
                if cursor is None:
                    return items
            raise AssertionError("pagination did not end")

        everything = await all_pages({}, limit=5)
        got = [t["ticket_id"] for t in everything]
        assert sorted(got) == sorted(expected)
        assert len(set(got)) == len(got)
        created = [(t["created_at"], t["ticket_id"]) for t in everything]
        assert created == sorted(created, reverse=True)
        assert [t["ticket_id"] for t in await all_pages({}, limit=100_000)] == got

        cases: list[tuple[dict[str, Any], Any]] = [
            ({"team": "network"}, lambda e: e["team"] == "network"),
            ({"channel": "chat"}, lambda e: e["channel"] == "chat"),
            ({"service": "vpn"}, lambda e: e["service_id"] == "vpn"),
            ({"requester": "user1@example.com"}, lambda e: e["requester"] == "user1@example.com"),
            ({"assignee": "alice"}, lambda e: e["assignee"] == "alice"),
            ({"status": ["open", "pending"]}, lambda e: e["status"] in ("open", "pending")),
            (
                {"status": "new", "channel": "email", "team": "apps"},
                lambda e: (e["status"], e["channel"], e["team"]) == ("new", "email", "apps"),
            ),
        ]
        for params, match in cases:
            want = sorted(t for t, e in expected.items() if match(e))
            assert want, params
            got_ids = [t["ticket_id"] for t in await all_pages(params, limit=3)]
            assert sorted(got_ids) == want, params
            assert len(set(got_ids)) == len(got_ids)


async def test_messages_replies_notes_and_explanation(
    infra: Infra, topic_prefix: str, mongo_db: Any
) -> None:
    settings = settings_for(infra, topic_prefix, mongo_db.name, publish_replies=True)
    async with running_api(settings) as api:
        await seed_roster(api)
        c = api.client
        alice = api.auth(await api.issue_key("agent", "alice"))
        message = inbound(source_id="msg-1")
        ticket_id = ids.ticket_id_for(message.event_id)
        explanation = {"candidates": [{"agent": "alice", "score": 0.8}], "$filter": "skill.vpn>=3"}
        assert (
            await api.apply(
                create_cmd(message), assign_cmd(ticket_id, "alice", explanation=explanation)
            )
            == {}
        )
        key = {"Idempotency-Key": "reply-0001-abcdef"}
        first = await c.post(
            f"/v1/tickets/{ticket_id}/messages",
            json={"text": "Try this."},
            headers={**alice, **key},
        )
        assert first.status_code == 201, first.text
        retry = await c.post(
            f"/v1/tickets/{ticket_id}/messages",
            json={"text": "Try this."},
            headers={**alice, **key},
        )
        assert retry.json()["message_id"] == first.json()["message_id"]
        reply = first.json()
        assert (reply["kind"], reply["internal"], reply["delivery"]["status"]) == (
            "reply",
            False,
            "queued",
        )
        assert reply["author"] == {
            "channel": "email",
            "kind": "agent",
            "id": "alice",
            "display_name": None,
            "handle": None,
        }
        note = await c.post(
            f"/v1/tickets/{ticket_id}/messages",
            json={"text": "user is on the old client", "internal": True},
            headers=alice,
        )
        assert (note.json()["kind"], note.json()["delivery"]) == ("note", None)
        ticket = (await c.get(f"/v1/tickets/{ticket_id}", headers=alice)).json()
        assert ticket["message_count"] == 3

        resp = await c.get(f"/v1/tickets/{ticket_id}/explanation", headers=alice)
        assert resp.status_code == 200
        decisions = resp.json()["decisions"]
        assert [d["type"] for d in decisions] == ["assign"]
        assert decisions[0]["explanation"] == explanation

        events_topic = api.settings.topics.name("tickets.events")
        records = await read_topic(infra, events_topic, until=lambda rs: len(rs) >= 6)
        assert_each_once(records)
        added = [
            e
            for e in (TICKET_EVENT.validate_json(r.value) for r in records)
            if e.type == "message_added"
        ]
        assert [(e.author.kind, e.internal) for e in added] == [
            ("email", False),
            ("agent", False),
            ("agent", True),
        ]
        # The reply goes to the requester's channel; the internal note never does.
        outbound = await read_topic(
            infra, api.settings.topics.outbound(Channel.EMAIL), until=lambda rs: len(rs) >= 1
        )
        assert len(outbound) == 1
        out = OutboundReply.model_validate_json(outbound[0].value)
        assert (out.ticket_id, out.text, out.recipient.id) == (
            ticket_id,
            "Try this.",
            "maria@example.com",
        )
        assert out.in_reply_to == message.event_id
        assert outbound[0].key == message.conversation_key.encode()

        # The channel service reports back: the reply shows it, and tickets.events says so.
        report = DeliveryResult(
            command_id=f"delivery:{out.reply_id}",
            ticket_id=ticket_id,
            reply_id=out.reply_id,
            delivered=False,
            detail="550 mailbox unavailable",
        )
        assert await api.apply(report, report) == {}
        shown = (await c.get(f"/v1/tickets/{ticket_id}/messages", headers=alice)).json()
        statuses = {m["message_id"]: m["delivery"] for m in shown["items"]}
        assert statuses[out.reply_id]["status"] == "failed"
        assert statuses[out.reply_id]["detail"] == "550 mailbox unavailable"
        records = await read_topic(infra, events_topic, until=lambda rs: len(rs) >= 7)
        reports = [
            e
            for e in (TICKET_EVENT.validate_json(r.value) for r in records)
            if e.type == "delivery"
        ]
        assert [(e.reply_id, e.delivered, e.channel) for e in reports] == [
            (out.reply_id, False, Channel.EMAIL)
        ]


async def test_portal_request_is_published_to_inbound_portal(api: Api) -> None:
    c, admin = api.client, api.admin
    await c.post("/v1/teams", json={"team_id": "apps", "name": "Apps"}, headers=admin)
    resp = await c.post(
        "/v1/catalogue/services",
        json={"service_id": "laptops", "name": "Laptops", "team": "apps"},
        headers=admin,
    )
    assert resp.status_code == 201
    maria = api.auth(await api.issue_key("portal", "maria"))
    body = {"service_id": "laptops", "subject": "Screen flickers", "description": "Since Monday."}

    resp = await c.post("/v1/portal/requests", json={**body, "service_id": "nope"}, headers=maria)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "service_id"]
    assert "unknown service" in resp.json()["detail"][0]["msg"]
    resp = await c.post("/v1/portal/requests", json={**body, "subject": ""}, headers=maria)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "subject"]
    # The requester is the key's user: the body cannot name someone else.
    resp = await c.post(
        "/v1/portal/requests", json={**body, "requester": "ceo@example.com"}, headers=maria
    )
    assert resp.status_code == 422
    assert (await c.post("/v1/portal/requests", json=body, headers=admin)).status_code == 403

    key = "req-2024-000001"
    resp = await c.post("/v1/portal/requests", json=body, headers={**maria, "Idempotency-Key": key})
    assert resp.status_code == 202, resp.text
    event_id = ids.event_id("portal", "maria", key)
    assert resp.json() == {
        "request_id": key,
        "ticket_id": ids.ticket_id_for(event_id),
        "event_id": event_id,
        "status": "accepted",
    }
    generated = await c.post("/v1/portal/requests", json=body, headers=maria)
    assert generated.status_code == 202
    generated_id = generated.json()["request_id"]
    assert generated.json()["ticket_id"] == ids.ticket_id_for(
        ids.event_id("portal", "maria", generated_id)
    )

    topic = api.settings.topics.inbound(Channel.PORTAL)
    records = await read_topic(api_infra(api), topic, until=lambda rs: len(rs) >= 2)
    assert len(records) == 2
    record = next(r for r in records if r.key == f"portal:{key}".encode())
    message = InboundMessage.model_validate_json(record.value)
    assert message.event_id == event_id
    assert message.channel is Channel.PORTAL
    assert message.conversation_key == f"portal:{key}"
    assert (message.sender.kind, message.sender.id) == ("portal", "maria")
    assert (message.subject, message.text, message.service_hint) == (
        "Screen flickers",
        "Since Monday.",
        "laptops",
    )
    headers = dict(record.headers)
    assert headers["ce_id"] == event_id.encode()
    assert headers["ce_type"] == b"deskstream.inbound.message"
