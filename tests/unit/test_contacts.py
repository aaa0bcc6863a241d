"""Contacts' pure core: identity keys, what counts as verified, and how senders are linked."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from deskstream import ids
from deskstream.events import Channel, CreateTicket, InboundMessage, SenderIdentity
from deskstream.topics import Topics
from deskstream_ticket_api import contacts
from deskstream_ticket_api.commands import Plan, plan_chunk
from deskstream_ticket_api.models import MergeCreate, UnmergeCreate
from deskstream_ticket_api.routes.contacts import ContactFilters
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def sender(kind: str, ident: str, **extra: Any) -> SenderIdentity:
    channel = {
        "email": Channel.EMAIL,
        "portal": Channel.PORTAL,
        "x": Channel.SOCIAL,
        "slack": Channel.CHAT,
        "chat": Channel.CHAT,
        "webhook": Channel.CHAT,
    }[kind]
    return SenderIdentity(channel=channel, kind=kind, id=ident, **extra)


# --- Identities -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "key", "address", "verified"),
    [
        (
            sender("email", " Maria@Example.COM "),
            "email:maria@example.com",
            "maria@example.com",
            False,
        ),
        (
            sender("portal", "maria@example.com"),
            "portal:maria@example.com",
            "maria@example.com",
            True,
        ),
        (sender("portal", "maria"), "portal:maria", None, False),
        (sender("chat", "Maria@example.com"), "chat:maria@example.com", "maria@example.com", False),
        (sender("x", "2244994945", handle="@MLopez"), "x:2244994945", None, False),
        (sender("slack", "U024BE7LH"), "slack:U024BE7LH", None, False),
    ],
)
def test_identity_keys_and_what_counts_as_verified(
    who: SenderIdentity, key: str, address: str | None, verified: bool
) -> None:
    identity = contacts.Identity.of(who)
    assert (identity.key, identity.address, identity.verified) == (key, address, verified)


def test_only_the_portal_vouches_for_an_address() -> None:
    # A mail's From header is the sender's own claim: email must never be listed here.
    assert set(contacts.VERIFIED_ADDRESS_BY) == {"portal"}


def test_identity_keys_from_clients_are_normalised_or_refused() -> None:
    assert contacts.parse_identity_key("EMAIL:Maria@Example.com") == "email:maria@example.com"
    assert contacts.parse_identity_key("x:2244994945") == "x:2244994945"
    for bad in ("maria@example.com", ":x", "email:", "email: "):
        with pytest.raises(ValueError, match="kind:id"):
            contacts.parse_identity_key(bad)


@given(kind=st.sampled_from(["email", "portal", "x", "slack", "chat"]), ident=st.text(min_size=1))
def test_identity_keys_are_stable_under_normalisation(kind: str, ident: str) -> None:
    if not ident.strip():
        return
    key = contacts.identity_key(kind, ident)
    assert contacts.parse_identity_key(key) == key


def test_names_and_handles_fold_case_width_and_spacing() -> None:
    assert contacts.normal_name("  Maria   LÓPEZ ") == contacts.normal_name("maria lópez")
    assert contacts.normal_name("\uff2d\uff21\uff32\uff29\uff21") == "maria"  # full-width letters
    assert contacts.normal_name("IT") is None  # too short to mean anything
    assert contacts.normal_handle("@MLopez") == contacts.normal_handle("mlopez") == "mlopez"


def test_contact_ids_are_deterministic_and_readable() -> None:
    one = contacts.contact_id_for("email:maria@example.com")
    assert one == contacts.contact_id_for("email:maria@example.com")
    assert one != contacts.contact_id_for("portal:maria@example.com")
    assert re.match(contacts.CONTACT_ID_PATTERN, one)


# --- Linking --------------------------------------------------------------------------


def test_a_claimed_address_joins_the_contact_where_it_is_verified_either_way_round() -> None:
    for first, second in (
        (sender("email", "maria@example.com"), sender("portal", "maria@example.com")),
        (sender("portal", "maria@example.com"), sender("email", "Maria@example.com")),
    ):
        linker = contacts.Linker()
        one, _ = linker.resolve(first, at=T0)
        two, key = linker.resolve(second, at=T0)
        assert one == two
        assert key == contacts.Identity.of(second).key
        [contact] = linker.contacts.values()
        assert [i["linked"]["rule"] for i in contact["identities"]] == [
            "first-seen",
            "verified-address",
        ]
        assert contact["verified_addresses"] == ["maria@example.com"]
        assert len(linker.new_links) == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Two claims of one address: nobody vouched for it.
        (sender("email", "eve@example.com"), sender("chat", "eve@example.com")),
        # A display name or handle is self-chosen.
        (
            sender("email", "maria@example.com", display_name="Maria Lopez"),
            sender("x", "2244994945", display_name="Maria Lopez"),
        ),
        (sender("x", "1", handle="mlopez"), sender("slack", "U1", handle="mlopez")),
        # A portal user not named by an address verifies nothing.
        (sender("portal", "maria"), sender("email", "maria@example.com")),
    ],
)
def test_weak_evidence_links_nothing(first: SenderIdentity, second: SenderIdentity) -> None:
    linker = contacts.Linker()
    one, _ = linker.resolve(first, at=T0)
    two, _ = linker.resolve(second, at=T0)
    assert one != two
    assert len(linker.contacts) == 2


def test_a_verified_address_joins_the_oldest_holder_and_then_draws_claims_there() -> None:
    def holding(contact_id: str, who: SenderIdentity, at: datetime) -> dict[str, Any]:
        doc = contacts.Identity.of(who).doc(at=at, rule="first-seen", detail="")
        return contacts.new_contact(contact_id, [doc], at=at)

    older = holding("CT-AAAAAAAAAAAAAAAA", sender("email", "a@example.com"), T0)
    newer = holding("CT-BBBBBBBBBBBBBBBB", sender("chat", "a@example.com"), T0 + timedelta(days=1))
    linker = contacts.Linker(
        contacts={c["_id"]: c for c in (older, newer)},
        versions={older["_id"]: 1, newer["_id"]: 1},
    )
    # Neither holder has it verified: the portal user joins the oldest (deterministic).
    assert linker.resolve(sender("portal", "A@example.com"), at=T0)[0] == older["_id"]
    # A later claim joins where the address is now verified, not the other claimant.
    assert linker.resolve(sender("webhook", "a@example.com"), at=T0)[0] == older["_id"]
    assert linker.touched == {older["_id"]}
    assert newer["identities"][0]["key"] == "chat:a@example.com"
    assert len(newer["identities"]) == 1


def test_a_known_identity_resolves_without_writing_anything() -> None:
    key = "email:maria@example.com"
    linker = contacts.Linker(links={key: "CT-AAAAAAAAAAAAAAAA"})
    assert linker.resolve(sender("email", "MARIA@example.com"), at=T0) == (
        "CT-AAAAAAAAAAAAAAAA",
        key,
    )
    assert (linker.touched, linker.new_links) == (set(), [])


def test_a_full_contact_is_not_joined() -> None:
    identities = [
        contacts.Identity.of(sender("email", f"u{n}@example.com")).doc(
            at=T0, rule="merge", detail=""
        )
        for n in range(contacts.MAX_IDENTITIES - 1)
    ]
    identities.append(
        contacts.Identity.of(sender("portal", "a@example.com")).doc(at=T0, rule="merge", detail="")
    )
    full = contacts.new_contact("CT-AAAAAAAAAAAAAAAA", identities, at=T0)
    linker = contacts.Linker(contacts={full["_id"]: full}, versions={full["_id"]: 1})
    assert linker.resolve(sender("email", "a@example.com"), at=T0)[0] != full["_id"]


def create(sender_identity: SenderIdentity, n: int) -> CreateTicket:
    message = InboundMessage(
        event_id=f"email:{n}",
        channel=sender_identity.channel,
        conversation_key=f"conv:{n}",
        sender=sender_identity,
        subject="VPN",
        received_at=T0,
    )
    return CreateTicket(
        command_id=f"router:{n}:create",
        ticket_id=ids.ticket_id_for(message.event_id),
        message=message,
        issued_at=T0,
    )


def fresh_plan(links: dict[str, str] | None = None) -> Plan:
    return Plan(
        topics=Topics("p."),
        applied=set(),
        tickets={},
        versions={},
        known_messages=set(),
        replies={},
        linker=contacts.Linker(links=dict(links or {})),
    )


def test_tickets_name_their_contact_and_a_replayed_create_makes_no_second_one() -> None:
    maria = sender("email", "maria@example.com")
    first = fresh_plan()
    assert plan_chunk(first, [(0, create(maria, 1)), (1, create(maria, 2))]) == {}
    [ticket_1, ticket_2] = first.tickets.values()
    assert (
        ticket_1["contact_id"]
        == ticket_2["contact_id"]
        == contacts.contact_id_for("email:maria@example.com")
    )
    assert ticket_1["requester_key"] == "email:maria@example.com"
    assert len(first.linker.contacts) == 1
    assert len(first.linker.new_links) == 1
    # The same command applied again where the ledger was lost (the first delivery's
    # contact link exists): the ticket names the same contact and nothing new is written.
    again = fresh_plan(links={link["_id"]: link["contact_id"] for link in first.linker.new_links})
    assert plan_chunk(again, [(0, create(maria, 1))]) == {}
    assert next(iter(again.tickets.values()))["contact_id"] == ticket_1["contact_id"]
    assert (again.linker.touched, again.linker.new_links) == (set(), [])


# --- API shapes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [{"$ne": None}, "$where", "CT-aaaaaaaaaaaaaaaa", "DS-AAAAAAAA", "CT-AAAAAAAAAAAAAAAA\n"],
)
def test_merge_bodies_take_a_contact_id_only(bad: Any) -> None:
    with pytest.raises(ValidationError):
        MergeCreate.model_validate({"contact_id": bad})


@pytest.mark.parametrize(
    "bad", [{"$gt": ""}, "email:{$ne:1}", "email:$where", "no-kind", "email:a b", ":x", "$x:y"]
)
def test_identities_in_bodies_and_filters_cannot_carry_operators(bad: Any) -> None:
    with pytest.raises(ValidationError):
        UnmergeCreate.model_validate({"identity": bad})
    with pytest.raises(ValidationError):
        ContactFilters.model_validate({"identity": bad})


def test_contact_filters_refuse_unknown_parameters() -> None:
    with pytest.raises(ValidationError) as err:
        ContactFilters.model_validate({"identity[$ne]": "x"})
    assert "identity[$ne]" in str(err.value)
