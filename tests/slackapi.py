"""A local stand-in for Slack: the Web API's chat.postMessage, and signed Events API requests.

Tests cannot reach slack.com. `SlackApi` answers `POST /api/chat.postMessage` the way
Slack documents it (HTTP 200 with `{"ok": true, "channel", "ts", "message"}`; errors as
`{"ok": false, "error": "..."}`, a rate limit as HTTP 429 with `Retry-After`) and records
every call. `event_request` builds an Events API request the way Slack sends one: the
`event_callback` envelope around a `message` event, signed with the v0 scheme.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TEAM = "T0DESK0001"
BOT_USER = "U0DESKBOT1"
BOT_ID = "B0DESKBOT1"


@dataclass
class SlackApi:
    token: str
    channels: set[str]
    port: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    # Errors to answer before succeeding, in order: "ratelimited" (HTTP 429) or any
    # documented error code of chat.postMessage (HTTP 200, ok=false).
    fail_next: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _ts: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post_message(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            args = await request.json()
        else:
            args = dict(await request.post())
        auth = request.headers.get("Authorization", "")
        call = {"args": args, "auth_ok": auth == f"Bearer {self.token}"}
        self.calls.append(call)
        if not call["auth_ok"]:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if self.fail_next:
            error = self.fail_next.pop(0)
            if error == "ratelimited":
                return web.json_response(
                    {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"}
                )
            return web.json_response({"ok": False, "error": error})
        channel = args.get("channel")
        if channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if not args.get("text") and not args.get("blocks"):
            return web.json_response({"ok": False, "error": "no_text"})
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        message = {
            "type": "message",
            "subtype": "bot_message",
            "text": args["text"],
            "ts": ts,
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "team": TEAM,
        }
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        call["ts"] = ts
        return web.json_response({"ok": True, "channel": channel, "ts": ts, "message": message})

    def posted(self) -> list[dict[str, Any]]:
        """The arguments of every chat.postMessage that Slack accepted."""
        return [c["args"] for c in self.calls if "ts" in c]


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack puts on a request: timestamp and the v0 HMAC-SHA256 signature."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={mac}",
        "Content-Type": "application/json",
    }


def message_event(
    *,
    event_id: str,
    channel: str,
    user: str,
    text: str,
    ts: str,
    thread_ts: str | None = None,
    channel_type: str = "channel",
    **extra: Any,
) -> bytes:
    """An `event_callback` with a `message` event, shaped like Slack's documented example."""
    event: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": channel_type,
        "team": TEAM,
        "client_msg_id": f"{event_id}-client",
        **extra,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    envelope = {
        "token": "XXYYZZ",
        "team_id": TEAM,
        "api_app_id": "A0DESKAPP1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(float(ts)),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": TEAM,
                "user_id": BOT_USER,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-eyJldCI6Im1lc3NhZ2UiLCJ0aWQiOiJ{event_id}",
    }
    return json.dumps(envelope).encode()


def url_verification(challenge: str) -> bytes:
    return json.dumps(
        {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"}
    ).encode()
