"""What each web-chat visitor should see, and the sockets of this replica that show it.

Every replica reads `tickets.events` and `outbound.chat` in full (see feed.py) and keeps,
for each recent web-chat conversation, its ticket, its latest status (waiting, queued with
position, an agent joined, closed) and the replies not yet acknowledged by a browser. A
socket attached here gets the current state at once and every change live, so a visitor
who reconnects, to this replica or another one, resumes the same conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Gauge

from deskstream_ingest_chat.webchat import PREFIX

log = logging.getLogger(__name__)

SOCKETS = Gauge("deskstream_chat_webchat_sockets", "Open web-chat WebSockets on this replica")
CONVERSATIONS = Gauge(
    "deskstream_chat_webchat_conversations", "Web-chat conversations this replica keeps state of"
)


SEND_TIMEOUT_S = 5.0


class Socket(Protocol):
    async def send_json(self, data: Any, mode: str = "text") -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass
class Conversation:
    key: str
    ticket_id: str | None = None
    status: dict[str, Any] | None = None
    replies: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    sockets: set[Socket] = field(default_factory=set)
    touched: float = field(default_factory=time.monotonic)


_STATUS_OF = {"resolved": "closed", "closed": "closed"}


class Hub:
    def __init__(self, *, max_conversations: int, max_replies: int) -> None:
        self.max_conversations = max_conversations
        self.max_replies = max_replies
        self._conversations: OrderedDict[str, Conversation] = OrderedDict()
        self._ticket_conv: dict[str, str] = {}
        self.sockets = 0

    # --- the page side ------------------------------------------------------------------

    async def attach(self, key: str, socket: Socket) -> None:
        """Attach a socket and send it where the conversation stands and what it missed."""
        conv = self._get(key)
        conv.sockets.add(socket)
        self.sockets += 1
        SOCKETS.set(self.sockets)
        if conv.status is not None:
            await socket.send_json(conv.status)
        for reply in list(conv.replies.values()):
            await socket.send_json(reply)

    def detach(self, key: str, socket: Socket) -> None:
        conv = self._conversations.get(key)
        if conv is not None and socket in conv.sockets:
            conv.sockets.discard(socket)
            self.sockets -= 1
            SOCKETS.set(self.sockets)

    def acknowledged(self, key: str, reply_id: str) -> dict[str, Any] | None:
        """A browser showed `reply_id`: forget it here; returns the reply, or None if unknown."""
        conv = self._conversations.get(key)
        if conv is None:
            return None
        return conv.replies.pop(reply_id, None)

    def reply_back(self, key: str, message: dict[str, Any]) -> None:
        """Keep a reply whose acknowledgement could not be reported (shown again later)."""
        conv = self._get(key)
        conv.replies[str(message.get("reply_id"))] = message

    # --- the Kafka side -----------------------------------------------------------------

    async def ticket_event(self, event: dict[str, Any]) -> None:
        """Apply one `tickets.events` value (already JSON-decoded)."""
        kind, ticket_id = event.get("type"), event.get("ticket_id")
        if kind == "created":
            key = event.get("conversation_key")
            if not isinstance(key, str) or not key.startswith(PREFIX):
                return
            created = self._get(key)
            created.ticket_id = ticket_id
            self._ticket_conv[str(ticket_id)] = key
            if created.status is None:
                await self._set_status(created, {"state": "waiting"})
            return
        known = self._ticket_conv.get(str(ticket_id))
        conv = self._conversations.get(known) if known else None
        if conv is None:
            return
        if kind == "queued":
            await self._set_status(
                conv,
                {
                    "state": "queued",
                    "position": event.get("position"),
                    "estimated_wait_s": event.get("estimated_wait_s"),
                },
            )
        elif kind == "assigned":
            await self._set_status(conv, {"state": "assigned", "agent_id": event.get("agent_id")})
        elif kind == "status_changed":
            new = str(event.get("new"))
            if new in _STATUS_OF:
                await self._set_status(conv, {"state": _STATUS_OF[new]})
            elif new == "open" and event.get("assignee"):
                await self._set_status(
                    conv, {"state": "assigned", "agent_id": event.get("assignee")}
                )

    async def reply(self, reply: dict[str, Any]) -> None:
        """Apply one `outbound.chat` value for a web-chat conversation."""
        key = reply.get("conversation_key")
        if not isinstance(key, str) or not key.startswith(PREFIX):
            return
        conv = self._get(key)
        message = {
            "type": "reply",
            "reply_id": reply.get("reply_id"),
            "ticket_id": reply.get("ticket_id"),
            "text": reply.get("text"),
            "agent_id": reply.get("author_agent_id"),
            "at": reply.get("created_at"),
        }
        conv.replies[str(reply.get("reply_id"))] = message
        while len(conv.replies) > self.max_replies:
            conv.replies.popitem(last=False)
        await self._broadcast(conv, message)

    # --- internals ----------------------------------------------------------------------

    def _get(self, key: str) -> Conversation:
        conv = self._conversations.get(key)
        if conv is None:
            conv = self._conversations[key] = Conversation(key)
            self._evict()
        else:
            self._conversations.move_to_end(key)
        conv.touched = time.monotonic()
        CONVERSATIONS.set(len(self._conversations))
        return conv

    def _evict(self) -> None:
        # The least recently touched conversation without an open socket goes first.
        while len(self._conversations) > self.max_conversations:
            for key, conv in self._conversations.items():
                if not conv.sockets:
                    del self._conversations[key]
                    if conv.ticket_id is not None:
                        self._ticket_conv.pop(conv.ticket_id, None)
                    break
            else:
                return

    async def _set_status(self, conv: Conversation, status: dict[str, Any]) -> None:
        message = {"type": "status", "ticket_id": conv.ticket_id, **status}
        conv.status = message
        await self._broadcast(conv, message)

    async def _broadcast(self, conv: Conversation, message: dict[str, Any]) -> None:
        for socket in list(conv.sockets):
            try:
                # One stalled browser must not hold up every other visitor of this replica.
                await asyncio.wait_for(socket.send_json(message), SEND_TIMEOUT_S)
            except Exception as exc:  # gone or stalled: drop it; the page reconnects
                log.info("web-chat socket send failed", extra={"error": repr(exc)})
                self.detach(conv.key, socket)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(socket.close(), 1)
