"""The assignment decision: who gets a ticket, and why — pure, explained, deterministic.

Filters in order (the first that fails names why an agent was passed over): presence
(online only), skills (every required skill at its minimum level), channel capacity (the
agent's cap for the ticket's channel), total capacity. Of those left, the channel's policy
ranks: "least-load" takes the least loaded (relative to the agent's total cap), ties to the
stronger skill match; "best-skill" takes the strongest skill match, ties to the lesser
load. The agent id breaks what is left, so a replay decides the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from deskstream.events import AgentState, Channel, Presence


@dataclass(frozen=True)
class Candidate:
    state: AgentState
    load: Counter[str]  # open tickets per channel, reservations included

    @property
    def total(self) -> int:
        return sum(self.load.values())


@dataclass(frozen=True)
class Decision:
    agent_id: str | None
    explanation: dict[str, Any]


def _filter(c: Candidate, channel: Channel, required: dict[str, int]) -> str | None:
    state = c.state
    if state.presence is not Presence.ONLINE:
        return f"presence: {state.presence.value}"
    for skill, level in sorted(required.items()):
        have = state.skills.get(skill, 0)
        if have < level:
            return f"skill: {skill} {have} < {level}"
    channel_cap = getattr(state.capacity, channel.value)
    if c.load[channel.value] >= channel_cap:
        return f"capacity: {channel.value} {c.load[channel.value]}/{channel_cap}"
    if c.total >= state.capacity.total:
        return f"capacity: total {c.total}/{state.capacity.total}"
    return None


def decide(
    *,
    ticket_id: str,
    channel: Channel,
    required_skills: dict[str, int],
    candidates: list[Candidate],
    rank: str = "least-load",
    policy_rule: str = "",
) -> Decision:
    considered: list[dict[str, Any]] = []
    qualified: list[tuple[tuple[float, float, str], Candidate]] = []
    for c in sorted(candidates, key=lambda c: c.state.agent_id):
        removed_by = _filter(c, channel, required_skills)
        surplus = sum(c.state.skills.get(s, 0) - lvl for s, lvl in required_skills.items())
        load_ratio = c.total / c.state.capacity.total if c.state.capacity.total else 1.0
        entry: dict[str, Any] = {
            "agent_id": c.state.agent_id,
            "presence": c.state.presence.value,
            "load": {"total": c.total, channel.value: c.load[channel.value]},
            "caps": {
                "total": c.state.capacity.total,
                channel.value: getattr(c.state.capacity, channel.value),
            },
            "filtered_by": removed_by,
        }
        if removed_by is None:
            entry["score"] = round(1.0 - load_ratio, 4)
            entry["skill_surplus"] = surplus
            key = (load_ratio, -surplus) if rank == "least-load" else (-surplus, load_ratio)
            qualified.append(((*key, c.state.agent_id), c))
        considered.append(entry)
    winner = min(qualified, key=lambda q: q[0])[1].state.agent_id if qualified else None
    return Decision(
        agent_id=winner,
        explanation={
            "ticket_id": ticket_id,
            "channel": channel.value,
            "required_skills": required_skills,
            "policy": f"online, skills, channel cap, total cap; then {rank}",
            "channel_rule": policy_rule,
            "candidates": considered,
            "winner": winner,
        },
    )
