"""Teams: agents belong to them and services name the team that owns them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from deskstream_ticket_api import roster
from deskstream_ticket_api.auth import ADMIN, STAFF, Principal
from deskstream_ticket_api.models import Page, TeamCreate, TeamRead, TeamUpdate
from deskstream_ticket_api.routes.deps import (
    BODY,
    ErrorRead,
    PageParams,
    RuntimeDep,
    TeamIdPath,
    capped,
    documented,
)

router = APIRouter(tags=["teams"], responses=documented(403))
Admin = Annotated[Principal, Depends(ADMIN)]
Staff = Annotated[Principal, Depends(STAFF)]


@router.get("/teams", response_model=Page[TeamRead])
async def list_teams(
    rt: RuntimeDep, _: Staff, params: Annotated[PageParams, Query()]
) -> Page[TeamRead]:
    docs, cursor = await roster.list_by_id(
        db=rt.store.db,
        collection="teams",
        query={},
        limit=capped(rt, params.limit),
        cursor=params.cursor,
    )
    return Page(items=[TeamRead.from_doc(d) for d in docs], next_cursor=cursor)


@router.post(
    "/teams",
    response_model=TeamRead,
    status_code=status.HTTP_201_CREATED,
    responses=documented(*BODY, 409),
)
async def create_team(rt: RuntimeDep, _: Admin, body: TeamCreate) -> TeamRead:
    return TeamRead.from_doc(await roster.create_team(db=rt.store.db, body=body))


@router.get("/teams/{team_id}", response_model=TeamRead, responses=documented(404))
async def read_team(rt: RuntimeDep, _: Staff, team_id: TeamIdPath) -> TeamRead:
    return TeamRead.from_doc(await roster.get_team(db=rt.store.db, team_id=team_id))


@router.patch("/teams/{team_id}", response_model=TeamRead, responses=documented(*BODY, 404))
async def update_team(rt: RuntimeDep, _: Admin, team_id: TeamIdPath, body: TeamUpdate) -> TeamRead:
    return TeamRead.from_doc(await roster.update_team(db=rt.store.db, team_id=team_id, body=body))


@router.delete(
    "/teams/{team_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **documented(404),
        409: {"model": ErrorRead, "description": "agents or services still belong to the team"},
    },
)
async def delete_team(rt: RuntimeDep, _: Admin, team_id: TeamIdPath) -> Response:
    await roster.delete_team(store=rt.store, team_id=team_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
