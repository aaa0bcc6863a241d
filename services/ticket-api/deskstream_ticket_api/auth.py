"""API keys: who is calling (admin, agent or portal user) and what they may do.

A key travels as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Only its SHA-256 is
stored, so a leaked database holds no usable key; keys are long random strings, so an
unsalted hash is enough (there is nothing to guess). The first admin key comes from
`TICKET_API_ADMIN_API_KEY` and is re-stored at every start, so rotating the setting
retires the old key.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from deskstream_ticket_api.db import Doc
from deskstream_ticket_api.errors import Invalid, NotFound

BOOTSTRAP_KEY_ID = "bootstrap-admin"
MAX_KEY_LENGTH = 200


class Role(StrEnum):
    ADMIN = "admin"
    AGENT = "agent"
    PORTAL = "portal"


@dataclass(frozen=True)
class Principal:
    role: Role
    subject: str  # the agent id (agent), the portal user id (portal), a name (admin)
    key_id: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "dsk_" + secrets.token_urlsafe(32)


async def store_bootstrap_admin(*, db: AsyncDatabase[Doc], key: SecretStr) -> None:
    await db["api_keys"].replace_one(
        {"_id": BOOTSTRAP_KEY_ID},
        {
            "hash": hash_key(key.get_secret_value()),
            "role": Role.ADMIN.value,
            "subject": BOOTSTRAP_KEY_ID,
            "name": "from TICKET_API_ADMIN_API_KEY",
            "created_at": datetime.now(UTC),
            "created_by": "settings",
        },
        upsert=True,
    )


async def authenticate(*, db: AsyncDatabase[Doc], key: str) -> Principal | None:
    doc = await db["api_keys"].find_one({"hash": hash_key(key)})
    if doc is None:
        return None
    return Principal(Role(doc["role"]), doc["subject"], doc["_id"])


async def issue(
    *, db: AsyncDatabase[Doc], role: Role, subject: str, name: str, created_by: str
) -> tuple[Doc, str]:
    """A new key: the stored document and the key itself (returned to the caller once)."""
    if role is Role.AGENT and await db["agents"].find_one({"_id": subject}, {"_id": 1}) is None:
        raise Invalid(("body", "subject"), f"unknown agent {subject!r}")
    key = new_key()
    doc = {
        "_id": f"key_{uuid.uuid4().hex[:16]}",
        "hash": hash_key(key),
        "role": role.value,
        "subject": subject,
        "name": name,
        "created_at": datetime.now(UTC),
        "created_by": created_by,
    }
    await db["api_keys"].insert_one(doc)
    return doc, key


async def list_keys(*, db: AsyncDatabase[Doc]) -> list[Doc]:
    return await db["api_keys"].find({}, {"hash": 0}).sort("created_at", DESCENDING).to_list(1000)


async def revoke(*, db: AsyncDatabase[Doc], key_id: str) -> None:
    if key_id == BOOTSTRAP_KEY_ID:
        raise Invalid(("path", "key_id"), "the bootstrap key is rotated through its setting")
    result = await db["api_keys"].delete_one({"_id": key_id})
    if result.deleted_count == 0:
        raise NotFound("api key", key_id)


# --- FastAPI dependencies -------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"}
    )


async def principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> Principal:
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        raise _unauthorized(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise _unauthorized("invalid API key")
    found = await authenticate(db=request.app.state.runtime.store.db, key=key)
    if found is None:
        raise _unauthorized("invalid API key")
    return found


def require(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency admitting only `roles` (403 for any other valid key)."""
    names = ", ".join(r.value for r in roles)

    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role not in roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this needs the role {names}; your key's role is {who.role.value}",
            )
        return who

    return check


ADMIN = require(Role.ADMIN)
STAFF = require(Role.ADMIN, Role.AGENT)
PORTAL = require(Role.PORTAL)
ANY = require(Role.ADMIN, Role.AGENT, Role.PORTAL)
