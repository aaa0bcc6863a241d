"""Reading a request body safely: a size limit (413) before anything is parsed, JSON or 400.

The declared Content-Length is checked first, then the bytes actually received (a chunked
body declares none), so no client can make the service buffer an unbounded body.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request, status


def too_large(limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, detail=f"request body larger than {limit} bytes"
    )


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed Content-Length") from None
        if size > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 naming what is wrong."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the body must be a JSON object")
    return value
