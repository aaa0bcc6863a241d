"""ticket-api's pure core: the lifecycle, command application in memory, cursors, API shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from deskstream import ids
from deskstream.events import (
    TICKET_EVENT,
    AgentState,
    AppendMessage,
    AssignTicket,
    Channel,
    CreateTicket,
    DeflectTicket,
    DeliveryResult,
    InboundMessage,
    QueueTicket,
    SenderIdentity,
    TicketStatus,
)
from deskstream.runner import Record
from deskstream.topics import Topics
from deskstream_ticket_api import outbox, pagination, portal, transitions
from deskstream_ticket_api.commands import Plan, Rejected, chunks, decode, plan_chunk
from deskstream_ticket_api.errors import Invalid
from deskstream_ticket_api.models import (
    AgentCreate,
    PortalRequestCreate,
    ServiceCreate,
)
from deskstream_ticket_api.relay import superseded
from deskstream_ticket_api.routes.tickets import TicketFilters
from pydantic import ValidationError

S = TicketStatus
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# --- Lifecycle ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.NEW, S.OPEN),
        (S.OPEN, S.PENDING),
        (S.PENDING, S.OPEN),
        (S.OPEN, S.RESOLVED),
        (S.PENDING, S.RESOLVED),
        (S.RESOLVED, S.CLOSED),
        (S.RESOLVED, S.OPEN),
        (S.CLOSED, S.OPEN),
    ],
)
def test_lifecycle_allows(old: TicketStatus, new: TicketStatus) -> None:
    transitions.check(old, new)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (S.NEW, S.RESOLVED, "cannot change status from new to resolved; allowed: open, pending"),
        (S.NEW, S.CLOSED, "cannot change status from new to closed; allowed: open, pending"),
        (S.OPEN, S.CLOSED, "cannot change status from open to closed; allowed: pending, resolved"),
        (S.CLOSED, S.PENDING, "cannot change status from closed to pending; allowed: open"),
        (S.OPEN, S.NEW, "cannot change status from open to new; allowed: pending, resolved"),
        (S.OPEN, S.OPEN, "ticket is already open"),
    ],
)
def test_lifecycle_refuses_with_the_allowed_targets(
    old: TicketStatus, new: TicketStatus, message: str
) -> None:
    with pytest.raises(transitions.TransitionError) as err:
        transitions.check(old, new)
    assert str(err.value) == message


# --- Command application in memory ----------------------------------------------------


def message(n: int, conversation: str = "c1", **extra: Any) -> InboundMessage:
    return InboundMessage(
        event_id=ids.event_id("email", f"m{n}"),
        channel=Channel.EMAIL,
        conversation_key=conversation,
        sender=SenderIdentity(channel=Channel.EMAIL, kind="email", id="maria@example.com"),
        subject="VPN",
        text=f"text {n}",
        received_at=T0,
        **extra,
    )


def empty_plan(**loaded: Any) -> Plan:
    tickets = loaded.get("tickets", {})
    return Plan(
        topics=Topics("p."),
        applied=set(loaded.get("applied", set())),
        tickets=tickets,
        versions={tid: t["version"] for tid, t in tickets.items()},
        known_messages=set(loaded.get("messages", set())),
        replies=loaded.get("replies", {}),
    )


def events_of(plan: Plan) -> list[Any]:
    assert all(e.topic == "p.tickets.events" for e in plan.entries)
    return [e.value for e in plan.entries]


def test_a_chunk_applies_in_order_with_ids_derived_from_commands() -> None:
    first = message(1)
    tid = ids.ticket_id_for(first.event_id)
    at = T0 + timedelta(minutes=1)
    chunk: list[tuple[int, Any]] = [
        (0, CreateTicket(command_id="c-create", ticket_id=tid, message=first, team="net")),
        (1, AppendMessage(command_id="c-append", ticket_id=tid, message=message(2))),
        (2, AppendMessage(command_id="c-append-dup-msg", ticket_id=tid, message=message(2))),
        (3, QueueTicket(command_id="c-queue", ticket_id=tid, team="net", position=3)),
        (
            4,
            AssignTicket(
                command_id="c-assign",
                ticket_id=tid,
                agent_id="alice",
                explanation={"$score": 1},
                issued_at=at,
            ),
        ),
        (5, AssignTicket(command_id="c-assign", ticket_id=tid, agent_id="alice")),  # redelivered
        (6, AssignTicket(command_id="c-assign-2", ticket_id=tid, agent_id="bob")),
    ]
    plan = empty_plan()
    assert plan_chunk(plan, chunk) == {}
    events = events_of(plan)
    assert [(e.event_id, e.type) for e in events] == [
        ("c-create:created", "created"),
        ("c-create:message", "message_added"),
        ("c-append:message", "message_added"),
        ("c-queue:queued", "queued"),
        ("c-assign:assigned", "assigned"),
        ("c-assign:status", "status_changed"),
        ("c-assign-2:assigned", "assigned"),
    ]
    assigned, changed, reassigned = events[4], events[5], events[6]
    assert (assigned.agent_id, assigned.previous_agent_id, assigned.status) == (
        "alice",
        None,
        S.OPEN,
    )
    assert (changed.old, changed.new, changed.assignee, changed.team) == (
        S.NEW,
        S.OPEN,
        "alice",
        "net",
    )
    assert (reassigned.previous_agent_id, reassigned.status) == ("alice", S.OPEN)
    assert assigned.occurred_at == at
    ticket = plan.tickets[tid]
    assert (ticket["status"], ticket["assignee"], ticket["queue"]) == ("open", "bob", None)
    assert ticket["message_count"] == 2
    assert [m["_id"] for m in plan.messages] == [first.event_id, message(2).event_id]
    assert [d["_id"] for d in plan.ledger] == [
        "c-create",
        "c-append",
        "c-append-dup-msg",
        "c-queue",
        "c-assign",
        "c-assign-2",
    ]
    stored = {d["_id"]: d["explanation"] for d in plan.explanations}
    assert stored["c-assign"] == '{"$score": 1}'  # as text: its keys are no operators
    assert plan.versions[tid] is None  # created by this chunk: inserted, not replaced
    for entry in plan.entries:  # every event is a valid contract record
        assert entry.value is not None
        TICKET_EVENT.validate_json(entry.value.model_dump_json())


def test_commands_already_applied_change_nothing() -> None:
    tid = ids.ticket_id_for(message(1).event_id)
    plan = empty_plan(applied={"c-create"})
    create = CreateTicket(command_id="c-create", ticket_id=tid, message=message(1))
    assert plan_chunk(plan, [(0, create)]) == {}
    assert (plan.entries, plan.ledger, plan.messages, plan.touched) == ([], [], [], set())


def stored_ticket(tid: str, **fields: Any) -> dict[str, Any]:
    doc = {
        "_id": tid,
        "status": "new",
        "channel": "chat",
        "subject": "s",
        "requester": {"channel": "chat", "kind": "chat", "id": "u1"},
        "assignee": None,
        "team": "net",
        "message_count": 1,
        "version": 4,
    }
    return {**doc, **fields}


def test_unknown_tickets_and_replies_are_rejected_for_the_dead_letter_topic() -> None:
    plan = empty_plan()
    chunk: list[tuple[int, Any]] = [
        (0, AssignTicket(command_id="a", ticket_id="DS-AAAAAAAA", agent_id="alice")),
        (
            1,
            DeliveryResult(command_id="d", ticket_id="DS-AAAAAAAA", reply_id="r1", delivered=True),
        ),
    ]
    rejected = plan_chunk(plan, chunk)
    assert set(rejected) == {0, 1}
    assert all(isinstance(e, Rejected) for e in rejected.values())
    assert "DS-AAAAAAAA does not exist" in str(rejected[0])
    assert plan.ledger == []


def test_deflection_waits_then_escalation_opens_and_a_reply_reopens() -> None:
    tid = "DS-CCCCCCCC"
    plan = empty_plan(tickets={tid: stored_ticket(tid)})
    chunk: list[tuple[int, Any]] = [
        (0, DeflectTicket(command_id="f", ticket_id=tid, target="peers")),
        (1, AssignTicket(command_id="a", ticket_id=tid, agent_id="alice")),
    ]
    assert plan_chunk(plan, chunk) == {}
    plan.tickets[tid]["status"] = "resolved"
    reply = message(9, conversation="c9")
    assert (
        plan_chunk(plan, [(2, AppendMessage(command_id="r", ticket_id=tid, message=reply))]) == {}
    )
    changes = [(e.old, e.new) for e in events_of(plan) if e.type == "status_changed"]
    assert changes == [(S.NEW, S.PENDING), (S.PENDING, S.OPEN), (S.RESOLVED, S.OPEN)]
    assert plan.tickets[tid]["deflection"]["target"] == "peers"
    assert plan.versions[tid] == 4  # replaced only if still at the version read


def test_a_second_create_for_an_open_ticket_appends_its_message() -> None:
    tid = "DS-DDDDDDDD"
    plan = empty_plan(tickets={tid: stored_ticket(tid, status="pending")})
    create = CreateTicket(command_id="c2", ticket_id=tid, message=message(5))
    assert plan_chunk(plan, [(0, create)]) == {}
    assert [e.type for e in events_of(plan)] == ["message_added", "status_changed"]


def test_decode_separates_undecodable_records() -> None:
    good = AssignTicket(command_id="a", ticket_id="DS-AAAAAAAA", agent_id="x")
    records = [
        Record("t", 0, 0, b"k", good.model_dump_json().encode(), (), 0),
        Record("t", 0, 1, b"k", b"\xff not json", (), 0),
        Record("t", 0, 2, b"k", None, (), 0),
        Record("t", 0, 3, b"k", b'{"type": "assign", "command_id": "a"}', (), 0),
    ]
    commands, bad = decode(records)
    assert [i for i, _ in commands] == [0]
    assert set(bad) == {1, 2, 3}


# --- Outbox ---------------------------------------------------------------------------


def test_outbox_documents_round_trip_to_the_same_record() -> None:
    state = AgentState(agent_id="alice", name="Alice", teams=["net"], skills={"vpn": 3})
    entry = outbox.record(topic="p.agents.state", key="alice", value=state, event_id="e1")
    doc = entry.document(now=T0)
    assert (doc["_id"], doc["type"], doc["published"]) == ("e1", "deskstream.agent.state", False)
    pending = outbox.Pending.from_doc(doc)
    record = pending.out_record()
    assert (record.topic, record.key, record.event_id) == ("p.agents.state", "alice", "e1")
    assert record.value == state
    later = outbox.record(topic="t", key="k", value=state, event_id="e2").document(now=T0)
    assert later["order"] > doc["order"]  # strictly increasing, even within one tick
    gone = outbox.tombstone(topic="p.agents.state", key="alice", event_id="e3", type="x")
    assert outbox.Pending.from_doc(gone.document(now=T0)).value is None


def test_older_pending_values_of_a_compacted_key_are_superseded() -> None:
    docs = [
        {"_id": "a1", "topic": "s", "key": "alice", "order": 1, "compacted": True},
        {"_id": "a2", "topic": "s", "key": "alice", "order": 2, "compacted": True},
        {"_id": "a3", "topic": "s", "key": "alice", "order": 3, "compacted": True},
        {"_id": "b1", "topic": "s", "key": "bob", "order": 4, "compacted": True},
        {"_id": "t1", "topic": "e", "key": "DS-1", "order": 0, "compacted": False},
    ]
    # a2 is on Kafka: a1 must not follow it; a3 is newer and still goes out.
    assert superseded(docs, found={"a2", "t2"}) == {"a1"}
    assert superseded(docs, found=set()) == set()


# --- Cursors and API shapes -----------------------------------------------------------


def test_cursors_round_trip_and_forged_ones_are_refused() -> None:
    at = datetime(2026, 3, 2, 9, 0, 0, 123000, tzinfo=UTC)
    cursor = pagination.encode(at=at, ident="DS-ABCDEFGH")
    assert pagination.decode(cursor, with_time=True) == (at, "DS-ABCDEFGH")
    forged = [
        "not-base64!!",
        "eyIkbmUiOm51bGx9",  # {"$ne":null}
        pagination.encode(at=None, ident="x"),  # no time where one is needed
        "eyJpIjp7IiRuZSI6bnVsbH0sInQiOjF9",  # {"i":{"$ne":null},"t":1}
    ]
    for bad in forged:
        with pytest.raises(Invalid) as err:
            pagination.decode(bad, with_time=True)
        assert err.value.loc == ("query", "cursor")


@pytest.mark.parametrize(
    "agent_id", ["$ne", '{"$ne": null}', "a.b$", "", "a b", "-leading", "x" * 101]
)
def test_ids_that_could_be_operators_or_paths_are_refused(agent_id: str) -> None:
    with pytest.raises(ValidationError):
        AgentCreate(agent_id=agent_id, name="X")


def test_skill_names_are_plain_and_levels_one_to_five() -> None:
    AgentCreate(agent_id="alice@example.com", name="A", skills={"vpn": 1, "sap-fi": 5})
    for skills in ({"$gt": 1}, {"a.b": 1}, {"vpn": 0}, {"vpn": 6}):
        with pytest.raises(ValidationError):
            AgentCreate(agent_id="alice", name="A", skills=skills)


def test_critical_services_are_never_opened_to_peers() -> None:
    with pytest.raises(ValidationError, match="critical services can never be opened to peers"):
        ServiceCreate(
            service_id="erp", name="ERP", team="fin", criticality="critical", peers_allowed=True
        )
    ServiceCreate(service_id="erp", name="ERP", team="fin", criticality="high", peers_allowed=True)


def test_ticket_filters_refuse_unknown_and_operator_shaped_parameters() -> None:
    with pytest.raises(ValidationError, match="status\\[\\$ne\\]"):
        TicketFilters.model_validate({"status[$ne]": "x"})
    with pytest.raises(ValidationError):
        TicketFilters.model_validate({"requester": '{"$ne": null}'})
    filters = TicketFilters.model_validate({"status": ["open"], "requester": "maria@example.com"})
    assert filters.query()["status"] == {"$in": ["open"]}
    assert filters.query()["requester.id"] == "maria@example.com"


def test_a_portal_request_becomes_an_inbound_message_of_its_user() -> None:
    body = PortalRequestCreate(service_id="laptops", subject="  Screen  ", description="Flickers")
    msg = portal.inbound_message(user_id="maria", request_id="req-1", body=body, now=T0)
    assert msg.event_id == ids.event_id("portal", "maria", "req-1")
    assert (msg.conversation_key, msg.service_hint, msg.subject) == (
        "portal:req-1",
        "laptops",
        "Screen",
    )
    assert (msg.sender.kind, msg.sender.id, msg.channel) == ("portal", "maria", Channel.PORTAL)
    assert ids.ticket_id_for(msg.event_id).startswith("DS-")


def test_chunks_keep_order_and_bound_count_and_bytes() -> None:
    small = [
        (i, AssignTicket(command_id=f"a{i}", ticket_id="DS-AAAAAAAA", agent_id="x"))
        for i in range(7)
    ]
    assert [[i for i, _ in c] for c in chunks(small, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    body = "x" * 1_000_000
    heavy = InboundMessage.model_validate({**message(1).model_dump(), "text": body, "html": body})
    creates = [
        (i, CreateTicket(command_id=f"c{i}", ticket_id="DS-AAAAAAAA", message=heavy))
        for i in range(9)
    ]
    # About 2 MB each: four fit in one transaction's 8 MiB, the fifth starts the next.
    assert [[i for i, _ in c] for c in chunks(creates, 100)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
