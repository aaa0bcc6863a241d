"""The router's internal records (topics `routing.requests` and `routing.agent-load`).

They never leave the router, so they live here rather than in the shared contracts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from deskstream.events import AgentState, Channel, utcnow
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Internal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlaceTicket(_Internal):
    """A new ticket for stage 2 to assign or queue (key: team)."""

    type: Literal["place"] = "place"
    ticket_id: str
    team: str
    channel: Channel
    service_id: str
    required_skills: dict[str, int] = {}
    criticality: str = "medium"
    classification_rule: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class AgentSnapshot(_Internal):
    """An agent's roster record and open tickets, sent to their home team (key: team)."""

    type: Literal["agent"] = "agent"
    team: str
    state: AgentState
    open_tickets: dict[str, Channel] = {}
    # Grows with every snapshot of the agent. A worker that takes a partition over replays
    # the records after the last committed offset on state that already saw them; an older
    # snapshot must not then undo a newer one (it would hide open tickets and overfill).
    seq: int = 0


class AgentRemoved(_Internal):
    """The agent no longer has this team as home team (key: the old team)."""

    type: Literal["agent_removed"] = "agent_removed"
    team: str
    agent_id: str


RoutingInput = Annotated[PlaceTicket | AgentSnapshot | AgentRemoved, Field(discriminator="type")]
ROUTING_INPUT = TypeAdapter[Any](RoutingInput)


class LoadDelta(_Internal):
    """A ticket joins or leaves an agent's open set (key: agent id), from tickets.events."""

    agent_id: str
    ticket_id: str
    channel: Channel
    open: bool
    event_id: str
