"""What every route needs: the runtime, typed path ids, and a capped page size."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from deskstream_ticket_api.runtime import Runtime

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$"
TICKET_ID_PATTERN = r"^DS-[A-Z2-7]{8}$"

TicketIdPath = Annotated[
    str, Path(pattern=TICKET_ID_PATTERN, description="DS- and 8 base32 characters")
]
AgentIdPath = Annotated[str, Path(min_length=1, max_length=100, pattern=ID_PATTERN)]
TeamIdPath = Annotated[str, Path(min_length=1, max_length=100, pattern=ID_PATTERN)]
ServiceIdPath = Annotated[str, Path(min_length=1, max_length=100, pattern=ID_PATTERN)]
KeyIdPath = Annotated[str, Path(min_length=1, max_length=100, pattern=ID_PATTERN)]

# A client-chosen idempotency key: a retried POST with the same key changes nothing twice.
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=8, max_length=100, pattern=r"^[A-Za-z0-9_-]+$"),
]


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def capped(rt: Runtime, limit: int) -> int:
    """Page sizes above the setting are capped, not refused: the cursor fetches the rest."""
    return min(limit, rt.settings.page_limit_max)


Cursor = Annotated[str, StringConstraints(max_length=512)]


class PageParams(BaseModel):
    """`limit` and `cursor`; any other query parameter is a 422."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=100_000, description="capped at the page maximum")
    cursor: Cursor | None = None


class ErrorRead(BaseModel):
    """Every error but a 422 (whose `detail` is FastAPI's list of field errors)."""

    detail: str


_ANSWERS = {
    400: "the body is not JSON (or not UTF-8)",
    401: "no API key, or one that is not valid",
    403: "the key's role may not do this",
    404: "no such thing (or one the key may not see)",
    409: "the request clashes with the current state",
    413: "the body is over the size limit",
    503: "the ticket store or Kafka is busy or unavailable; retry",
}
# Every route with a body can answer these before the body is even validated.
BODY = (400, 413)


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the error answers a route gives, so its OpenAPI document names them."""
    return {code: {"model": ErrorRead, "description": _ANSWERS[code]} for code in codes}
