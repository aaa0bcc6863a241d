"""Contacts: the one person behind identities on several channels, and when to link them.

A contact holds identities (an email address, an X user, a Slack user, a web-chat visitor,
a portal user). Every inbound message's sender is resolved to a contact when the commands
consumer applies it, inside the chunk's transaction (`Linker`): the contact already holding
that identity, or one that holds the same address *verified*, or a new contact whose id
derives from the identity, so a redelivered command finds what the first delivery made.

Evidence. Only strong evidence links identities by itself: the same email address where
one side's channel vouches for it (`VERIFIED_ADDRESS_BY`). A mail's From header is written
by the sender and proves nothing, so two claims of one address never link on their own;
a claim joins a contact only where that address is verified. Everything weaker (an address
nobody verified, a display name, a handle) is only *suggested* to an admin, who merges and
unmerges by hand (`contact_admin`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from deskstream.events import SenderIdentity
from pymongo import ReplaceOne

from deskstream_ticket_api.db import Doc, Retry, Session, Store

CONTACT_ID_PATTERN = r"^CT-[A-Z2-7]{16}$"
# A contact collects identities by merges; past this an admin has merged unrelated people.
MAX_IDENTITIES = 200

# What a channel proves about the address its identity carries. Only the kinds listed vouch
# for an address; on every other kind an address is a claim. Why each kind is (not) here:
# - portal: the user authenticates with an API key an admin issued to that subject, so a
#   portal user whose id is an address has been vouched for by the operator (directory/SSO).
# - email: the From header is free text any sender writes (spoofable): a claim. A claim
#   still joins the contact that verified the address, because whatever the desk answers
#   goes to that mailbox, never to the spoofer; an admin can unmerge it.
# - x, slack: the platform authenticates its user id, but the identity carries no address.
# - chat: a web-chat visitor types whatever they like.
VERIFIED_ADDRESS_BY: dict[str, str] = {
    "portal": "the portal authenticated this user; an admin issued the key to this address",
}

_ADDRESS = re.compile(
    r"^[^@\s\"'<>()\[\],;:\\]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}$"
)
_MIN_NAME = 3


def normal_address(value: str | None) -> str | None:
    """The address in `value`, lower-cased (as mail systems treat it in practice), or None."""
    if not value:
        return None
    value = value.strip()
    return value.lower() if len(value) <= 254 and _ADDRESS.match(value) else None


def normal_name(value: str | None) -> str | None:
    """A display name as compared for suggestions: case, width and spacing folded."""
    if not value:
        return None
    folded = " ".join(unicodedata.normalize("NFKC", value).casefold().split()).strip("\"' ")
    return folded if len(folded) >= _MIN_NAME else None


def normal_handle(value: str | None) -> str | None:
    if not value:
        return None
    folded = unicodedata.normalize("NFKC", value).strip().lstrip("@").casefold()
    return folded if len(folded) >= 2 and not folded.isspace() else None


def identity_key(kind: str, ident: str) -> str:
    """`<kind>:<id>`, with an address lower-cased: the one name of an identity everywhere."""
    ident = ident.strip()
    return f"{kind.strip().lower()}:{normal_address(ident) or ident}"


def parse_identity_key(value: str) -> str:
    """A client's `kind:id` in its normal form (raises ValueError when it has no kind)."""
    kind, sep, ident = value.partition(":")
    if not sep or not kind or not ident.strip():
        raise ValueError("an identity is written kind:id, e.g. email:maria@example.com")
    return identity_key(kind, ident)


def contact_id_for(seed: str) -> str:
    """The id of the contact an identity (or a split) starts: `CT-` + 16 base32 characters."""
    digest = hashlib.sha256(f"contact\x1f{seed}".encode()).digest()
    return "CT-" + base64.b32encode(digest[:10]).decode("ascii")


@dataclass(frozen=True)
class Identity:
    key: str
    channel: str
    kind: str
    id: str
    display_name: str | None
    handle: str | None
    address: str | None
    verified: bool

    @classmethod
    def of(cls, sender: SenderIdentity) -> Identity:
        kind = sender.kind.strip().lower()
        # An identity's address: its id when the id is one (email, portal users named by
        # address, a chat visitor who typed one). Verified only where the kind vouches.
        address = normal_address(sender.id)
        return cls(
            key=identity_key(kind, sender.id),
            channel=sender.channel.value,
            kind=kind,
            id=sender.id,
            display_name=sender.display_name,
            handle=sender.handle,
            address=address,
            verified=address is not None and kind in VERIFIED_ADDRESS_BY,
        )

    def doc(self, *, at: datetime, rule: str, detail: str) -> Doc:
        return {
            "key": self.key,
            "channel": self.channel,
            "kind": self.kind,
            "id": self.id,
            "display_name": self.display_name,
            "handle": self.handle,
            "address": self.address,
            "verified": self.verified,
            "added_at": at,
            "linked": {"rule": rule, "detail": detail},
        }


