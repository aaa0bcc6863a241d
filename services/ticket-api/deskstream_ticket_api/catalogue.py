"""The service catalogue. Every change publishes the whole ServiceEntry on catalogue.services.

The contract (`ServiceEntry`) is built for every write, so its rules (critical services are
never opened to peers) hold for REST changes exactly as for anything else that publishes it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from deskstream.events import ServiceEntry
from deskstream.topics import Topics
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from deskstream_ticket_api import outbox
from deskstream_ticket_api.db import Doc, Retry, Session, Store, atomically
from deskstream_ticket_api.errors import Conflict, Invalid, NotFound
from deskstream_ticket_api.models import ServiceCreate, ServiceUpdate

ENTRY_FIELDS = tuple(f for f in ServiceEntry.model_fields if f != "schema_version")


def entry_of(doc: Doc) -> ServiceEntry:
    """The contract record of a stored service; raises `Invalid` naming the broken rule."""
    try:
        return ServiceEntry.model_validate(
            {"service_id": doc["_id"], **{f: doc[f] for f in ENTRY_FIELDS if f in doc}}
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "body"
        raise Invalid(("body", field), error["msg"].removeprefix("Value error, ")) from exc


def _entry(topics: Topics, doc: Doc) -> outbox.Entry:
    return outbox.record(
        topic=topics.name("catalogue.services"),
        key=doc["_id"],
        value=entry_of(doc),
        event_id=f"service-entry:{uuid.uuid4().hex}",
        compacted=True,
    )


async def _check_team(store: Store, session: Session, team: str) -> None:
    if await store["teams"].find_one({"_id": team}, {"_id": 1}, session=session) is None:
        raise Invalid(("body", "team"), f"unknown team {team!r}")


async def create_service(*, store: Store, topics: Topics, body: ServiceCreate) -> Doc:
    doc: Doc = {
        "_id": body.service_id,
        **body.model_dump(exclude={"service_id"}),
        "updated_at": datetime.now(UTC),
        "version": 1,
    }
    entry = _entry(topics, doc)

    async def work(session: Session) -> Doc:
        await _check_team(store, session, doc["team"])
        await store["services"].insert_one(doc, session=session)
        await outbox.write(store=store, session=session, entries=[entry])
        return doc

    try:
        return await atomically(client=store.client, work=work)
    except DuplicateKeyError as exc:
        raise Conflict(f"service {body.service_id!r} exists already") from exc


async def update_service(
    *, store: Store, topics: Topics, service_id: str, body: ServiceUpdate
) -> Doc:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    for name in list(changes):
        if changes[name] is None:
            raise Invalid(("body", name), f"{name} cannot be null; leave it out to keep it")

    async def work(session: Session) -> Doc:
        doc = await store["services"].find_one({"_id": service_id}, session=session)
        if doc is None:
            raise NotFound("service", service_id)
        if "team" in changes:
            await _check_team(store, session, changes["team"])
        version = int(doc["version"])
        doc.update(changes, updated_at=datetime.now(UTC), version=version + 1)
        entry = _entry(topics, doc)  # validates the merged service (critical -> no peers)
        result = await store["services"].replace_one(
            {"_id": service_id, "version": version}, doc, session=session
        )
        if result.matched_count != 1:
            raise Retry("service changed concurrently")
        await outbox.write(store=store, session=session, entries=[entry])
        return doc

    return await atomically(client=store.client, work=work)


async def delete_service(*, store: Store, topics: Topics, service_id: str) -> None:
    async def work(session: Session) -> None:
        result = await store["services"].delete_one({"_id": service_id}, session=session)
        if result.deleted_count == 0:
            raise NotFound("service", service_id)
        entry = outbox.tombstone(
            topic=topics.name("catalogue.services"),
            key=service_id,
            event_id=f"service-entry:{uuid.uuid4().hex}",
            type="deskstream.catalogue.service.deleted",
        )
        await outbox.write(store=store, session=session, entries=[entry])

    await atomically(client=store.client, work=work)


async def get_service(*, db: AsyncDatabase[Doc], service_id: str) -> Doc:
    doc = await db["services"].find_one({"_id": service_id})
    if doc is None:
        raise NotFound("service", service_id)
    return doc
