"""Agents: the roster the router assigns from. Admins manage it; agents set their own presence."""

from __future__ import annotations

from typing import Annotated, Any

from deskstream.events import Presence
from fastapi import APIRouter, Depends, HTTPException, Query, Response, status

from deskstream_ticket_api import roster
from deskstream_ticket_api.auth import ADMIN, STAFF, Principal, Role
from deskstream_ticket_api.models import (
    AgentCreate,
    AgentRead,
    AgentUpdate,
    Page,
    PresenceUpdate,
    ResourceId,
)
from deskstream_ticket_api.routes.deps import (
    BODY,
    AgentIdPath,
    PageParams,
    RuntimeDep,
    capped,
    documented,
)

router = APIRouter(tags=["agents"], responses=documented(403))
Admin = Annotated[Principal, Depends(ADMIN)]
Staff = Annotated[Principal, Depends(STAFF)]


class AgentFilters(PageParams):
    team: ResourceId | None = None
    presence: Presence | None = None


@router.get("/agents", response_model=Page[AgentRead])
async def list_agents(
    rt: RuntimeDep, _: Staff, params: Annotated[AgentFilters, Query()]
) -> Page[AgentRead]:
    query: dict[str, Any] = {}
    if params.team is not None:
        query["teams"] = params.team
    if params.presence is not None:
        query["presence"] = params.presence.value
    docs, cursor = await roster.list_by_id(
        db=rt.store.db,
        collection="agents",
        query=query,
        limit=capped(rt, params.limit),
        cursor=params.cursor,
    )
    return Page(items=[AgentRead.from_doc(d) for d in docs], next_cursor=cursor)


@router.post(
    "/agents",
    response_model=AgentRead,
    status_code=status.HTTP_201_CREATED,
    responses=documented(*BODY, 409),
)
async def create_agent(rt: RuntimeDep, _: Admin, body: AgentCreate) -> AgentRead:
    doc = await roster.create_agent(store=rt.store, topics=rt.topics, body=body)
    rt.waker.wake()
    return AgentRead.from_doc(doc)


@router.get("/agents/{agent_id}", response_model=AgentRead, responses=documented(404))
async def read_agent(rt: RuntimeDep, _: Staff, agent_id: AgentIdPath) -> AgentRead:
    return AgentRead.from_doc(await roster.get_agent(db=rt.store.db, agent_id=agent_id))


@router.patch("/agents/{agent_id}", response_model=AgentRead, responses=documented(*BODY, 404))
async def update_agent(
    rt: RuntimeDep, _: Admin, agent_id: AgentIdPath, body: AgentUpdate
) -> AgentRead:
    doc = await roster.update_agent(
        store=rt.store, topics=rt.topics, agent_id=agent_id, changes=roster.agent_changes(body)
    )
    rt.waker.wake()
    return AgentRead.from_doc(doc)


@router.delete(
    "/agents/{agent_id}", status_code=status.HTTP_204_NO_CONTENT, responses=documented(404)
)
async def delete_agent(rt: RuntimeDep, _: Admin, agent_id: AgentIdPath) -> Response:
    """Removes the agent; a tombstone on agents.state removes them downstream too."""
    await roster.delete_agent(store=rt.store, topics=rt.topics, agent_id=agent_id)
    rt.waker.wake()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/agents/{agent_id}/presence", response_model=AgentRead, responses=documented(*BODY, 404)
)
async def set_presence(
    rt: RuntimeDep,
    who: Annotated[Principal, Depends(STAFF)],
    agent_id: AgentIdPath,
    body: PresenceUpdate,
) -> AgentRead:
    """Admins set anyone's presence; an agent only their own."""
    if who.role is Role.AGENT and who.subject != agent_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="agents set only their own presence")
    doc = await roster.update_agent(
        store=rt.store,
        topics=rt.topics,
        agent_id=agent_id,
        changes={"presence": body.presence.value},
    )
    rt.waker.wake()
    return AgentRead.from_doc(doc)
