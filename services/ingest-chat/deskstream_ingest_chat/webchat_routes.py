"""The web chat: the widget page and its WebSocket.

Protocol (JSON text frames; README has the full list):
  page -> `hello {visitor_id?, conversation_id?, name?}`; service -> `welcome {visitor_id,
  conversation_id}`, then the conversation's current `status` and unacknowledged `reply`s.
  page -> `message {id, text}`; service -> `ack {id}` once Kafka has it (or `error {id}`).
  page -> `delivered {reply_id}` once it showed a reply; the service reports the delivery.
A message is handled before the next one is read, so a visitor's messages keep their order.
"""

from __future__ import annotations

import json
import logging
import secrets
from importlib import resources
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, Response

from deskstream_ingest_chat import webchat
from deskstream_ingest_chat.delivery import chat_delivery, report
from deskstream_ingest_chat.ingest import NotAcknowledged
from deskstream_ingest_chat.outcomes import Invalid
from deskstream_ingest_chat.runtime import Runtime

log = logging.getLogger(__name__)
STATIC = resources.files("deskstream_ingest_chat") / "static"
TOO_BIG = 1009  # WebSocket close code: message too big
TRY_LATER = 1013


class _TooBig(Exception):
    pass


def _new_id() -> str:
    return secrets.token_urlsafe(18)  # 24 characters of A-Z a-z 0-9 _ -


def router(rt: Runtime) -> APIRouter:
    settings = rt.settings
    api = APIRouter(tags=["web chat"])
    page = (STATIC / "widget.html").read_text("utf-8")
    script = (STATIC / "widget.js").read_text("utf-8")

    @api.get("/webchat/", response_class=HTMLResponse)
    async def widget() -> HTMLResponse:
        """The chat widget (embed it with an iframe)."""
        return HTMLResponse(page)

    @api.get("/webchat/widget.js")
    async def widget_js() -> Response:
        return Response(script, media_type="text/javascript")

    async def receive(socket: WebSocket) -> dict[str, Any] | None:
        """The next frame as a JSON object; None (after telling the page) if it is not one."""
        frame = await socket.receive()
        if frame["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(frame.get("code", 1000))
        raw = frame.get("text")
        if raw is None:
            raw = (frame.get("bytes") or b"").decode("utf-8", "replace")
        if len(raw.encode("utf-8")) > settings.max_body_bytes:
            raise _TooBig()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            await socket.send_json({"type": "error", "error": f"malformed JSON: {exc}"})
            return None
        if not isinstance(data, dict):
            await socket.send_json({"type": "error", "error": "a frame must be a JSON object"})
            return None
        return data

    @api.websocket("/webchat/ws")
    async def chat(socket: WebSocket) -> None:
        await socket.accept()
        if rt.hub.sockets >= settings.webchat_max_sockets:
            await socket.close(TRY_LATER, "too many chats on this server")
            return
        key: str | None = None
        try:
            hello = await receive(socket)
            while hello is None or hello.get("type") != "hello":
                if hello is not None:
                    await socket.send_json({"type": "error", "error": "say hello first"})
                hello = await receive(socket)
            visitor_id = webchat.valid_id(hello.get("visitor_id")) or _new_id()
            conversation_id = webchat.valid_id(hello.get("conversation_id")) or _new_id()
            name = hello.get("name") if isinstance(hello.get("name"), str) else None
            name = (name or "").strip()[:80] or None
            key = webchat.conversation_key(conversation_id)
            await socket.send_json(
                {"type": "welcome", "visitor_id": visitor_id, "conversation_id": conversation_id}
            )
            await rt.hub.attach(key, socket)
            while True:
                frame = await receive(socket)
                if frame is None:
                    continue
                kind = frame.get("type")
                if kind == "message":
                    await _message(socket, frame, visitor_id, conversation_id, name)
                elif kind == "delivered":
                    await _delivered(key, frame.get("reply_id"))
                elif kind == "ping":
                    await socket.send_json({"type": "pong"})
                else:
                    await socket.send_json({"type": "error", "error": f"unknown type {kind!r}"})
        except WebSocketDisconnect:
            pass
        except _TooBig:
            limit = settings.max_body_bytes
            await socket.send_json({"type": "error", "error": f"frame larger than {limit} bytes"})
            await socket.close(TOO_BIG, "frame too large")
        finally:
            if key is not None:
                rt.hub.detach(key, socket)

    async def _message(
        socket: WebSocket,
        frame: dict[str, Any],
        visitor_id: str,
        conversation_id: str,
        name: str | None,
    ) -> None:
        client_id = frame.get("id")
        try:
            item = webchat.visitor_message(
                visitor_id=visitor_id,
                conversation_id=conversation_id,
                client_msg_id=client_id,
                text=frame.get("text"),
                name=name,
                max_text_chars=settings.max_text_chars,
            )
            await rt.ingestor.ingest(item, source="webchat", event_type=webchat.EVENT_TYPE)
        except (Invalid, NotAcknowledged) as exc:
            await socket.send_json({"type": "error", "id": client_id, "error": str(exc)})
            return
        await socket.send_json({"type": "ack", "id": client_id})

    async def _delivered(key: str, reply_id: object) -> None:
        if not isinstance(reply_id, str):
            return
        reply = rt.hub.acknowledged(key, reply_id)
        if reply is None or not reply.get("ticket_id"):
            return  # already reported, or not a reply of this conversation
        result = chat_delivery(
            ticket_id=str(reply["ticket_id"]),
            reply_id=reply_id,
            delivered=True,
            detail="shown in the visitor's browser",
        )
        try:
            await report(rt.publisher, settings.topics, [result])
        except Exception as exc:  # Kafka down: keep the reply; the next ack reports it
            log.warning(
                "delivery not reported",
                extra={"error": repr(exc), "reply_id": reply_id, "ticket_id": result.ticket_id},
            )
            rt.hub.reply_back(key, reply)

    return api
