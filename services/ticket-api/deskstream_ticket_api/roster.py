"""Agents and teams. Every agent change publishes the agent's whole AgentState on agents.state.

agents.state is compacted and keyed by agent id, so each record carries the complete
roster entry (teams, skills, capacity, presence): a consumer that reads only the latest
record per key knows everything. Deleting an agent writes a tombstone, which removes the
key once compacted.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from deskstream.events import AgentState, ChannelCapacity, Presence
from deskstream.topics import Topics
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from deskstream_ticket_api import outbox, pagination
from deskstream_ticket_api.db import Doc, Retry, Session, Store, atomically
from deskstream_ticket_api.errors import Conflict, Invalid, NotFound
from deskstream_ticket_api.models import AgentCreate, AgentUpdate, TeamCreate, TeamUpdate


def state_of(doc: Doc) -> AgentState:
    return AgentState(
        agent_id=doc["_id"],
        name=doc["name"],
        teams=doc["teams"],
        skills=doc["skills"],
        capacity=ChannelCapacity.model_validate(doc["capacity"]),
        presence=Presence(doc["presence"]),
        updated_at=doc["updated_at"],
    )


def _state_entry(topics: Topics, doc: Doc) -> outbox.Entry:
    return outbox.record(
        topic=topics.name("agents.state"),
        key=doc["_id"],
        value=state_of(doc),
        event_id=f"agent-state:{uuid.uuid4().hex}",
        compacted=True,
    )


async def _check_teams(store: Store, session: Session, teams: list[str]) -> None:
    if not teams:
        return
    cursor = store["teams"].find({"_id": {"$in": teams}}, {"_id": 1}, session=session)
    found = await cursor.to_list()
    missing = sorted(set(teams) - {d["_id"] for d in found})
    if missing:
        raise Invalid(("body", "teams"), f"unknown team(s): {', '.join(missing)}")


async def create_agent(*, store: Store, topics: Topics, body: AgentCreate) -> Doc:
    doc: Doc = {
        "_id": body.agent_id,
        "name": body.name,
        "teams": list(dict.fromkeys(body.teams)),
        "skills": dict(body.skills),
        "capacity": body.capacity.model_dump(),
        "presence": body.presence.value,
        "updated_at": datetime.now(UTC),
        "version": 1,
    }

    async def work(session: Session) -> Doc:
        await _check_teams(store, session, doc["teams"])
        await store["agents"].insert_one(doc, session=session)
        await outbox.write(store=store, session=session, entries=[_state_entry(topics, doc)])
        return doc

    try:
        return await atomically(client=store.client, work=work)
    except DuplicateKeyError as exc:
        raise Conflict(f"agent {body.agent_id!r} exists already") from exc


async def update_agent(
    *, store: Store, topics: Topics, agent_id: str, changes: dict[str, Any]
) -> Doc:
    """Apply `changes` (already validated field values) and publish the new state."""

    async def work(session: Session) -> Doc:
        doc = await store["agents"].find_one({"_id": agent_id}, session=session)
        if doc is None:
            raise NotFound("agent", agent_id)
        if "teams" in changes:
            changes["teams"] = list(dict.fromkeys(changes["teams"]))
            await _check_teams(store, session, changes["teams"])
        version = int(doc["version"])
        doc.update(changes, updated_at=datetime.now(UTC), version=version + 1)
        result = await store["agents"].replace_one(
            {"_id": agent_id, "version": version}, doc, session=session
        )
        if result.matched_count != 1:
            raise Retry("agent changed concurrently")
        await outbox.write(store=store, session=session, entries=[_state_entry(topics, doc)])
        return doc

    return await atomically(client=store.client, work=work)


def agent_changes(body: AgentUpdate) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True, mode="json")
    for name in list(changes):
        if changes[name] is None:
            raise Invalid(("body", name), f"{name} cannot be null; leave it out to keep it")
    return changes


async def delete_agent(*, store: Store, topics: Topics, agent_id: str) -> None:
    async def work(session: Session) -> None:
        result = await store["agents"].delete_one({"_id": agent_id}, session=session)
        if result.deleted_count == 0:
            raise NotFound("agent", agent_id)
        # Their keys go with them: a former agent's key must not keep working tickets.
        await store["api_keys"].delete_many({"role": "agent", "subject": agent_id}, session=session)
        entry = outbox.tombstone(
            topic=topics.name("agents.state"),
            key=agent_id,
            event_id=f"agent-state:{uuid.uuid4().hex}",
            type="deskstream.agent.deleted",
        )
        await outbox.write(store=store, session=session, entries=[entry])

    await atomically(client=store.client, work=work)


async def get_agent(*, db: AsyncDatabase[Doc], agent_id: str) -> Doc:
    doc = await db["agents"].find_one({"_id": agent_id})
    if doc is None:
        raise NotFound("agent", agent_id)
    return doc


async def list_by_id(
    *,
    db: AsyncDatabase[Doc],
    collection: str,
    query: dict[str, Any],
    limit: int,
    cursor: str | None,
) -> tuple[list[Doc], str | None]:
    """A keyset page in id order (agents, teams, services: small collections, stable order)."""
    if cursor is not None:
        _, after = pagination.decode(cursor, with_time=False)
        query = {**query, "_id": {"$gt": after}}
    docs = await db[collection].find(query).sort("_id", ASCENDING).limit(limit + 1).to_list()
    if len(docs) <= limit:
        return docs, None
    docs = docs[:limit]
    return docs, pagination.encode(at=None, ident=docs[-1]["_id"])


# --- Teams ----------------------------------------------------------------------------


async def create_team(*, db: AsyncDatabase[Doc], body: TeamCreate) -> Doc:
    doc = {
        "_id": body.team_id,
        "name": body.name,
        "description": body.description,
        "updated_at": datetime.now(UTC),
    }
    try:
        await db["teams"].insert_one(doc)
    except DuplicateKeyError as exc:
        raise Conflict(f"team {body.team_id!r} exists already") from exc
    return doc


async def get_team(*, db: AsyncDatabase[Doc], team_id: str) -> Doc:
    doc = await db["teams"].find_one({"_id": team_id})
    if doc is None:
        raise NotFound("team", team_id)
    return doc


async def update_team(*, db: AsyncDatabase[Doc], team_id: str, body: TeamUpdate) -> Doc:
    changes = body.model_dump(exclude_unset=True)
    for name in list(changes):
        if changes[name] is None:
            raise Invalid(("body", name), f"{name} cannot be null; leave it out to keep it")
    changes["updated_at"] = datetime.now(UTC)
    doc = await db["teams"].find_one_and_update(
        {"_id": team_id}, {"$set": changes}, return_document=ReturnDocument.AFTER
    )
    if doc is None:
        raise NotFound("team", team_id)
    return doc


async def delete_team(*, store: Store, team_id: str) -> None:
    async def work(session: Session) -> None:
        agents = await store["agents"].count_documents({"teams": team_id}, session=session)
        services = await store["services"].count_documents({"team": team_id}, session=session)
        if agents or services:
            raise Conflict(
                f"team {team_id!r} still has {agents} agent(s) and {services} service(s); "
                "move them first"
            )
        result = await store["teams"].delete_one({"_id": team_id}, session=session)
        if result.deleted_count == 0:
            raise NotFound("team", team_id)

    await atomically(client=store.client, work=work)
