"""Request body size limit: a body over the limit is refused with 413 before it is parsed.

Checked twice: the declared Content-Length up front, and the bytes actually received (a
chunked body declares none), so no client can make the service buffer an unbounded body.
"""

from __future__ import annotations

import json

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    await self._refuse(send, declared < 0)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing unchanged (other errors
                    # would become a 400 there), and its handler answers 413.
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE, detail=_too_large(self.max_bytes)
                    )
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Send, malformed: bool) -> None:
        code = 400 if malformed else 413
        detail = "malformed Content-Length" if malformed else _too_large(self.max_bytes)
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
