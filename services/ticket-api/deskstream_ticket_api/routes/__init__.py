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


def v1() -> APIRouter:
    router = APIRouter(prefix="/v1")
    for module in (tickets, agents, teams, catalogue, portal, api_keys, contacts, ops):
        router.include_router(module.router)
    return router
