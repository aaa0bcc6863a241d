"""The service catalogue: what users can ask for, who owns it, and who may answer it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status

from deskstream_ticket_api import catalogue, roster
from deskstream_ticket_api.auth import ADMIN, STAFF, Principal
from deskstream_ticket_api.models import (
    Page,
    ResourceId,
    ServiceCreate,
    ServiceRead,
    ServiceUpdate,
)
from deskstream_ticket_api.routes.deps import (
    BODY,
    PageParams,
    RuntimeDep,
    ServiceIdPath,
    capped,
    documented,
)

router = APIRouter(tags=["catalogue"], responses=documented(403))
Admin = Annotated[Principal, Depends(ADMIN)]
Staff = Annotated[Principal, Depends(STAFF)]


class ServiceFilters(PageParams):
    team: ResourceId | None = None
    criticality: Literal["low", "medium", "high", "critical"] | None = None


@router.get("/catalogue/services", response_model=Page[ServiceRead])
async def list_services(
    rt: RuntimeDep, _: Staff, params: Annotated[ServiceFilters, Query()]
) -> Page[ServiceRead]:
    query: dict[str, Any] = {}
    if params.team is not None:
        query["team"] = params.team
    if params.criticality is not None:
        query["criticality"] = params.criticality
    docs, cursor = await roster.list_by_id(
        db=rt.store.db,
        collection="services",
        query=query,
        limit=capped(rt, params.limit),
        cursor=params.cursor,
    )
    return Page(items=[ServiceRead.from_doc(d) for d in docs], next_cursor=cursor)


@router.post(
    "/catalogue/services",
    response_model=ServiceRead,
    status_code=status.HTTP_201_CREATED,
    responses=documented(*BODY, 409),
)
async def create_service(rt: RuntimeDep, _: Admin, body: ServiceCreate) -> ServiceRead:
    doc = await catalogue.create_service(store=rt.store, topics=rt.topics, body=body)
    rt.waker.wake()
    return ServiceRead.from_doc(doc)


@router.get(
    "/catalogue/services/{service_id}", response_model=ServiceRead, responses=documented(404)
)
async def read_service(rt: RuntimeDep, _: Staff, service_id: ServiceIdPath) -> ServiceRead:
    return ServiceRead.from_doc(await catalogue.get_service(db=rt.store.db, service_id=service_id))


@router.patch(
    "/catalogue/services/{service_id}",
    response_model=ServiceRead,
    responses=documented(*BODY, 404),
)
async def update_service(
    rt: RuntimeDep, _: Admin, service_id: ServiceIdPath, body: ServiceUpdate
) -> ServiceRead:
    doc = await catalogue.update_service(
        store=rt.store, topics=rt.topics, service_id=service_id, body=body
    )
    rt.waker.wake()
    return ServiceRead.from_doc(doc)


@router.delete(
    "/catalogue/services/{service_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=documented(404),
)
async def delete_service(rt: RuntimeDep, _: Admin, service_id: ServiceIdPath) -> Response:
    """Removes the service; a tombstone on catalogue.services removes it downstream too."""
    await catalogue.delete_service(store=rt.store, topics=rt.topics, service_id=service_id)
    rt.waker.wake()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
