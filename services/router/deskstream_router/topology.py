"""The router's stream topology: four Faust agents, each owning one kind of state.

    inbound.*  (key: conversation) --thread_and_classify--> tickets.commands (create/append)
                                                        \\-> routing.requests (place, key: team)
    tickets.events (key: ticket) --load_changes--> routing.agent-load (key: agent)
    agents.state + routing.agent-load (key: agent) --ledger--> routing.requests (agent snapshot,
                                                               key: the agent's home team)
    routing.requests (key: team) --assign--> tickets.commands (assign/queue)

Who owns an agent's load: the partition of the agent's home team (`teams[0]`). Every
change to a team's capacity (new tickets to place, presence, assignments and resolutions
from tickets.events) reaches that team's partition of `routing.requests` as one ordered
stream, so one worker at a time decides for the team and two workers can never fill the
same last slot. See services/router/README.md.

Batching: every agent takes batches (`take_events`) and sets Faust's current event per
record, because tables choose their changelog partition from it; output is sent without
awaiting each ack. Every decision is deterministic given the ordered input, and every
command id is derived from its cause, so a replay after a crash re-sends the same commands
and the ticket-api ignores the repeats.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Any

import faust
from deskstream.cloudevents import ce_headers
from deskstream.events import (
    TICKET_EVENT,
    AgentState,
    AppendMessage,
    AssignTicket,
    Channel,
    CreateTicket,
    InboundMessage,
    QueueTicket,
    StatusChanged,
    TicketAssigned,
    TicketStatus,
)
from deskstream.ids import ticket_id_for
from deskstream.runner import Record, dead_letter_for
from deskstream.topics import BY_NAME
from faust.streams import _current_event
from faust.types import EventT as _EventT
from pydantic import BaseModel

from deskstream_router.assign import Candidate, decide
from deskstream_router.catalogue import CatalogueView
from deskstream_router.classify import Rules, classify
from deskstream_router.models import (
    ROUTING_INPUT,
    AgentRemoved,
    AgentSnapshot,
    LoadDelta,
    PlaceTicket,
)
from deskstream_router.settings import RouterSettings

log = logging.getLogger(__name__)
EventT = _EventT[Any]

OPEN_STATUSES = {TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.PENDING}
CRITICALITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
PLACED_MEMORY = 5000  # placements a team remembers, to answer replays idempotently
RESERVATION_TTL_MS = 10 * 60 * 1000  # an unconfirmed assignment frees its slot after this
BATCH = 500
WITHIN_S = 0.1
SOURCE = "/deskstream/router"


def _set_current(event: EventT) -> None:
    # Faust tables pick the changelog partition from the current event; take_events hands
    # a batch without setting it, so it is set for each record (see the Faust spike note).
    _current_event.set(weakref.ref(event))


def _record(event: EventT) -> Record:
    msg = event.message
    raw_headers: Any = msg.headers or ()
    headers = list(raw_headers.items() if isinstance(raw_headers, dict) else raw_headers)
    return Record(
        msg.topic,
        msg.partition,
        msg.offset,
        msg.key,
        msg.value,
        headers,
        int((msg.timestamp or 0) * 1000),
    )


class Topology:
    def __init__(self, app: faust.App, settings: RouterSettings, rules: Rules) -> None:
        self.app = app
        self.settings = settings
        self.rules = rules
        t = settings.topics

        def raw_topic(*names: str) -> Any:
            return app.topic(
                *names,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            )

        self.inbound = raw_topic(*(t.inbound(ch) for ch in Channel))
        self.commands = raw_topic(t.name("tickets.commands"))
        self.events = raw_topic(t.name("tickets.events"))
        self.requests = raw_topic(t.name("routing.requests"))
        self.agent_load = raw_topic(t.name("routing.agent-load"))
        self.roster = raw_topic(t.name("agents.state"), t.name("routing.agent-load"))
        self.deadletter = raw_topic(t.deadletter("router"))
        self.catalogue = CatalogueView(
            settings.kafka_bootstrap_servers,
            t.name("catalogue.services"),
            BY_NAME["catalogue.services"].partitions,
        )

        # conversation key -> {"ticket", "first", "place"}; partitioned like inbound.*
        self.conversations = app.Table("conversations", default=None, partitions=6)
        # agent id -> {"state", "open", "home"}; partitioned like agents.state
        self.ledger = app.Table("agent-ledger", default=None, partitions=3)
        # team -> {"agents", "reserved", "queue", "placed"}; partitioned like routing.requests
        self.teams = app.Table("teams", default=None, partitions=6)

        app.task(self.catalogue.run)
        app.agent(self.inbound, name="thread_and_classify")(self.thread_and_classify)
        app.agent(self.events, name="load_changes")(self.load_changes)
        app.agent(self.roster, name="ledger")(self.agent_ledger)
        app.agent(self.requests, name="assign")(self.assign)

    # --- output -------------------------------------------------------------------------

    async def _send(
        self, topic: Any, key: str, value: BaseModel, event_id: str, event_type: str
    ) -> Any:
        """Hand the record to the producer now; returns the future of its ack.

        force=True: Faust would otherwise attach the record to the current event and send
        it only when that event is acked, so awaiting its ack within the batch would hang.
        """
        return await topic.send(
            key=key.encode(),
            value=value.model_dump_json().encode(),
            headers=ce_headers(event_id=event_id, event_type=event_type, source=SOURCE),
            force=True,
        )

    async def _command(self, command: Any) -> Any:
        return await self._send(
            self.commands,
            command.ticket_id,
            command,
            command.command_id,
            f"io.deskstream.command.{command.type}.v1",
        )

    async def _dead_letter(self, event: EventT, error: BaseException) -> None:
        record = _record(event)
        letter = dead_letter_for(record, stage="router", error=error, attempts=1)
        log.error(
            "record dead-lettered",
            extra={
                "topic": record.topic,
                "offset": record.offset,
                "partition": record.partition,
                "error": letter.reason[:300],
            },
        )
        await self.deadletter.send(
            key=record.key,
            value=letter.model_dump_json().encode(),
            headers=list(record.headers),
            force=True,
        )

    async def _each(self, stream: Any, handle: Any) -> None:
        """Batches from `stream`; `handle(events)` gets each batch, poison goes to the DLQ."""
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            await handle(events)

    # --- stage 1: threading and classification ---------------------------------------

    async def thread_and_classify(self, stream: Any) -> None:
        await self._each(stream, self._thread_batch)

    async def _thread_batch(self, events: list[EventT]) -> None:
        # Classify only on the whole catalogue. Waiting here, inside the iteration, and not
        # before it: an agent that has not started iterating holds up Faust's start-up.
        await self.catalogue.loaded.wait()
        creates: list[Any] = []
        placements: list[PlaceTicket] = []
        for event in events:
            _set_current(event)
            try:
                message = InboundMessage.model_validate_json(event.value)
                await self._thread_one(message, creates, placements)
            except Exception as exc:  # one bad record must not stop the partition
                await self._dead_letter(event, exc)
        # A ticket's create must be on tickets.commands before stage 2 can assign it (the
        # two are produced by different workers): wait for the batch's creates, once.
        if creates:
            await asyncio.gather(*creates)
        for place in placements:
            await self._send(
                self.requests,
                place.team,
                place,
                f"place:{place.ticket_id}",
                "io.deskstream.routing.place.v1",
            )

    async def _thread_one(
        self, message: InboundMessage, creates: list[Any], placements: list[PlaceTicket]
    ) -> None:
        key = message.conversation_key
        entry = self.conversations.get(key)
        if message.ticket_hint:
            ticket_id = message.ticket_hint
            if entry is None or entry["ticket"] != ticket_id:
                self.conversations[key] = {"ticket": ticket_id, "first": None, "place": None}
            await self._command(
                AppendMessage(
                    command_id=f"msg:{message.event_id}", ticket_id=ticket_id, message=message
                )
            )
            return
        if entry is not None and entry["first"] != message.event_id:
            await self._command(
                AppendMessage(
                    command_id=f"msg:{message.event_id}", ticket_id=entry["ticket"], message=message
                )
            )
            return
        if entry is None:
            # A new conversation: the ticket id derives from its first event.
            ticket_id = ticket_id_for(message.event_id)
            c = classify(message, self.catalogue.services, self.rules)
            place = PlaceTicket(
                ticket_id=ticket_id,
                team=c.team,
                channel=message.channel,
                service_id=c.service_id,
                required_skills=c.required_skills,
                criticality=c.criticality,
                classification_rule=c.rule,
                created_at=message.received_at,
            )
            entry = {
                "ticket": ticket_id,
                "first": message.event_id,
                "place": place.model_dump(mode="json"),
            }
            self.conversations[key] = entry
        # The first event (again, on a replay): the same create and placement, same ids.
        place = PlaceTicket.model_validate(entry["place"])
        creates.append(
            await self._command(
                CreateTicket(
                    command_id=f"create:{message.event_id}",
                    ticket_id=place.ticket_id,
                    message=message,
                    service_id=place.service_id,
                    team=place.team,
                    classification_rule=place.classification_rule,
                )
            )
        )
        placements.append(place)

    # --- load from tickets.events ---------------------------------------------------------

    async def load_changes(self, stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            for event in events:
                try:
                    for delta in self._deltas(TICKET_EVENT.validate_json(event.value)):
                        await self._send(
                            self.agent_load,
                            delta.agent_id,
                            delta,
                            f"load:{delta.event_id}:{delta.agent_id}",
                            "io.deskstream.routing.load.v1",
                        )
                except Exception as exc:
                    await self._dead_letter(event, exc)

    @staticmethod
    def _deltas(event: Any) -> Iterable[LoadDelta]:
        if isinstance(event, TicketAssigned):
            if event.previous_agent_id and event.previous_agent_id != event.agent_id:
                yield LoadDelta(
                    agent_id=event.previous_agent_id,
                    ticket_id=event.ticket_id,
                    channel=event.channel,
                    open=False,
                    event_id=event.event_id,
                )
            yield LoadDelta(
                agent_id=event.agent_id,
                ticket_id=event.ticket_id,
                channel=event.channel,
                open=event.status in OPEN_STATUSES,
                event_id=event.event_id,
            )
        elif isinstance(event, StatusChanged) and event.assignee:
            now_open = event.new in OPEN_STATUSES
            if now_open != (event.old in OPEN_STATUSES):
                yield LoadDelta(
                    agent_id=event.assignee,
                    ticket_id=event.ticket_id,
                    channel=event.channel,
                    open=now_open,
                    event_id=event.event_id,
                )

    # --- the ledger: an agent's roster record and open tickets -------------------------

    async def agent_ledger(self, stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            changed: dict[str, tuple[EventT, str | None]] = {}
            for event in events:
                _set_current(event)
                try:
                    agent_id, old_home = self._ledger_one(event)
                    first_old = changed.get(agent_id, (event, old_home))[1]
                    changed[agent_id] = (event, first_old)
                except Exception as exc:
                    await self._dead_letter(event, exc)
            # One snapshot per changed agent per batch, not one per record.
            for agent_id, (_, old_home) in changed.items():
                entry = self.ledger.get(agent_id) or {}
                home = entry.get("home")
                if old_home and old_home != home:
                    await self._send(
                        self.requests,
                        old_home,
                        AgentRemoved(team=old_home, agent_id=agent_id),
                        f"agent-removed:{agent_id}:{old_home}",
                        "io.deskstream.routing.agent_removed.v1",
                    )
                if home and entry.get("state"):
                    snap = AgentSnapshot(
                        team=home,
                        state=AgentState.model_validate(entry["state"]),
                        open_tickets=entry["open"],
                    )
                    await self._send(
                        self.requests,
                        home,
                        snap,
                        f"agent:{agent_id}",
                        "io.deskstream.routing.agent.v1",
                    )

    def _ledger_one(self, event: EventT) -> tuple[str, str | None]:
        if not isinstance(event.key, bytes):
            raise ValueError("a roster or load record needs the agent id as its key")
        key = event.key.decode()
        stored = self.ledger.get(key)
        entry = dict(stored) if stored else {"state": None, "open": {}, "home": None}
        old_home = entry["home"]
        if event.message.topic == self.settings.topics.name("agents.state"):
            if event.value is None:  # tombstone: the agent was deleted
                agent_id = key
                entry["state"], entry["home"] = None, None
            else:
                state = AgentState.model_validate_json(event.value)
                agent_id = state.agent_id
                entry["state"] = state.model_dump(mode="json")
                entry["home"] = state.teams[0] if state.teams else None
        else:
            delta = LoadDelta.model_validate_json(event.value)
            agent_id = delta.agent_id
            opened = dict(entry["open"])
            if delta.open:
                opened[delta.ticket_id] = delta.channel.value
            else:
                opened.pop(delta.ticket_id, None)
            entry["open"] = opened
        self.ledger[agent_id] = entry
        return agent_id, old_home

    # --- stage 2: assignment per team ---------------------------------------------------

    async def assign(self, stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            teams: dict[str, tuple[EventT, dict[str, Any]]] = {}
            for event in events:
                try:
                    item = ROUTING_INPUT.validate_json(event.value)
                    _, state = teams.get(item.team) or (event, self._team(item.team))
                    await self._assign_one(item, state, event)
                    teams[item.team] = (event, state)
                except Exception as exc:
                    await self._dead_letter(event, exc)
            # One table write per team per batch (the team's last event names the partition).
            for team, (event, state) in teams.items():
                _set_current(event)
                self.teams[team] = state

    def _team(self, team: str) -> dict[str, Any]:
        stored = self.teams.get(team)
        if stored is None:
            return {"agents": {}, "reserved": {}, "queue": [], "placed": {}}
        return {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in stored.items()}

    async def _assign_one(self, item: Any, state: dict[str, Any], event: EventT) -> None:
        now_ms = int((event.message.timestamp or 0) * 1000)
        if isinstance(item, PlaceTicket):
            placed = state["placed"].get(item.ticket_id)
            if placed is not None:
                await self._replay_placement(item, placed, state)
                return
            if not await self._try_assign(item, state, now_ms):
                state["queue"] = [*state["queue"], item.model_dump(mode="json")]
                state["placed"][item.ticket_id] = "queued"
                self._trim(state)
                await self._command(
                    QueueTicket(
                        command_id=f"route:{item.ticket_id}:queue:{len(state['queue'])}",
                        ticket_id=item.ticket_id,
                        team=item.team,
                        position=len(state["queue"]),
                        explanation=state.pop("_last_explanation", {}),
                    )
                )
            return
        if isinstance(item, AgentSnapshot):
            state["agents"][item.state.agent_id] = {
                "state": item.state.model_dump(mode="json"),
                "open": dict(item.open_tickets),
            }
        elif isinstance(item, AgentRemoved):
            state["agents"].pop(item.agent_id, None)
        self._settle_reservations(state, now_ms)
        await self._drain(state, now_ms)

    async def _replay_placement(
        self, item: PlaceTicket, placed: str, state: dict[str, Any]
    ) -> None:
        # A redelivered request: answer as before, so a command lost in a crash is re-sent.
        if placed == "queued":
            return
        await self._command(
            AssignTicket(
                command_id=f"route:{item.ticket_id}:assign:{placed}",
                ticket_id=item.ticket_id,
                agent_id=placed,
                team=item.team,
                explanation={"replayed": True},
            )
        )

    def _candidates(self, state: dict[str, Any]) -> list[Candidate]:
        reserved_by: dict[str, Counter[str]] = {}
        for r in state["reserved"].values():
            reserved_by.setdefault(r["agent"], Counter())[r["channel"]] += 1
        out = []
        for agent_id, a in state["agents"].items():
            load = Counter(a["open"].values()) + reserved_by.get(agent_id, Counter())
            out.append(Candidate(AgentState.model_validate(a["state"]), load))
        return out

    async def _try_assign(self, item: PlaceTicket, state: dict[str, Any], now_ms: int) -> bool:
        decision = decide(
            ticket_id=item.ticket_id,
            channel=item.channel,
            required_skills=item.required_skills,
            candidates=self._candidates(state),
        )
        decision.explanation.update(
            service_id=item.service_id,
            team=item.team,
            classification_rule=item.classification_rule,
            criticality=item.criticality,
        )
        if decision.agent_id is None:
            state["_last_explanation"] = decision.explanation
            return False
        state["reserved"][item.ticket_id] = {
            "agent": decision.agent_id,
            "channel": item.channel.value,
            "at": now_ms,
        }
        state["placed"][item.ticket_id] = decision.agent_id
        self._trim(state)
        await self._command(
            AssignTicket(
                command_id=f"route:{item.ticket_id}:assign:{decision.agent_id}",
                ticket_id=item.ticket_id,
                agent_id=decision.agent_id,
                team=item.team,
                explanation=decision.explanation,
            )
        )
        return True

    @staticmethod
    def _settle_reservations(state: dict[str, Any], now_ms: int) -> None:
        """Drop reservations the roster now confirms, or that waited too long."""
        confirmed = {t for a in state["agents"].values() for t in a["open"]}
        state["reserved"] = {
            t: r
            for t, r in state["reserved"].items()
            if t not in confirmed and now_ms - r["at"] < RESERVATION_TTL_MS
        }

    async def _drain(self, state: dict[str, Any], now_ms: int) -> None:
        """Offer queued tickets, most critical and oldest first, to the capacity now free."""
        if not state["queue"]:
            return
        queue = sorted(
            (PlaceTicket.model_validate(q) for q in state["queue"]),
            key=lambda p: (CRITICALITY_RANK.get(p.criticality, 9), p.created_at, p.ticket_id),
        )
        waiting = []
        for item in queue:
            if not await self._try_assign(item, state, now_ms):
                waiting.append(item.model_dump(mode="json"))
        state.pop("_last_explanation", None)
        state["queue"] = waiting

    @staticmethod
    def _trim(state: dict[str, Any]) -> None:
        placed = state["placed"]
        if len(placed) > PLACED_MEMORY:
            state["placed"] = dict(list(placed.items())[-PLACED_MEMORY:])
