"""Who may call what: every route of the ticket-api, for no key and for each role.

The routes are read from the app itself, so a new route fails this test until it is added
to the table below. The table is checked twice: against the auth dependency each route
declares (`auth.ADMIN`, `STAFF`, `PORTAL`, `ANY`), and against the served API, through
its entry point on the real Kafka and MongoDB.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deskstream_ticket_api import auth
from deskstream_ticket_api.app import create_app
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from tests.conftest import Infra
from tests.integration.test_ticket_api_kit import ServedDesk, served_desk, settings_for

pytestmark = pytest.mark.timeout(240)

OPEN = frozenset[str]()  # no key needed
ADMIN = frozenset({"admin"})
STAFF = frozenset({"admin", "agent"})
PORTAL = frozenset({"portal"})
ANYONE = frozenset({"admin", "agent", "portal"})
ROLES = ("admin", "agent", "portal")

# fmt: off
# route                                          who may call it
MATRIX: dict[str, frozenset[str]] = {
    "GET /healthz":                                  OPEN,
    "GET /readyz":                                   OPEN,
    "GET /metrics":                                  OPEN,
    "GET /v1/openapi.json":                          ANYONE,
    "GET /v1/ops/status":                            STAFF,
    "GET /v1/tickets":                               STAFF,
    "GET /v1/tickets/{ticket_id}":                   STAFF,
    "PATCH /v1/tickets/{ticket_id}":                 STAFF,
    "GET /v1/tickets/{ticket_id}/messages":          STAFF,
    "POST /v1/tickets/{ticket_id}/messages":         STAFF,
    "POST /v1/tickets/{ticket_id}/assignment":       STAFF,
    "GET /v1/tickets/{ticket_id}/explanation":       STAFF,
    "GET /v1/agents":                                STAFF,
    "POST /v1/agents":                               ADMIN,
    "GET /v1/agents/{agent_id}":                     STAFF,
    "PATCH /v1/agents/{agent_id}":                   ADMIN,
    "DELETE /v1/agents/{agent_id}":                  ADMIN,
    "PUT /v1/agents/{agent_id}/presence":            STAFF,   # an agent: only their own
    "GET /v1/teams":                                 STAFF,
    "POST /v1/teams":                                ADMIN,
    "GET /v1/teams/{team_id}":                       STAFF,
    "PATCH /v1/teams/{team_id}":                     ADMIN,
    "DELETE /v1/teams/{team_id}":                    ADMIN,
    "GET /v1/catalogue/services":                    STAFF,
    "POST /v1/catalogue/services":                   ADMIN,
    "GET /v1/catalogue/services/{service_id}":       STAFF,
    "PATCH /v1/catalogue/services/{service_id}":     ADMIN,
    "DELETE /v1/catalogue/services/{service_id}":    ADMIN,
    "POST /v1/portal/requests":                      PORTAL,
    "GET /v1/portal/services":                       PORTAL,
    "GET /v1/portal/tickets":                        PORTAL,  # only their own
    "GET /v1/portal/tickets/{ticket_id}":            PORTAL,  # only their own
    "GET /v1/portal/tickets/{ticket_id}/messages":   PORTAL,  # only their own
    "GET /v1/portal/contact":                        PORTAL,
    "POST /v1/api-keys":                             ADMIN,
    "GET /v1/api-keys":                              ADMIN,
    "DELETE /v1/api-keys/{key_id}":                  ADMIN,
    "GET /v1/contacts":                              STAFF,
    "GET /v1/contacts/{contact_id}":                 ANYONE,  # a portal user: only their own
    "GET /v1/contacts/{contact_id}/suggestions":     STAFF,
    "POST /v1/contacts/{contact_id}/merge":          ADMIN,
    "POST /v1/contacts/{contact_id}/unmerge":        ADMIN,
    "GET /v1/contacts/{contact_id}/audit":           STAFF,
}
# fmt: on

DEPENDENCY_ROLES = {auth.ADMIN: ADMIN, auth.STAFF: STAFF, auth.PORTAL: PORTAL, auth.ANY: ANYONE}


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def app_routes(infra: Infra) -> dict[str, frozenset[str]]:
    """Every route the app serves, with the roles its auth dependency admits."""
    app = create_app(settings_for(infra, "unused.", "unused"))
    found: dict[str, frozenset[str]] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        assert isinstance(route, APIRoute), f"not a FastAPI route: {route!r}"
        guards = [DEPENDENCY_ROLES[c] for c in _calls(route.dependant) if c in DEPENDENCY_ROLES]
        assert len(guards) <= 1, f"{context.path} has several auth dependencies"
        for method in sorted(context.methods or ()):
            found[f"{method} {context.path}"] = guards[0] if guards else OPEN
    return found


def test_the_table_names_every_route_with_the_roles_its_dependency_admits(infra: Infra) -> None:
    served = app_routes(infra)
    missing = sorted(set(served) - set(MATRIX))
    assert not missing, f"routes the authorization table does not mention: {missing}"
    gone = sorted(set(MATRIX) - set(served))
    assert not gone, f"the table names routes the app does not serve: {gone}"
    differ = {r: (sorted(MATRIX[r]), sorted(served[r])) for r in MATRIX if MATRIX[r] != served[r]}
    assert not differ, f"table vs the routes' auth dependencies (table, code): {differ}"


# --- the served API -------------------------------------------------------------------


@pytest.fixture
async def desk(
    infra: Infra, topic_prefix: str, mongo_db: Any, tmp_path: Path
) -> AsyncIterator[ServedDesk]:
    async with served_desk(infra, topic_prefix, mongo_db.name, tmp_path) as served:
        yield served


def request_for(route: str, desk: ServedDesk) -> tuple[str, str, Any]:
    """A request to `route` naming things that exist; deletes name things that do not."""
    method, template = route.split(" ", 1)
    deleting = method == "DELETE"
    values = {
        "ticket_id": desk.ids["ticket"],
        "agent_id": "nobody" if deleting else desk.ids["agent"],
        "team_id": "nosuchteam" if deleting else desk.ids["team"],
        "service_id": "nosuchservice" if deleting else desk.ids["service"],
        "key_id": "key_nosuchkey",
        "contact_id": desk.ids["contact"],
    }
    path = template.format(**{k: v for k, v in values.items() if "{" + k + "}" in template})
    # Bodies that change nothing lasting: the allowed roles' answers only have to show that
    # authorization let them through.
    bodies: dict[str, Any] = {
        "PATCH /v1/tickets/{ticket_id}": {"status": "open"},
        "POST /v1/tickets/{ticket_id}/messages": {"text": "checking", "internal": True},
        "POST /v1/tickets/{ticket_id}/assignment": {"agent_id": "nobody"},
        "POST /v1/agents": {"agent_id": "alice", "name": "Alice again"},
        "PATCH /v1/agents/{agent_id}": {"name": "Alice"},
        "PUT /v1/agents/{agent_id}/presence": {"presence": "online"},
        "POST /v1/teams": {"team_id": "network", "name": "Network again"},
        "PATCH /v1/teams/{team_id}": {"name": "Network"},
        "POST /v1/catalogue/services": {"service_id": "vpn", "name": "VPN", "team": "network"},
        "PATCH /v1/catalogue/services/{service_id}": {"name": "VPN"},
        "POST /v1/portal/requests": {"service_id": "nosuchservice", "subject": "VPN is down"},
        "POST /v1/api-keys": {"role": "agent", "subject": "nobody"},
        "POST /v1/contacts/{contact_id}/merge": {"contact_id": desk.ids["contact"]},
        "POST /v1/contacts/{contact_id}/unmerge": {"identity": "portal:maria"},
    }
    return method, path, bodies.get(route)


async def test_every_route_admits_exactly_the_roles_of_the_table(desk: ServedDesk) -> None:
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=desk.url, timeout=30) as http:
        for route, allowed in MATRIX.items():
            method, path, body = request_for(route, desk)
            resp = await http.request(method, path, json=body)
            if allowed is OPEN:
                if resp.status_code != 200:
                    wrong.append(f"{route} without a key: {resp.status_code}")
                continue
            if resp.status_code != 401:
                wrong.append(f"{route} without a key: {resp.status_code}, not 401")
            # Denied roles first: a refused request changes nothing for the later ones.
            for role in sorted(ROLES, key=lambda r: r in allowed):
                resp = await http.request(method, path, json=body, headers=desk.headers(role))
                denied = resp.status_code in (401, 403) or resp.status_code >= 500
                if role in allowed and denied:
                    wrong.append(f"{route} as {role}: {resp.status_code} {resp.text[:200]}")
                if role not in allowed and resp.status_code != 403:
                    wrong.append(f"{route} as {role}: {resp.status_code}, not 403")
    assert not wrong, "\n".join(wrong)


async def test_a_wrong_key_is_refused_by_either_header(desk: ServedDesk) -> None:
    async with httpx.AsyncClient(base_url=desk.url, timeout=30) as http:
        for headers in (
            {"Authorization": "Bearer dsk_not-a-key-0123456789abcdef"},
            {"X-API-Key": "dsk_not-a-key-0123456789abcdef"},
            {"Authorization": "Bearer " + "x" * 5000},
        ):
            resp = await http.get("/v1/tickets", headers=headers)
            assert resp.status_code == 401, (headers, resp.text)
        resp = await http.get("/v1/tickets", headers={"X-API-Key": desk.keys["agent"]})
        assert resp.status_code == 200, resp.text


async def test_a_portal_user_sees_only_their_own_tickets_and_contact(desk: ServedDesk) -> None:
    mine, theirs = desk.ids["ticket"], desk.ids["other-ticket"]
    maria, omar = desk.headers("portal"), desk.headers("other-portal")
    async with httpx.AsyncClient(base_url=desk.url, timeout=30) as http:
        assert (await http.get(f"/v1/portal/tickets/{mine}", headers=maria)).status_code == 200
        # Someone else's ticket answers exactly like a missing one: ids cannot be probed.
        for path in (f"/v1/portal/tickets/{theirs}", f"/v1/portal/tickets/{theirs}/messages"):
            resp = await http.get(path, headers=maria)
            assert resp.status_code == 404, (path, resp.text)
            missing = await http.get(path.replace(theirs, "DS-AAAAAAAA"), headers=maria)
            assert missing.status_code == 404
            assert resp.json()["detail"].replace(theirs, "X") == missing.json()["detail"].replace(
                "DS-AAAAAAAA", "X"
            )
        listed = (await http.get("/v1/portal/tickets", headers=maria)).json()["items"]
        assert [t["ticket_id"] for t in listed] == [mine]
        listed = (await http.get("/v1/portal/tickets", headers=omar)).json()["items"]
        assert [t["ticket_id"] for t in listed] == [theirs]
        # Contacts: a portal user reads their own; another's answers 404, like a missing one.
        omars = (await http.get("/v1/portal/contact", headers=omar)).json()["contact_id"]
        own = await http.get(f"/v1/contacts/{desk.ids['contact']}", headers=maria)
        assert own.status_code == 200, own.text
        assert (await http.get(f"/v1/contacts/{omars}", headers=maria)).status_code == 404
        staff = await http.get(f"/v1/contacts/{omars}", headers=desk.headers("agent"))
        assert staff.status_code == 200, staff.text


async def test_an_agent_sets_only_their_own_presence(desk: ServedDesk) -> None:
    async with httpx.AsyncClient(base_url=desk.url, timeout=30) as http:
        resp = await http.post(
            "/v1/agents", json={"agent_id": "bob", "name": "Bob"}, headers=desk.headers("admin")
        )
        assert resp.status_code == 201, resp.text
        alice = desk.headers("agent")
        body = {"presence": "online"}
        resp = await http.put(f"/v1/agents/{desk.ids['agent']}/presence", json=body, headers=alice)
        assert resp.status_code == 200, resp.text
        assert resp.json()["presence"] == "online"
        resp = await http.put("/v1/agents/bob/presence", json=body, headers=alice)
        assert resp.status_code == 403, resp.text
        bob = (await http.get("/v1/agents/bob", headers=alice)).json()
        assert bob["presence"] == "offline"
        resp = await http.put("/v1/agents/bob/presence", json=body, headers=desk.headers("admin"))
        assert resp.status_code == 200, resp.text
