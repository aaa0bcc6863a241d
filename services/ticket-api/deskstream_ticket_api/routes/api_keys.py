"""API keys, issued and revoked by admins. A key is shown once, when it is issued."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from deskstream_ticket_api import auth
from deskstream_ticket_api.auth import ADMIN, Principal, Role
from deskstream_ticket_api.models import ApiKeyCreate, ApiKeyIssued, ApiKeyRead
from deskstream_ticket_api.routes.deps import BODY, KeyIdPath, RuntimeDep, documented

router = APIRouter(tags=["api keys"], responses=documented(403))
Admin = Annotated[Principal, Depends(ADMIN)]


@router.post(
    "/api-keys",
    response_model=ApiKeyIssued,
    status_code=status.HTTP_201_CREATED,
    responses=documented(*BODY),
)
async def issue_key(rt: RuntimeDep, who: Admin, body: ApiKeyCreate) -> ApiKeyIssued:
    doc, key = await auth.issue(
        db=rt.store.db,
        role=Role(body.role),
        subject=body.subject,
        name=body.name,
        created_by=who.key_id,
    )
    return ApiKeyIssued(**ApiKeyRead.from_doc(doc).model_dump(), key=key)


@router.get("/api-keys", response_model=list[ApiKeyRead])
async def list_keys(rt: RuntimeDep, _: Admin) -> list[ApiKeyRead]:
    return [ApiKeyRead.from_doc(d) for d in await auth.list_keys(db=rt.store.db)]


@router.delete(
    "/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=documented(404)
)
async def revoke_key(rt: RuntimeDep, _: Admin, key_id: KeyIdPath) -> Response:
    await auth.revoke(db=rt.store.db, key_id=key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
