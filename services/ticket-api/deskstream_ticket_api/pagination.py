"""Opaque keyset cursors: the sort key of the last item of a page, base64url of JSON.

Keyset pagination stays fast and stable while tickets arrive (no skip/offset). A cursor is
decoded into typed values only (an int and an id matching a fixed pattern), so a forged
cursor can change which page is returned, never what the query does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from deskstream_ticket_api.errors import Invalid

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$")


def encode(*, at: datetime | None, ident: str) -> str:
    payload: dict[str, Any] = {"i": ident}
    if at is not None:
        # BSON dates are milliseconds: the cursor carries exactly what MongoDB compares.
        payload["t"] = int(at.timestamp() * 1000)
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, *, with_time: bool) -> tuple[datetime | None, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        ident = payload["i"]
        at = payload.get("t")
        if not isinstance(ident, str) or not _ID.match(ident):
            raise ValueError("bad id")
        if with_time:
            if not isinstance(at, int) or isinstance(at, bool) or at < 0:
                raise ValueError("bad time")
            return datetime.fromtimestamp(at / 1000, UTC), ident
        return None, ident
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise Invalid(("query", "cursor"), "cursor is not one this API returned") from exc


def after_newest_first(at: datetime, ident: str) -> dict[str, Any]:
    """The filter for items after (at, ident) in (created_at desc, _id desc) order."""
    return {"$or": [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": ident}}]}


def after_oldest_first(at: datetime, ident: str) -> dict[str, Any]:
    """The filter for items after (at, ident) in (created_at asc, _id asc) order."""
    return {"$or": [{"created_at": {"$gt": at}}, {"created_at": at, "_id": {"$gt": ident}}]}
