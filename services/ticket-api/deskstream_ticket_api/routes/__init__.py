"""The REST API under /v1, one module per resource."""

from __future__ import annotations

from fastapi import APIRouter

from deskstream_ticket_api.routes import (
    agents,
    api_keys,
    catalogue,
    contacts,
    ops,
    portal,
    teams,
    tickets,
)
from deskstream_ticket_api.routes.deps import documented


def v1() -> APIRouter:
    # Every route needs a key and may find the store away; each module names the rest.
    router = APIRouter(prefix="/v1", responses=documented(401, 503))
    for module in (tickets, agents, teams, catalogue, portal, api_keys, contacts, ops):
        router.include_router(module.router)
    return router
