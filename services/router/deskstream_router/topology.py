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
import bisect
import heapq
import logging
import time
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
    Presence,
    QueueTicket,
    StatusChanged,
    TicketAssigned,
    TicketStatus,
)
from deskstream.ids import ticket_id_for
from deskstream.producer import command_event_type
from deskstream.runner import Record, dead_letter_for
from deskstream.topics import BY_NAME
from faust.streams import _current_event
from faust.types import EventT as _EventT
from pydantic import BaseModel

from deskstream_router.assign import Candidate, decide
from deskstream_router.catalogue import CatalogueView
from deskstream_router.classify import Rules, classify
from deskstream_router.metrics import RouterMetrics
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


class QueueFull(Exception):
    """The team's queue is at its limit: the placement goes to the dead-letter topic."""


class Topology:
    def __init__(self, app: faust.App, settings: RouterSettings, rules: Rules) -> None:
        self.app = app
        self.settings = settings
        self.rules = rules
        self.metrics = RouterMetrics(settings)
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
        # team -> {"agents", "reserved", "queue", "placed", "seq"}; like routing.requests
        self.teams = app.Table("teams", default=None, partitions=6)
        # queued ticket id -> {"place", "position"}; written on its team's partition
        self.queued = app.Table("queued", default=None, partitions=6)

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
            command_event_type(command),
        )

    async def _dead_letter(self, event: EventT, error: BaseException) -> None:
        record = _record(event)
        letter = dead_letter_for(record, stage="router", error=error, attempts=1)
        self.metrics.dead_letter(error)
        log.error(
            "record dead-lettered",
            extra={
                "topic": record.topic,
                "offset": record.offset,
                "partition": record.partition,
                "error": letter.reason[:300],
                "event_id": letter.event_id,
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
            started = time.monotonic()
            try:
                await handle(events)
                # At least once: Faust commits a batch's offsets once the next batch is
                # asked for, without waiting for what handling it sent. Waiting here for
                # every send of the batch (commands, table changelogs, dead letters) keeps
                # a crash from committing input whose effects never reached Kafka.
                await self._flush()
                self.metrics.batch(stream, events, started)
            except BaseException as exc:
                # take_events acks the whole batch however its consumer leaves it (in its
                # `finally`), also when the agent is cancelled in a rebalance. An extra
                # reference keeps these offsets uncommitted, so the records come back.
                for event in events:
                    event.message.incref()
                log.warning(
                    "batch interrupted; its records stay unacknowledged",
                    extra={"records": len(events), "error": repr(exc)[:300]},
                )
                raise

    async def _flush(self) -> None:
        """Wait until Kafka acknowledged everything sent so far, table changelogs included.

        Table writes go through Faust's send buffer, whose own flush gives up after 0.1 s
        without progress; so drain it until empty, let its sender hand the last record to
        aiokafka, then wait for aiokafka's acks.
        """
        producer = self.app.producer
        started = time.monotonic()
        while producer.buffer.size:
            await producer.buffer.flush()
            if time.monotonic() - started > 30:
                log.warning("send buffer not draining", extra={"size": producer.buffer.size})
                started = time.monotonic()
        await asyncio.sleep(0)
        await producer.flush()

    # --- stage 1: threading and classification ---------------------------------------

    async def thread_and_classify(self, stream: Any) -> None:
        await self._each(stream, self._thread_batch)

    async def _thread_batch(self, events: list[EventT]) -> None:
        # Classify only on the whole catalogue. Waiting here, inside the iteration, and not
        # before it: an agent that has not started iterating holds up Faust's start-up.
        if not self.catalogue.loaded.is_set():
            log.info("waiting for the service catalogue", extra={"records": len(events)})
        await self.catalogue.loaded.wait()
        log.debug("threading a batch", extra={"records": len(events)})
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
        await self._each(stream, self._load_batch)

    async def _load_batch(self, events: list[EventT]) -> None:
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
        await self._each(stream, self._ledger_batch)

    async def _ledger_batch(self, events: list[EventT]) -> None:
        # agent id -> (its last event, its entry now, its home team before the batch)
        changed: dict[str, tuple[EventT, dict[str, Any], str | None]] = {}
        for event in events:
            try:
                agent_id, entry, old_home = self._ledger_one(event, changed)
                first_old = changed[agent_id][2] if agent_id in changed else old_home
                changed[agent_id] = (event, entry, first_old)
            except Exception as exc:
                await self._dead_letter(event, exc)
        # One snapshot per changed agent per batch, not one per record.
        for agent_id, (_, entry, old_home) in changed.items():
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
                entry["seq"] = entry.get("seq", 0) + 1
                snap = AgentSnapshot(
                    team=home,
                    state=AgentState.model_validate(entry["state"]),
                    open_tickets=entry["open"],
                    seq=entry["seq"],
                )
                await self._send(
                    self.requests,
                    home,
                    snap,
                    f"agent:{agent_id}",
                    "io.deskstream.routing.agent.v1",
                )
        # Snapshots first, then the ledger that produced them (see _assign_batch).
        await self._flush()
        for agent_id, (event, entry, _) in changed.items():
            _set_current(event)
            self.ledger[agent_id] = entry

    def _ledger_one(
        self, event: EventT, pending: dict[str, tuple[EventT, dict[str, Any], str | None]]
    ) -> tuple[str, dict[str, Any], str | None]:
        if not isinstance(event.key, bytes):
            raise ValueError("a roster or load record needs the agent id as its key")
        key = event.key.decode()
        stored = pending[key][1] if key in pending else self.ledger.get(key)
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
        return agent_id, entry, old_home

    # --- stage 2: assignment per team ---------------------------------------------------

    async def assign(self, stream: Any) -> None:
        await self._each(stream, self._assign_batch)

    async def _assign_batch(self, events: list[EventT]) -> None:
        teams: dict[str, tuple[EventT, TeamState]] = {}
        for event in events:
            try:
                item = ROUTING_INPUT.validate_json(event.value)
                _, team = teams.get(item.team) or (event, self._team(item.team))
                await self._assign_one(item, team, event)
                teams[item.team] = (event, team)
            except Exception as exc:
                await self._dead_letter(event, exc)
        if not teams:
            return
        # The batch's commands reach Kafka before the state that records them. A crash in
        # between replays the batch from the old state, so the same decisions come out with
        # the same command ids; the other order could record an assignment never sent.
        await self._flush()
        # One table write per team per batch (the team's last event names the partition),
        # and one per queued ticket that joined or left the queue.
        for team_id, (event, team) in teams.items():
            _set_current(event)
            self.teams[team_id] = team.state
            for ticket_id, detail in team.changed.items():
                if detail is None:
                    self.queued.pop(ticket_id, None)
                else:
                    self.queued[ticket_id] = detail

    def _team(self, team: str) -> TeamState:
        return TeamState(self.teams.get(team), self.queued)

    async def _assign_one(self, item: Any, team: TeamState, event: EventT) -> None:
        now_ms = int((event.message.timestamp or 0) * 1000)
        st = team.state
        if isinstance(item, PlaceTicket):
            placed = st["placed"].get(item.ticket_id)
            if placed is not None:
                await self._replay_placement(item, placed)
                return
            if not await self._try_assign(item, team, now_ms):
                self._check_room(item, team)
                await self._enqueue(item, team)
            return
        if isinstance(item, AgentSnapshot):
            known = st["agents"].get(item.state.agent_id)
            if known is not None and known.get("seq", 0) >= item.seq:
                return  # replayed after a takeover: the team has seen newer
            st["agents"][item.state.agent_id] = {
                "state": item.state.model_dump(mode="json"),
                "open": dict(item.open_tickets),
                "seq": item.seq,
            }
        elif isinstance(item, AgentRemoved):
            st["agents"].pop(item.agent_id, None)
        self._settle_reservations(st, now_ms)
        await self._drain(team, now_ms)

    async def _replay_placement(self, item: PlaceTicket, placed: str) -> None:
        # A redelivered request: answer as before (the ticket-api ignores the repeat).
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

    def _candidates(self, st: dict[str, Any]) -> list[Candidate]:
        reserved_by: dict[str, Counter[str]] = {}
        for r in st["reserved"].values():
            reserved_by.setdefault(r["agent"], Counter())[r["channel"]] += 1
        out = []
        for agent_id, a in st["agents"].items():
            load = Counter(a["open"].values()) + reserved_by.get(agent_id, Counter())
            out.append(Candidate(AgentState.model_validate(a["state"]), load))
        return out

    async def _try_assign(self, item: PlaceTicket, team: TeamState, now_ms: int) -> bool:
        policy = self.rules.policy(item.channel)
        decision = decide(
            ticket_id=item.ticket_id,
            channel=item.channel,
            required_skills=item.required_skills,
            candidates=self._candidates(team.state),
            rank=policy.rank,
            policy_rule=policy.rule,
        )
        decision.explanation.update(
            service_id=item.service_id,
            team=item.team,
            classification_rule=item.classification_rule,
            criticality=item.criticality,
        )
        if decision.agent_id is None:
            team.last_explanation = decision.explanation
            return False
        st = team.state
        st["reserved"][item.ticket_id] = {
            "agent": decision.agent_id,
            "channel": item.channel.value,
            "at": now_ms,
        }
        st["placed"][item.ticket_id] = decision.agent_id
        self._trim(st)
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

    def _check_room(self, item: PlaceTicket, team: TeamState) -> None:
        waiting = sum(len(q) for q in team.state["queue"].values())
        if waiting >= self.settings.max_queued_per_team:
            raise QueueFull(
                f"team {item.team} already has {waiting} queued tickets "
                f"(ROUTER_MAX_QUEUED_PER_TEAM); ticket {item.ticket_id} was not queued"
            )

    async def _enqueue(self, item: PlaceTicket, team: TeamState) -> None:
        """The ticket waits in its channel's queue: by criticality, then age."""
        st = team.state
        entry = [
            self.rules.policy(item.channel).queue_priority,
            CRITICALITY_RANK.get(item.criticality, 9),
            item.created_at.isoformat(),
            item.ticket_id,
            item.channel.value,
        ]
        waiting = st["queue"].setdefault(item.channel.value, [])
        index = bisect.bisect_left(waiting, entry)
        waiting.insert(index, entry)
        st["placed"][item.ticket_id] = "queued"
        self._trim(st)
        team.changed[item.ticket_id] = {"place": item.model_dump(mode="json"), "position": 0}
        await self._announce(team, item.ticket_id, index + 1, team.last_explanation)
        team.last_explanation = {}
        if index + 1 < len(waiting):  # it went ahead of others: they moved back one place
            await self._announce_positions(team, item.channel.value, start=index + 1)

    async def _announce(
        self, team: TeamState, ticket_id: str, position: int, explanation: dict[str, Any]
    ) -> None:
        """Tell the ticket-api the ticket's place in its channel's queue, when it changed."""
        detail = team.detail(ticket_id)
        if detail is None or detail["position"] == position:
            return
        place = PlaceTicket.model_validate(detail["place"])
        team.changed[ticket_id] = {**detail, "position": position}
        st = team.state
        st["seq"] = st.get("seq", 0) + 1
        await self._command(
            QueueTicket(
                command_id=f"route:{ticket_id}:queue:{st['seq']}",
                ticket_id=ticket_id,
                team=place.team,
                position=position,
                estimated_wait_s=self.rules.policy(place.channel).estimate_s(position),
                explanation=explanation,
            )
        )

    async def _announce_positions(self, team: TeamState, channel: str, start: int = 0) -> None:
        """Channels that show the wait (chat) hear of every move in their queue."""
        if not self.rules.policy(Channel(channel)).announce_position:
            return
        waiting = team.state["queue"].get(channel, [])
        for position, entry in enumerate(waiting[start:], start=start + 1):
            await self._announce(team, entry[3], position, {"moved": True})

    @staticmethod
    def _settle_reservations(st: dict[str, Any], now_ms: int) -> None:
        """Drop reservations the roster now confirms, or that waited too long."""
        confirmed = {t for a in st["agents"].values() for t in a["open"]}
        st["reserved"] = {
            t: r
            for t, r in st["reserved"].items()
            if t not in confirmed and now_ms - r["at"] < RESERVATION_TTL_MS
        }

    def _free_channels(self, st: dict[str, Any]) -> set[str]:
        """Channels on which some online agent of the team has a free slot right now."""
        free: set[str] = set()
        for c in self._candidates(st):
            cap = c.state.capacity
            if c.state.presence is Presence.ONLINE and c.total < cap.total:
                free.update(ch.value for ch in Channel if c.load[ch.value] < getattr(cap, ch.value))
        return free

    async def _drain(self, team: TeamState, now_ms: int) -> None:
        """Offer queued tickets, in queue order, to the capacity now free.

        Only the queues of channels with a free slot somewhere in the team are read, merged
        into one order (channel priority, criticality, age); the others stay untouched.
        """
        queues: dict[str, list[list[Any]]] = team.state["queue"]
        free = self._free_channels(team.state) & {ch for ch, waiting in queues.items() if waiting}
        if not free:
            return
        kept: dict[str, list[list[Any]]] = {ch: [] for ch in free}
        for entry in heapq.merge(*(queues[ch] for ch in free)):
            channel, ticket_id = entry[4], entry[3]
            detail = team.detail(ticket_id) if channel in free else None
            if detail is None:  # its channel filled up meanwhile: it keeps its place
                kept[channel].append(entry)
                continue
            place = PlaceTicket.model_validate(detail["place"])
            if await self._try_assign(place, team, now_ms):
                team.changed[ticket_id] = None
                free = self._free_channels(team.state)
            else:
                kept[channel].append(entry)
        team.last_explanation = {}
        for channel, waiting in kept.items():
            moved = len(waiting) != len(queues[channel])
            queues[channel] = waiting
            if moved:
                await self._announce_positions(team, channel)

    @staticmethod
    def _trim(st: dict[str, Any]) -> None:
        placed = st["placed"]
        if len(placed) > PLACED_MEMORY:
            st["placed"] = dict(list(placed.items())[-PLACED_MEMORY:])


class TeamState:
    """A team's routing state while one batch is decided.

    `state` is the `teams` table value: the agents' snapshots, reservations, recent
    placements, and one queue per channel of small sort entries [channel priority,
    criticality rank, created, ticket id, channel] (a position is an index; a drain reads
    only the channels with a free slot). Each queued ticket's details live under its own
    key in the `queued` table, so a long queue never makes one oversized changelog record.
    """

    def __init__(self, stored: dict[str, Any] | None, queued: Any) -> None:
        stored = stored or {}
        self.state: dict[str, Any] = {
            "agents": dict(stored.get("agents", {})),
            "reserved": dict(stored.get("reserved", {})),
            "queue": {ch: [list(e) for e in q] for ch, q in stored.get("queue", {}).items()},
            "placed": dict(stored.get("placed", {})),
            "seq": int(stored.get("seq", 0)),
        }
        self._queued = queued
        self.changed: dict[str, dict[str, Any] | None] = {}  # written after the batch
        self.last_explanation: dict[str, Any] = {}

    def detail(self, ticket_id: str) -> dict[str, Any] | None:
        if ticket_id in self.changed:
            return self.changed[ticket_id]
        stored = self._queued.get(ticket_id)
        return dict(stored) if stored is not None else None
