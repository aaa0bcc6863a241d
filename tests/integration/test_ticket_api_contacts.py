"""Contacts on real Kafka and MongoDB: linking on verified addresses, suggestions, merge/unmerge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from deskstream import ids
from deskstream.events import Channel, InboundMessage, SenderIdentity

from tests.conftest import Infra
from tests.integration.test_ticket_api_kit import (
    Api,
    append_cmd,
    create_cmd,
    publish_commands,
    running_api,
    settings_for,
)
from tests.integration.test_ticket_api_service import wait_consumed

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def api(infra: Infra, topic_prefix: str, mongo_db: Any) -> AsyncIterator[Api]:
    async with running_api(settings_for(infra, topic_prefix, mongo_db.name)) as running:
        yield running


def message(
    source_id: str,
    *,
    channel: Channel,
    kind: str,
    sender: str,
    name: str | None = None,
    handle: str | None = None,
    subject: str = "VPN drops every hour",
) -> InboundMessage:
    return InboundMessage(
        event_id=ids.event_id(channel.value, source_id),
        channel=channel,
        conversation_key=f"conv:{source_id}",
        sender=SenderIdentity(
            channel=channel, kind=kind, id=sender, display_name=name, handle=handle
        ),
        subject=subject,
        text="It keeps dropping.",
        received_at=datetime.now(UTC),
    )


def email(source_id: str, sender: str, name: str | None = None) -> InboundMessage:
    return message(source_id, channel=Channel.EMAIL, kind="email", sender=sender, name=name)


def portal(source_id: str, user: str) -> InboundMessage:
    return message(source_id, channel=Channel.PORTAL, kind="portal", sender=user)


def x_post(source_id: str, user_id: str, name: str, handle: str) -> InboundMessage:
    return message(
        source_id, channel=Channel.SOCIAL, kind="x", sender=user_id, name=name, handle=handle
    )


async def open_tickets(api: Api, *messages: InboundMessage) -> list[str]:
    """Create one ticket per message through the consumer's own code; their ticket ids."""
    assert await api.apply(*(create_cmd(m) for m in messages)) == {}
    return [ids.ticket_id_for(m.event_id) for m in messages]


