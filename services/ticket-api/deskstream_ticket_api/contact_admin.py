"""Contact service functions for the REST side: read, list, suggest, merge, unmerge, audit.

Merges and unmerges are one transaction each: the contacts (replaced only at the version
read), the identity links, the tickets' `contact_id` and the audit record change together.
A merged contact stays as a tombstone naming its survivor (`merged_into`, always one hop:
contacts that pointed at the merged one are re-pointed), so an old contact id still finds
its tickets. Which tickets belong to a contact is decided by identity (`requester_key`), so
the contact filter is right even for a ticket whose stored `contact_id` lags a merge.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from deskstream_ticket_api import contacts
from deskstream_ticket_api.auth import Principal
from deskstream_ticket_api.db import Doc, Retry, Session, Store, atomically
from deskstream_ticket_api.errors import Conflict, Invalid, NotFound
from deskstream_ticket_api.tickets import actor_ref, page

MAX_SUGGESTIONS = 50
MAX_AUDIT = 1000


async def get(*, db: AsyncDatabase[Doc], contact_id: str, session: Session | None = None) -> Doc:
    doc = await db["contacts"].find_one({"_id": contact_id}, session=session)
    if doc is None:
        raise NotFound("contact", contact_id)
    return doc


async def current(*, db: AsyncDatabase[Doc], contact_id: str) -> Doc:
    """The contact, or the one it was merged into (a merged id keeps working)."""
    doc = await get(db=db, contact_id=contact_id)
    if doc.get("merged_into"):
        doc = await get(db=db, contact_id=doc["merged_into"])
    return doc


async def of_identity(*, db: AsyncDatabase[Doc], key: str) -> Doc:
    """The contact holding the identity `key` (404 before its first message)."""
    link = await db["contact_identities"].find_one({"_id": key})
    if link is None:
        raise NotFound("contact of", key)
    return await current(db=db, contact_id=link["contact_id"])


def holds(contact: Doc, key: str) -> bool:
    return any(i["key"] == key for i in contact["identities"])


def tickets_query(contact: Doc) -> dict[str, Any]:
    """The tickets of every identity of the contact, whatever channel they came from."""
    return {"requester_key": {"$in": [i["key"] for i in contact["identities"]]}}


async def ticket_filter(*, db: AsyncDatabase[Doc], contact_id: str) -> dict[str, Any]:
    doc = await db["contacts"].find_one({"_id": contact_id})
    if doc is None:
        raise Invalid(("query", "contact"), f"unknown contact {contact_id!r}")
    if doc.get("merged_into"):
        doc = await current(db=db, contact_id=doc["merged_into"])
    return tickets_query(doc)


async def ticket_count(*, db: AsyncDatabase[Doc], contact: Doc) -> int:
    return await db["tickets"].count_documents(tickets_query(contact))


async def list_contacts(
    *,
    db: AsyncDatabase[Doc],
    identity: str | None,
    address: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Doc], str | None]:
    """Live contacts, newest first; `identity` is `kind:id`, `address` any address they hold."""
    query: dict[str, Any] = {"merged_into": None}
    if identity is not None:
        try:
            query["identities.key"] = contacts.parse_identity_key(identity)
        except ValueError as exc:
            raise Invalid(("query", "identity"), str(exc)) from exc
    if address is not None:
        normal = contacts.normal_address(address)
        if normal is None:
            raise Invalid(("query", "address"), "not an email address")
        query["addresses"] = normal
    return await page(
        collection=db["contacts"], query=query, limit=limit, cursor=cursor, newest_first=True
    )


def _address_reason(address: str, mine: Doc, theirs: Doc) -> str:
    here, there = address in mine["verified_addresses"], address in theirs["verified_addresses"]
    if here and there:
        return "verified on both contacts (they were split by an admin)"
    if here or there:
        return f"verified on {'this' if here else 'that'} contact only (split by an admin)"
    return "no channel verified it (a mail From header or a typed address)"


async def suggestions(*, db: AsyncDatabase[Doc], contact_id: str) -> list[dict[str, Any]]:
    """Live contacts that may be the same person, each with the reasons to think so."""
    mine = await current(db=db, contact_id=contact_id)
    alternatives = [
        {field: {"$in": mine[field]}}
        for field in ("addresses", "names", "handles")
        if mine.get(field)
    ]
    if not alternatives:
        return []
    query = {"$or": alternatives, "_id": {"$ne": mine["_id"]}, "merged_into": None}
    docs = (
        await db["contacts"]
        .find(query)
        .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
        .limit(MAX_SUGGESTIONS)
        .to_list()
    )
    out = []
    for theirs in docs:
        reasons = [
            {"rule": "same-address", "value": a, "detail": _address_reason(a, mine, theirs)}
            for a in sorted(set(mine["addresses"]) & set(theirs["addresses"]))
        ]
        reasons += [
            {"rule": "same-display-name", "value": n, "detail": "display names are self-chosen"}
            for n in sorted(set(mine["names"]) & set(theirs["names"]))
        ]
        reasons += [
            {"rule": "same-handle", "value": h, "detail": "handles on different channels"}
            for h in sorted(set(mine["handles"]) & set(theirs["handles"]))
        ]
        out.append({"contact": theirs, "reasons": reasons})
    return out


# --- Merge, unmerge, audit ------------------------------------------------------------


def _snapshot(contact: Doc) -> Doc:
    return {
        "contact_id": contact["_id"],
        "merged_into": contact.get("merged_into"),
        "identities": [i["key"] for i in contact["identities"]],
    }


def _audit_doc(*, audit_id: str, action: str, actor: Principal, at: datetime, **what: Any) -> Doc:
    return {
        "_id": audit_id,
        "action": action,
        "actor": actor_ref(actor),
        "actor_key_id": actor.key_id,
        "at": at,
        **what,
    }


async def _replace(store: Store, session: Session, contact: Doc, loaded: int) -> None:
    contact["version"] = loaded + 1
    result = await store["contacts"].replace_one(
        {"_id": contact["_id"], "version": loaded}, contact, session=session
    )
    if result.matched_count != 1:
        raise Retry("contact changed concurrently")


async def _move_tickets(store: Store, session: Session, query: dict[str, Any], to: str) -> None:
    # The version moves too, so a command applier holding the old ticket starts over.
    await store["tickets"].update_many(
        query, {"$set": {"contact_id": to}, "$inc": {"version": 1}}, session=session
    )


async def merge(
    *, store: Store, survivor_id: str, other_id: str, actor: Principal
) -> tuple[Doc, Doc]:
    """Move every identity of `other_id` into `survivor_id`; returns the survivor and the audit."""
    if survivor_id == other_id:
        raise Invalid(("body", "contact_id"), "a contact cannot be merged into itself")

    async def work(session: Session) -> tuple[Doc, Doc]:
        survivor = await get(db=store.db, contact_id=survivor_id, session=session)
        other = await store["contacts"].find_one({"_id": other_id}, session=session)
        if other is None:
            raise Invalid(("body", "contact_id"), f"unknown contact {other_id!r}")
        if survivor.get("merged_into"):
            raise Conflict(
                f"contact {survivor_id} was merged into {survivor['merged_into']}; use that one"
            )
        if other.get("merged_into"):
            raise Conflict(f"contact {other_id} is already merged into {other['merged_into']}")
        if len(survivor["identities"]) + len(other["identities"]) > contacts.MAX_IDENTITIES:
            raise Conflict(f"a contact holds at most {contacts.MAX_IDENTITIES} identities")
        now = datetime.now(UTC)
        audit_id = f"audit:{uuid.uuid4().hex}"
        before = [_snapshot(survivor), _snapshot(other)]
        keys = [i["key"] for i in other["identities"]]
        detail = f"merged from {other_id} by {actor_ref(actor)} ({audit_id})"
        for identity in other["identities"]:
            survivor["identities"].append(
                {**identity, "linked": {"rule": "merge", "detail": detail}}
            )
        contacts.refresh(survivor)
        survivor["updated_at"] = now
        other["identities"] = []
        contacts.refresh(other)
        other["merged_into"] = survivor_id
        other["updated_at"] = now
        await _replace(store, session, survivor, int(survivor["version"]))
        await _replace(store, session, other, int(other["version"]))
        await store["contact_identities"].update_many(
            {"_id": {"$in": keys}}, {"$set": {"contact_id": survivor_id}}, session=session
        )
        # Tombstones that named the merged contact name the survivor: one hop, always.
        await store["contacts"].update_many(
            {"merged_into": other_id}, {"$set": {"merged_into": survivor_id}}, session=session
        )
        await _move_tickets(store, session, {"contact_id": other_id}, survivor_id)
        audit = _audit_doc(
            audit_id=audit_id,
            action="merge",
            actor=actor,
            at=now,
            contacts=[survivor_id, other_id],
            identity=None,
            before=before,
            after=[_snapshot(survivor), _snapshot(other)],
        )
        await store["contact_audit"].insert_one(audit, session=session)
        return survivor, audit

    return await atomically(client=store.client, work=work)


async def unmerge(
    *, store: Store, contact_id: str, identity: str, actor: Principal
) -> tuple[Doc, Doc, Doc]:
    """Split one identity off into a contact of its own, with the tickets it opened.

    The identity returns to the contact it started (a merged tombstone is revived) when that
    is free; otherwise it gets a new contact. Returns the contact, the split one, the audit.
    """
    try:
        key = contacts.parse_identity_key(identity)
    except ValueError as exc:
        raise Invalid(("body", "identity"), str(exc)) from exc

    async def work(session: Session) -> tuple[Doc, Doc, Doc]:
        contact = await get(db=store.db, contact_id=contact_id, session=session)
        if contact.get("merged_into"):
            raise Conflict(f"contact {contact_id} was merged into {contact['merged_into']}")
        moving = next((i for i in contact["identities"] if i["key"] == key), None)
        if moving is None:
            raise Invalid(("body", "identity"), f"contact {contact_id} has no identity {key!r}")
        if len(contact["identities"]) == 1:
            raise Conflict("a contact's only identity cannot be split off")
        now = datetime.now(UTC)
        audit_id = f"audit:{uuid.uuid4().hex}"
        before = [_snapshot(contact)]
        moved = {**moving, "linked": {"rule": "unmerge", "detail": f"split off ({audit_id})"}}
        target_id = contacts.contact_id_for(key)
        target = (
            None
            if target_id == contact_id
            else await store["contacts"].find_one({"_id": target_id}, session=session)
        )
        if target_id == contact_id or (target is not None and target.get("merged_into") is None):
            # Its first contact is this one, or lives on with other identities: a new one.
            target_id, target = contacts.contact_id_for(f"{key}\x1f{audit_id}"), None
        if target is not None:
            before.append(_snapshot(target))
            target["identities"] = [moved]
            target["merged_into"] = None
            contacts.refresh(target)
            target["updated_at"] = now
            await _replace(store, session, target, int(target["version"]))
        else:
            target = contacts.new_contact(target_id, [moved], at=now)
            await store["contacts"].insert_one(target, session=session)
        contact["identities"] = [i for i in contact["identities"] if i["key"] != key]
        contacts.refresh(contact)
        contact["updated_at"] = now
        await _replace(store, session, contact, int(contact["version"]))
        await store["contact_identities"].update_one(
            {"_id": key}, {"$set": {"contact_id": target_id}}, session=session
        )
        await _move_tickets(store, session, {"requester_key": key}, target_id)
        audit = _audit_doc(
            audit_id=audit_id,
            action="unmerge",
            actor=actor,
            at=now,
            contacts=[contact_id, target_id],
            identity=key,
            before=before,
            after=[_snapshot(contact), _snapshot(target)],
        )
        await store["contact_audit"].insert_one(audit, session=session)
        return contact, target, audit

    return await atomically(client=store.client, work=work)


async def audit(*, db: AsyncDatabase[Doc], contact_id: str) -> list[Doc]:
    """Merges and unmerges the contact took part in, oldest first."""
    await get(db=db, contact_id=contact_id)
    return (
        await db["contact_audit"]
        .find({"contacts": contact_id})
        .sort([("at", ASCENDING), ("_id", ASCENDING)])
        .to_list(MAX_AUDIT)
    )