def refresh(contact: Doc) -> Doc:
    """Recompute what is derived from the identities (the fields lookups and suggestions use)."""
    identities: list[Doc] = contact["identities"]
    contact["addresses"] = sorted({i["address"] for i in identities if i.get("address")})
    contact["verified_addresses"] = sorted(
        {i["address"] for i in identities if i.get("address") and i.get("verified")}
    )
    contact["names"] = sorted(
        {n for i in identities if (n := normal_name(i.get("display_name"))) is not None}
    )
    contact["handles"] = sorted(
        {h for i in identities if (h := normal_handle(i.get("handle"))) is not None}
    )
    names = [i["display_name"] for i in identities if i.get("display_name")]
    contact["display_name"] = names[0] if names else (contact["addresses"] or [None])[0]
    return contact


def new_contact(contact_id: str, identities: list[Doc], *, at: datetime) -> Doc:
    return refresh(
        {
            "_id": contact_id,
            "identities": identities,
            "merged_into": None,
            "created_at": at,
            "updated_at": at,
            "version": 1,
        }
    )


def link_doc(key: str, contact_id: str, at: datetime) -> Doc:
    return {"_id": key, "contact_id": contact_id, "linked_at": at}


# --- Resolving senders inside the commands consumer's transaction ----------------------


@dataclass
class Linker:
    """One chunk's identity links and candidate contacts, and the contact writes they add up to.

    `links` maps identity keys to contact ids (`contact_identities`, whose `_id` is the key:
    two appliers racing to link one identity collide there and the loser starts over).
    `contacts` are the live contacts holding an address an unlinked sender carries.
    """

    links: dict[str, str] = field(default_factory=dict)
    contacts: dict[str, Doc] = field(default_factory=dict)
    versions: dict[str, int | None] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    new_links: list[Doc] = field(default_factory=list)

    def resolve(self, sender: SenderIdentity, *, at: datetime) -> tuple[str, str]:
        """The contact id of `sender` and its identity key, linking or creating as needed."""
        identity = Identity.of(sender)
        known = self.links.get(identity.key)
        if known is not None:
            return known, identity.key
        target = self._verified_match(identity)
        if target is not None:
            detail = (
                f"{identity.address} is verified on this contact"
                if not identity.verified
                else f"{identity.kind}: {VERIFIED_ADDRESS_BY[identity.kind]}"
            )
            target["identities"].append(identity.doc(at=at, rule="verified-address", detail=detail))
            refresh(target)
            target["updated_at"] = at
            contact_id = target["_id"]
        else:
            contact_id = contact_id_for(identity.key)
            doc = identity.doc(at=at, rule="first-seen", detail="no contact held this identity")
            self.contacts[contact_id] = new_contact(contact_id, [doc], at=at)
            self.versions[contact_id] = None
        self.touched.add(contact_id)
        self.links[identity.key] = contact_id
        self.new_links.append(link_doc(identity.key, contact_id, at))
        return contact_id, identity.key

    def _verified_match(self, identity: Identity) -> Doc | None:
        """The contact this identity joins on strong evidence, if any.

        A verified address joins a contact holding that address at all; a claimed address
        only one where the address is verified. The oldest such contact wins (deterministic).
        """
        address = identity.address
        if address is None:
            return None
        candidates = [
            c
            for c in self.contacts.values()
            if c.get("merged_into") is None
            and len(c["identities"]) < MAX_IDENTITIES
            and address in (c["addresses"] if identity.verified else c["verified_addresses"])
        ]
        if not candidates:
            return None
        # Prefer a contact where the address is verified already, then the oldest.
        return min(
            candidates,
            key=lambda c: (address not in c["verified_addresses"], c["created_at"], c["_id"]),
        )


async def load(*, store: Store, session: Session, senders: list[SenderIdentity]) -> Linker:
    """Read the links of the chunk's senders and the contacts their addresses could join."""
    identities = [Identity.of(s) for s in senders]
    if not identities:
        return Linker()
    keys = list({i.key for i in identities})
    found = (
        await store["contact_identities"].find({"_id": {"$in": keys}}, session=session).to_list()
    )
    links = {d["_id"]: d["contact_id"] for d in found}
    addresses = list({i.address for i in identities if i.key not in links and i.address})
    contacts: dict[str, Doc] = {}
    if addresses:
        query: dict[str, Any] = {"addresses": {"$in": addresses}, "merged_into": None}
        for doc in await store["contacts"].find(query, session=session).to_list():
            contacts[doc["_id"]] = doc
    return Linker(
        links=links,
        contacts=contacts,
        versions={cid: int(c.get("version", 0)) for cid, c in contacts.items()},
    )


async def write(*, store: Store, session: Session, linker: Linker) -> None:
    if not linker.touched:
        return
    created, replaced = [], []
    for contact_id in sorted(linker.touched):
        contact = linker.contacts[contact_id]
        loaded = linker.versions[contact_id]
        if loaded is None:
            created.append(contact)
        else:
            contact["version"] = loaded + 1
            replaced.append(ReplaceOne({"_id": contact_id, "version": loaded}, contact))
    if created:
        await store["contacts"].insert_many(created, session=session)
    if replaced:
        result = await store["contacts"].bulk_write(replaced, ordered=False, session=session)
        if result.matched_count != len(replaced):
            raise Retry("a contact changed while the chunk was applied")
    if linker.new_links:
        await store["contact_identities"].insert_many(linker.new_links, session=session)