async def ticket(api: Api, ticket_id: str) -> dict[str, Any]:
    resp = await api.client.get(f"/v1/tickets/{ticket_id}", headers=api.admin)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def contact(api: Api, contact_id: str, headers: dict[str, str] | None = None) -> Any:
    resp = await api.client.get(f"/v1/contacts/{contact_id}", headers=headers or api.admin)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def tickets_of(api: Api, contact_id: str) -> list[str]:
    """Every ticket of the contact filter, through all pages."""
    found: list[str] = []
    cursor = None
    for _ in range(20):
        params: dict[str, Any] = {"contact": contact_id, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        resp = await api.client.get("/v1/tickets", params=params, headers=api.admin)
        assert resp.status_code == 200, resp.text
        found += [t["ticket_id"] for t in resp.json()["items"]]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return sorted(found)
    raise AssertionError("pagination did not end")


def keys(contact_doc: dict[str, Any]) -> set[str]:
    return {i["key"] for i in contact_doc["identities"]}


# --- Linking on strong evidence -------------------------------------------------------


async def test_email_and_portal_with_the_same_verified_address_share_one_contact(
    api: Api,
) -> None:
    # Maria mails first (a claim), then files a portal request as maria@example.com, an
    # address the portal vouches for: the portal identity joins her email contact.
    mail_1, request_1 = await open_tickets(
        api, email("m-1", "Maria@Example.com", "Maria Lopez"), portal("m-2", "maria@example.com")
    )
    maria = (await ticket(api, mail_1))["contact_id"]
    assert maria
    assert (await ticket(api, request_1))["contact_id"] == maria
    # Omar the other way round: portal first, then mail from the verified address.
    (request_2,) = await open_tickets(api, portal("o-1", "omar@example.com"))
    (mail_2,) = await open_tickets(api, email("o-2", "OMAR@example.com"))
    omar = (await ticket(api, request_2))["contact_id"]
    assert (await ticket(api, mail_2))["contact_id"] == omar != maria

    doc = await contact(api, maria)
    assert doc["contact_id"] == maria
    assert keys(doc) == {"email:maria@example.com", "portal:maria@example.com"}
    assert doc["verified_addresses"] == ["maria@example.com"]
    assert doc["ticket_count"] == 2
    assert doc["display_name"] == "Maria Lopez"
    rules = {i["key"]: (i["linked"]["rule"], i["verified"]) for i in doc["identities"]}
    assert rules == {
        "email:maria@example.com": ("first-seen", False),
        "portal:maria@example.com": ("verified-address", True),
    }
    assert (await contact(api, omar))["ticket_count"] == 2
    assert await tickets_of(api, maria) == sorted([mail_1, request_1])
    assert await tickets_of(api, omar) == sorted([request_2, mail_2])

    # Two claims of one address link nothing: a mail From header and an address typed into
    # the web chat are both unverified, so they are only suggested.
    mail_3, chat_1 = await open_tickets(
        api,
        email("e-1", "eve@example.com"),
        message("e-2", channel=Channel.CHAT, kind="chat", sender="eve@example.com"),
    )
    eve_mail = (await ticket(api, mail_3))["contact_id"]
    eve_chat = (await ticket(api, chat_1))["contact_id"]
    assert eve_mail != eve_chat
    resp = await api.client.get(f"/v1/contacts/{eve_mail}/suggestions", headers=api.admin)
    assert resp.status_code == 200, resp.text
    [suggested] = resp.json()
    assert suggested["contact"]["contact_id"] == eve_chat
    assert [(r["rule"], r["value"]) for r in suggested["reasons"]] == [
        ("same-address", "eve@example.com")
    ]
    assert "no channel verified it" in suggested["reasons"][0]["detail"]

    # The list finds contacts by identity (normalised like the stored key) and by address.
    resp = await api.client.get(
        "/v1/contacts", params={"identity": "email:MARIA@example.com"}, headers=api.admin
    )
    assert [c["contact_id"] for c in resp.json()["items"]] == [maria]
    resp = await api.client.get(
        "/v1/contacts", params={"address": "eve@example.com"}, headers=api.admin
    )
    assert sorted(c["contact_id"] for c in resp.json()["items"]) == sorted([eve_mail, eve_chat])
    # Cursor pagination over all four contacts, newest first, each once.
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/v1/contacts", params=params, headers=api.admin)).json()
        seen += [c["contact_id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted({maria, omar, eve_mail, eve_chat})
    assert len(seen) == 4


async def test_same_display_name_or_handle_is_only_suggested(api: Api) -> None:
    mail, post, slack = await open_tickets(
        api,
        email("d-1", "maria@example.com", "Maria López"),
        x_post("d-2", "2244994945", "maria  LÓPEZ", "mlopez"),
        message("d-3", channel=Channel.CHAT, kind="slack", sender="U024BE7LH", handle="@MLopez"),
    )
    by_mail = (await ticket(api, mail))["contact_id"]
    by_x = (await ticket(api, post))["contact_id"]
    by_slack = (await ticket(api, slack))["contact_id"]
    assert len({by_mail, by_x, by_slack}) == 3  # nothing linked automatically
    assert await tickets_of(api, by_mail) == [mail]

    resp = await api.client.get(f"/v1/contacts/{by_mail}/suggestions", headers=api.admin)
    assert resp.status_code == 200, resp.text
    [only] = resp.json()
    assert only["contact"]["contact_id"] == by_x
    assert [(r["rule"], r["value"]) for r in only["reasons"]] == [
        ("same-display-name", "maria lópez")
    ]
    resp = await api.client.get(f"/v1/contacts/{by_x}/suggestions", headers=api.admin)
    reasons = {s["contact"]["contact_id"]: [r["rule"] for r in s["reasons"]] for s in resp.json()}
    assert reasons == {by_mail: ["same-display-name"], by_slack: ["same-handle"]}


# --- Merge, unmerge, audit, roles -----------------------------------------------------


async def test_merge_and_unmerge_move_tickets_and_are_audited(api: Api) -> None:
    c, admin = api.client, api.admin
    await c.post("/v1/teams", json={"team_id": "network", "name": "Network"}, headers=admin)
    await c.post(
        "/v1/agents",
        json={"agent_id": "alice", "name": "Alice", "teams": ["network"]},
        headers=admin,
    )
    alice = api.auth(await api.issue_key("agent", "alice"))
    mail_1, mail_2, post_1 = await open_tickets(
        api,
        email("g-1", "maria@example.com", "Maria Lopez"),
        email(
            "g-2",
            "maria@example.com",
            "Maria Lopez",
        ),
        x_post("g-3", "2244994945", "Maria Lopez", "mlopez"),
    )
    by_mail = (await ticket(api, mail_1))["contact_id"]
    by_x = (await ticket(api, post_1))["contact_id"]
    assert await tickets_of(api, by_mail) == sorted([mail_1, mail_2])

    # Only admins merge; without a key nothing at all.
    merge = f"/v1/contacts/{by_mail}/merge"
    resp = await c.post(merge, json={"contact_id": by_x}, headers=alice)
    assert resp.status_code == 403
    assert "admin" in resp.json()["detail"]
    assert (await c.post(merge, json={"contact_id": by_x})).status_code == 401
    assert (await c.get(f"/v1/contacts/{by_mail}")).status_code == 401
    assert (await tickets_of(api, by_x)) == [post_1]  # unchanged by the refused attempts

    resp = await c.post(merge, json={"contact_id": by_x}, headers=admin)
    assert resp.status_code == 200, resp.text
    merged = resp.json()
    assert merged["contact"]["contact_id"] == by_mail
    assert keys(merged["contact"]) == {"email:maria@example.com", "x:2244994945"}
    assert merged["contact"]["ticket_count"] == 3
    assert merged["audit"]["action"] == "merge"
    # Both identities' tickets under one contact filter; the merged id finds them too.
    everything = sorted([mail_1, mail_2, post_1])
    assert await tickets_of(api, by_mail) == everything
    assert await tickets_of(api, by_x) == everything
    assert (await ticket(api, post_1))["contact_id"] == by_mail
    assert (await contact(api, by_x))["contact_id"] == by_mail
    # The X user writes again: the new ticket lands on the survivor at once.
    (post_2,) = await open_tickets(api, x_post("g-4", "2244994945", "Maria Lopez", "mlopez"))
    assert (await ticket(api, post_2))["contact_id"] == by_mail
    # Merging again is a conflict, not a second merge.
    resp = await c.post(merge, json={"contact_id": by_x}, headers=admin)
    assert resp.status_code == 409
    assert "already merged" in resp.json()["detail"]

    # Unmerge the X identity: it returns to its own contact with its tickets.
    unmerge = f"/v1/contacts/{by_mail}/unmerge"
    resp = await c.post(unmerge, json={"identity": "x:2244994945"}, headers=alice)
    assert resp.status_code == 403
    resp = await c.post(unmerge, json={"identity": "x:2244994945"}, headers=admin)
    assert resp.status_code == 200, resp.text
    split = resp.json()
    assert split["split"]["contact_id"] == by_x
    assert keys(split["split"]) == {"x:2244994945"}
    assert keys(split["contact"]) == {"email:maria@example.com"}
    assert (split["contact"]["ticket_count"], split["split"]["ticket_count"]) == (2, 2)
    assert await tickets_of(api, by_mail) == sorted([mail_1, mail_2])
    assert await tickets_of(api, by_x) == sorted([post_1, post_2])
    assert (await ticket(api, post_2))["contact_id"] == by_x
    # The display names still match, so they are suggested again, not linked.
    resp = await c.get(f"/v1/contacts/{by_mail}/suggestions", headers=alice)
    assert [s["contact"]["contact_id"] for s in resp.json()] == [by_x]

    # Both changes are audited: who, when, what, before and after; staff may read it.
    resp = await c.get(f"/v1/contacts/{by_mail}/audit", headers=alice)
    assert resp.status_code == 200, resp.text
    merge_audit, unmerge_audit = resp.json()
    assert (merge_audit["action"], unmerge_audit["action"]) == ("merge", "unmerge")
    for record in (merge_audit, unmerge_audit):
        assert record["actor"] == "admin:bootstrap-admin"
        assert record["at"]
    assert merge_audit["contacts"] == [by_mail, by_x]
    assert merge_audit["before"] == [
        {"contact_id": by_mail, "merged_into": None, "identities": ["email:maria@example.com"]},
        {"contact_id": by_x, "merged_into": None, "identities": ["x:2244994945"]},
    ]
    assert merge_audit["after"] == [
        {
            "contact_id": by_mail,
            "merged_into": None,
            "identities": ["email:maria@example.com", "x:2244994945"],
        },
        {"contact_id": by_x, "merged_into": by_mail, "identities": []},
    ]
    assert unmerge_audit["identity"] == "x:2244994945"
    assert unmerge_audit["after"] == [
        {"contact_id": by_mail, "merged_into": None, "identities": ["email:maria@example.com"]},
        {"contact_id": by_x, "merged_into": None, "identities": ["x:2244994945"]},
    ]
    resp = await c.get(f"/v1/contacts/{by_x}/audit", headers=admin)
    assert [a["audit_id"] for a in resp.json()] == [
        merge_audit["audit_id"],
        unmerge_audit["audit_id"],
    ]

    # Bad input: a 4xx naming the field, never a 5xx, never an operator.
    bad_bodies = [
        (merge, {"contact_id": by_mail}, 422, "contact_id"),
        (merge, {"contact_id": "CT-AAAAAAAAAAAAAAAA"}, 422, "contact_id"),
        (merge, {"contact_id": {"$ne": None}}, 422, "contact_id"),
        (merge, {"contact_id": by_x, "force": True}, 422, "force"),
        (unmerge, {"identity": "x:999"}, 422, "identity"),
        (unmerge, {"identity": {"$gt": ""}}, 422, "identity"),
        (unmerge, {"identity": "no-kind"}, 422, "identity"),
        (unmerge, {"identity": "email:maria@example.com"}, 409, "only identity"),
    ]
    for path, body, code, named in bad_bodies:
        resp = await c.post(path, json=body, headers=admin)
        assert resp.status_code == code, (body, resp.text)
        assert named in resp.text, (body, resp.text)
    bad_queries = [
        ("/v1/tickets?contact[$ne]=x", "contact[$ne]"),
        ('/v1/tickets?contact={"$ne": null}', "contact"),
        ("/v1/tickets?contact=CT-AAAAAAAAAAAAAAAA", "contact"),
        ("/v1/contacts?identity[$ne]=x", "identity[$ne]"),
        ('/v1/contacts?identity={"$gt": ""}', "identity"),
        ("/v1/contacts?identity=email:%24where", "identity"),
        ("/v1/contacts?address=not-an-address", "address"),
        ("/v1/contacts?cursor=eyIkbmUiOm51bGx9", "cursor"),
        ("/v1/contacts/CT-%24ne", "contact_id"),
    ]
    for path, named in bad_queries:
        resp = await c.get(path, headers=admin)
        assert resp.status_code == 422, (path, resp.text)
        assert named in resp.text, (path, resp.text)
    assert (await c.get("/v1/contacts/CT-AAAAAAAAAAAAAAAA", headers=admin)).status_code == 404


async def test_portal_users_read_only_their_own_contact(api: Api) -> None:
    c = api.client
    request_1, request_2 = await open_tickets(
        api, portal("p-1", "maria@example.com"), portal("p-2", "omar@example.com")
    )
    maria = (await ticket(api, request_1))["contact_id"]
    omar = (await ticket(api, request_2))["contact_id"]
    maria_key = api.auth(await api.issue_key("portal", "maria@example.com"))
    own = await contact(api, maria, headers=maria_key)
    assert keys(own) == {"portal:maria@example.com"}
    resp = await c.get("/v1/portal/contact", headers=maria_key)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["contact_id"], resp.json()["ticket_count"]) == (maria, 1)
    # A portal user with no ticket yet has no contact yet.
    newcomer = api.auth(await api.issue_key("portal", "new@example.com"))
    assert (await c.get("/v1/portal/contact", headers=newcomer)).status_code == 404
    assert (await c.get("/v1/portal/contact", headers=api.admin)).status_code == 403
    resp = await c.get(f"/v1/contacts/{omar}", headers=maria_key)
    assert resp.status_code == 404  # exactly like a contact that does not exist
    for path in (
        "/v1/contacts",
        f"/v1/contacts/{maria}/suggestions",
        f"/v1/contacts/{maria}/audit",
    ):
        assert (await c.get(path, headers=maria_key)).status_code == 403, path
    resp = await c.post(f"/v1/contacts/{maria}/merge", json={"contact_id": omar}, headers=maria_key)
    assert resp.status_code == 403


# --- Exactly once through Kafka -------------------------------------------------------


async def test_a_redelivered_create_makes_no_second_contact(
    infra: Infra, topic_prefix: str, mongo_db: Any
) -> None:
    settings = settings_for(infra, topic_prefix, mongo_db.name, consumer_enabled=True)
    topic = settings.topics.name("tickets.commands")
    first = email("r-1", "maria@example.com", "Maria Lopez")
    second = email("r-2", "maria@example.com", "Maria Lopez")
    ticket_1, ticket_2 = ids.ticket_id_for(first.event_id), ids.ticket_id_for(second.event_id)
    cc = email("r-3", "omar@example.com")  # a colleague answering on the thread
    create = create_cmd(first)
    async with running_api(settings) as api:
        # The same command twice, as a redelivery hands it over, then more from Maria.
        await publish_commands(infra, topic, [create, create])
        await publish_commands(infra, topic, [create, create_cmd(second), append_cmd(ticket_1, cc)])
        # All five records handled (the duplicates too) before anything is counted.
        await wait_consumed(infra, f"{topic_prefix}ticket-api-commands", topic, 5, timeout=60)
        assert await mongo_db["applied_commands"].count_documents({}) == 3
        maria = (await ticket(api, ticket_1))["contact_id"]
        assert (await ticket(api, ticket_2))["contact_id"] == maria
        assert await tickets_of(api, maria) == sorted([ticket_1, ticket_2])
        # One contact for Maria, one for the colleague whose message joined her ticket.
        assert await mongo_db["contacts"].count_documents({}) == 2
        assert await mongo_db["contact_identities"].count_documents({}) == 2
        resp = await api.client.get(
            "/v1/contacts", params={"identity": "email:omar@example.com"}, headers=api.admin
        )
        [omar] = resp.json()["items"]
        assert omar["contact_id"] != maria
        assert (await contact(api, omar["contact_id"]))["ticket_count"] == 0
        assert (await contact(api, maria))["ticket_count"] == 2
