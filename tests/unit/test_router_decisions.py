"""The router's pure parts: classification rules and the explained assignment decision."""

from collections import Counter
from datetime import UTC, datetime

from deskstream.events import (
    AgentState,
    Channel,
    ChannelCapacity,
    InboundMessage,
    Presence,
    SenderIdentity,
    ServiceEntry,
)
from deskstream_router.assign import Candidate, decide
from deskstream_router.classify import Rules, classify

RULES = Rules.load()
CATALOGUE = {
    "vpn": ServiceEntry(
        service_id="vpn", name="VPN", team="network", required_skills={"vpn": 3}, criticality="high"
    ),
    "hardware-request": ServiceEntry(service_id="hardware-request", name="HW", team="field"),
}


def message(
    subject: str,
    channel: Channel = Channel.EMAIL,
    sender: str = "a@example.com",
    service_hint: str | None = None,
) -> InboundMessage:
    kind = "email" if channel is Channel.EMAIL else channel.value
    return InboundMessage(
        event_id="e1",
        channel=channel,
        conversation_key="c1",
        sender=SenderIdentity(channel=channel, kind=kind, id=sender),
        subject=subject,
        received_at=datetime.now(UTC),
        service_hint=service_hint,
    )


def test_keyword_rule_picks_the_service_and_its_team() -> None:
    c = classify(message("VPN keeps dropping"), CATALOGUE, RULES)
    assert (c.service_id, c.team, c.rule) == ("vpn", "network", f"vpn@v{RULES.version}")
    assert c.required_skills == {"vpn": 3}
    assert c.criticality == "high"


def test_portal_choice_wins_over_keywords() -> None:
    m = message("my VPN laptop", Channel.PORTAL, "u-1", service_hint="hardware-request")
    c = classify(m, CATALOGUE, RULES)
    assert (c.service_id, c.team, c.rule) == (
        "hardware-request",
        "field",
        f"portal-choice@v{RULES.version}",
    )


def test_sender_domain_rule_and_default() -> None:
    c = classify(message("question", sender="bob@finance.example.com"), CATALOGUE, RULES)
    assert c.rule.startswith("finance-apps@")
    # finance-apps is not in this catalogue: its tickets go to the default team.
    assert c.team == RULES.default_team
    nothing = classify(message("hello there"), CATALOGUE, RULES)
    assert (nothing.service_id, nothing.rule) == (
        RULES.default_service,
        f"default@v{RULES.version}",
    )
    # Keywords match whole words only: "reprinted" is not "print".
    assert classify(message("reprinted badge"), CATALOGUE, RULES).rule.startswith("default@")


def agent(
    agent_id: str,
    presence: Presence = Presence.ONLINE,
    vpn: int = 3,
    email: int = 10,
    total: int = 15,
) -> AgentState:
    return AgentState(
        agent_id=agent_id,
        name=agent_id,
        teams=["network"],
        skills={"vpn": vpn},
        presence=presence,
        capacity=ChannelCapacity(email=email, total=total),
    )


def test_least_loaded_qualified_agent_wins_and_every_filter_is_named() -> None:
    candidates = [
        Candidate(agent("away", Presence.AWAY), Counter()),
        Candidate(agent("weak", vpn=1), Counter()),
        Candidate(agent("email-full", email=2), Counter(email=2)),
        Candidate(agent("total-full", total=3), Counter(chat=3)),
        Candidate(agent("busy"), Counter(email=5)),
        Candidate(agent("free"), Counter(email=1)),
    ]
    d = decide(
        ticket_id="DS-AAAAAAAA",
        channel=Channel.EMAIL,
        required_skills={"vpn": 3},
        candidates=candidates,
    )
    assert d.agent_id == "free"
    why = {c["agent_id"]: c["filtered_by"] for c in d.explanation["candidates"]}
    assert why == {
        "away": "presence: away",
        "weak": "skill: vpn 1 < 3",
        "email-full": "capacity: email 2/2",
        "total-full": "capacity: total 3/3",
        "busy": None,
        "free": None,
    }
    scores = {c["agent_id"]: c["score"] for c in d.explanation["candidates"] if "score" in c}
    assert scores["free"] > scores["busy"]


def test_nobody_qualifies_and_ties_break_deterministically() -> None:
    none = decide(
        ticket_id="DS-AAAAAAAA",
        channel=Channel.EMAIL,
        required_skills={"vpn": 3},
        candidates=[Candidate(agent("x", Presence.OFFLINE), Counter())],
    )
    assert none.agent_id is None
    tie = [Candidate(agent("b"), Counter()), Candidate(agent("a"), Counter())]
    assert (
        decide(ticket_id="T", channel=Channel.EMAIL, required_skills={}, candidates=tie).agent_id
        == "a"
    )
    stronger = [Candidate(agent("a", vpn=3), Counter()), Candidate(agent("b", vpn=5), Counter())]
    assert (
        decide(
            ticket_id="T", channel=Channel.EMAIL, required_skills={"vpn": 3}, candidates=stronger
        ).agent_id
        == "b"
    )
