"""A local X API v2 server for tests: the documented shapes of the endpoints ingest-social uses.

Tests cannot reach X, so this answers on 127.0.0.1 what X answers (shapes from the X API
v2 reference: `data` / `includes` / `meta` with `result_count`, `newest_id`, `oldest_id`,
`next_token`; problem-details errors with `title`, `detail`, `type`, `status`; the
`x-rate-limit-limit`, `x-rate-limit-remaining`, `x-rate-limit-reset` headers on every
answer), and the real tweepy client is pointed at it through ingest-social's base URL.

- `GET /2/users/:id/mentions` (since_id, pagination_token, max_results) and
  `GET /2/dm_events` (pagination_token, max_results), newest first, with the authors and
  referenced posts in `includes`;
- `POST /2/tweets` and `POST /2/dm_conversations/with/:participant_id/messages`, recorded
  in `posts` and `dms_sent`;
- `rate_limit(...)` answers the next requests of an endpoint with 429 and a reset time,
  `fail_writes(...)` answers posts with 503, `ignore_since_id` re-serves pages already read;
- every request is logged (`requests`) with its time, token and answer.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MENTIONS = "mentions"
DM_EVENTS = "dm_events"
TWEETS = "tweets"
DMS = "dm_send"
WINDOW = 300  # requests per 15-minute window, as X documents for these endpoints


@dataclass
class Logged:
    endpoint: str
    method: str
    path: str
    params: dict[str, str]
    token: str
    at: float
    status: int
    body: Any = None


@dataclass
class XApi:
    """The state of the fake X: users, posts, DM events; what was asked and what was sent."""

    desk_id: str = "1500000000000000001"
    desk_username: str = "itdesk"
    tokens: set[str] = field(default_factory=lambda: {"local-x-bearer-token-0123456789"})
    users: dict[str, dict[str, str]] = field(default_factory=dict)
    mentions: list[dict[str, Any]] = field(default_factory=list)
    dm_events: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    dms_sent: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Logged] = field(default_factory=list)
    ignore_since_id: bool = False
    _ids: Any = field(default_factory=lambda: itertools.count(1_800_000_000_000_000_000, 1000))
    _limited: dict[str, list[float]] = field(default_factory=dict)  # endpoint -> resets queued
    _failing: dict[str, int | None] = field(default_factory=dict)  # endpoint -> times left
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.user(self.desk_id, self.desk_username, "IT Service Desk")

    # --- what the world does on X ------------------------------------------------------

    def next_id(self) -> str:
        with self.lock:
            return str(next(self._ids))

    def user(self, user_id: str, username: str, name: str) -> str:
        with self.lock:
            self.users[user_id] = {"id": user_id, "username": username, "name": name}
        return user_id

    def mention(
        self,
        author_id: str,
        text: str,
        *,
        in_reply_to: str | None = None,
        conversation_id: str | None = None,
    ) -> dict[str, Any]:
        """A post mentioning the desk (or any post by the desk itself, when author is it)."""
        post_id = self.next_id()
        post: dict[str, Any] = {
            "id": post_id,
            "text": text,
            "author_id": author_id,
            "conversation_id": conversation_id or post_id,
            "created_at": _now(),
            "edit_history_tweet_ids": [post_id],
            "lang": "en",
        }
        if in_reply_to is not None:
            post["referenced_tweets"] = [{"type": "replied_to", "id": in_reply_to}]
            post["in_reply_to_user_id"] = self.desk_id
            if conversation_id is None:
                parent = self._post(in_reply_to)
                post["conversation_id"] = parent["conversation_id"] if parent else in_reply_to
        with self.lock:
            self.mentions.append(post)
        return post

    def raw_mention(self, item: dict[str, Any]) -> None:
        """An item exactly as given (e.g. one without an author), for dead-letter tests."""
        with self.lock:
            self.mentions.append(item)

    def dm(
        self, sender_id: str, text: str, *, to: str | None = None, event_type: str = "MessageCreate"
    ) -> dict[str, Any]:
        """A DM event in the desk's one-to-one conversation with `sender_id` (or with `to`)."""
        other = to or sender_id
        low, high = sorted((other, self.desk_id), key=int)
        event: dict[str, Any] = {
            "id": self.next_id(),
            "event_type": event_type,
            "dm_conversation_id": f"{low}-{high}",
            "created_at": _now(),
            "sender_id": sender_id,
            "participant_ids": [low, high],
        }
        if event_type == "MessageCreate":
            event["text"] = text
        with self.lock:
            self.dm_events.append(event)
        return event

    def rate_limit(self, endpoint: str, reset_in_s: float, times: int = 1) -> float:
        """Answer the next `times` requests of `endpoint` with 429; returns the reset time."""
        reset = time.time() + reset_in_s
        with self.lock:
            self._limited.setdefault(endpoint, []).extend([reset] * times)
        return reset

    def fail_writes(self, times: int | None = None, *endpoints: str) -> None:
        """Answer posts and DMs with 503 (the next `times`, or all while None)."""
        with self.lock:
            for endpoint in endpoints or (TWEETS, DMS):
                self._failing[endpoint] = times

    def reads(self, endpoint: str) -> list[Logged]:
        with self.lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def _post(self, post_id: str) -> dict[str, Any] | None:
        with self.lock:
            for post in self.mentions + self.posts:
                if post.get("id") == post_id:
                    return post
        return None

    # --- the answers -------------------------------------------------------------------

    def answer(
        self, method: str, path: str, params: dict[str, str], token: str, body: Any
    ) -> tuple[int, dict[str, str], Any, str]:
        """(status, headers, JSON body, endpoint) for one request."""
        route = _route(method, path)
        if route is None:
            return 404, {}, _problem(404, "Not Found Error", f"no route {method} {path}"), "?"
        endpoint, arg = route
        if token not in self.tokens:
            return 401, {}, _problem(401, "Unauthorized", "Unauthorized"), endpoint
        with self.lock:
            queued = self._limited.get(endpoint)
            if queued:
                reset = queued.pop(0)
                headers = _limit_headers(0, reset)
                return (
                    429,
                    headers,
                    _problem(429, "Too Many Requests", "Too Many Requests"),
                    endpoint,
                )
            failing = self._failing.get(endpoint, 0)
            if endpoint in self._failing and (failing is None or failing > 0):
                if failing is not None:
                    self._failing[endpoint] = failing - 1
                return 503, {}, _problem(503, "Service Unavailable", "Over capacity"), endpoint
        handler = {
            MENTIONS: self._mentions,
            DM_EVENTS: self._dm_events,
            TWEETS: self._create_tweet,
            DMS: self._send_dm,
        }[endpoint]
        status, payload = handler(arg, params, body)
        return status, _limit_headers(WINDOW - 1, time.time() + 900), payload, endpoint

    def _mentions(self, user_id: str, params: dict[str, str], _: Any) -> tuple[int, Any]:
        if user_id != self.desk_id:
            return 200, {"meta": {"result_count": 0}}
        since = params.get("since_id")
        with self.lock:
            items = [
                m
                for m in self.mentions
                if self.ignore_since_id or since is None or int(str(m.get("id") or 0)) > int(since)
            ]
        return 200, self._page(items, params, with_ids=True)

    def _dm_events(self, _: str, params: dict[str, str], __: Any) -> tuple[int, Any]:
        with self.lock:
            items = list(self.dm_events)
        return 200, self._page(items, params, with_ids=False)

    def _page(self, items: list[dict[str, Any]], params: dict[str, str], *, with_ids: bool) -> Any:
        """Newest first; the token names where the next page starts (below that id)."""
        items = sorted(items, key=lambda i: int(str(i.get("id") or 0)), reverse=True)
        token = params.get("pagination_token")
        if token:
            below = int(base64.urlsafe_b64decode(token.encode()).decode())
            items = [i for i in items if int(str(i.get("id") or 0)) < below]
        size = int(params.get("max_results", "10"))
        page, rest = items[:size], items[size:]
        meta: dict[str, Any] = {"result_count": len(page)}
        if page and with_ids:
            meta["newest_id"], meta["oldest_id"] = page[0].get("id"), page[-1].get("id")
        if rest and page:
            last = int(str(page[-1].get("id") or 0))
            meta["next_token"] = base64.urlsafe_b64encode(str(last).encode()).decode()
        if not page:
            return {"meta": meta}
        out: dict[str, Any] = {"data": page, "meta": meta}
        includes = self._includes(page)
        if includes:
            out["includes"] = includes
        return out

    def _includes(self, page: list[dict[str, Any]]) -> dict[str, Any]:
        user_ids: list[str] = []
        tweets: list[dict[str, Any]] = []
        for item in page:
            for key in ("author_id", "sender_id"):
                if isinstance(item.get(key), str):
                    user_ids.append(item[key])
            for ref in item.get("referenced_tweets") or []:
                post = self._post(ref.get("id"))
                if post is not None:
                    tweets.append(post)
                    user_ids.append(post["author_id"])
        users = [self.users[u] for u in dict.fromkeys(user_ids) if u in self.users]
        includes: dict[str, Any] = {}
        if users:
            includes["users"] = users
        if tweets:
            includes["tweets"] = tweets
        return includes

    def _create_tweet(self, _: str, __: dict[str, str], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return 400, _problem(400, "Invalid Request", "text is required")
        post_id = self.next_id()
        post = {
            "id": post_id,
            "text": body["text"],
            "author_id": self.desk_id,
            "conversation_id": post_id,
            "created_at": _now(),
            "edit_history_tweet_ids": [post_id],
        }
        reply_to = (body.get("reply") or {}).get("in_reply_to_tweet_id")
        if reply_to:
            post["referenced_tweets"] = [{"type": "replied_to", "id": reply_to}]
            parent = self._post(reply_to)
            post["conversation_id"] = parent["conversation_id"] if parent else reply_to
        with self.lock:
            self.posts.append(post)
        return 201, {
            "data": {"id": post_id, "text": body["text"], "edit_history_tweet_ids": [post_id]}
        }

    def _send_dm(self, participant: str, _: dict[str, str], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return 400, _problem(400, "Invalid Request", "text is required")
        low, high = sorted((participant, self.desk_id), key=int)
        event = {
            "id": self.next_id(),
            "event_type": "MessageCreate",
            "text": body["text"],
            "dm_conversation_id": f"{low}-{high}",
            "sender_id": self.desk_id,
            "participant_id": participant,
            "created_at": _now(),
        }
        with self.lock:
            self.dms_sent.append(event)
            self.dm_events.append({k: v for k, v in event.items() if k != "participant_id"})
        return 201, {
            "data": {"dm_conversation_id": event["dm_conversation_id"], "dm_event_id": event["id"]}
        }


_ROUTES = [
    ("GET", re.compile(r"^/2/users/([0-9]+)/mentions$"), MENTIONS),
    ("GET", re.compile(r"^/2/dm_events$"), DM_EVENTS),
    ("POST", re.compile(r"^/2/tweets$"), TWEETS),
    ("POST", re.compile(r"^/2/dm_conversations/with/([0-9]+)/messages$"), DMS),
]


def _route(method: str, path: str) -> tuple[str, str] | None:
    for verb, pattern, endpoint in _ROUTES:
        match = pattern.match(path)
        if verb == method and match:
            return endpoint, match.group(1) if match.groups() else ""
    return None


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"title": title, "detail": detail, "type": "about:blank", "status": status}


def _limit_headers(remaining: int, reset: float) -> dict[str, str]:
    return {
        "x-rate-limit-limit": str(WINDOW),
        "x-rate-limit-remaining": str(remaining),
        "x-rate-limit-reset": str(int(reset + 0.999)),  # whole epoch seconds, rounded up
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class XServer:
    """`with XServer() as x:` serves `x.api` on `x.base_url` from a thread."""

    def __init__(self, api: XApi | None = None) -> None:
        self.api = api or XApi()
        api_ref = self.api

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reads `api.requests` instead

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                auth = self.headers.get("Authorization") or ""
                token = auth.removeprefix("Bearer ").strip()
                status, headers, payload, endpoint = api_ref.answer(
                    self.command, parts.path, params, token, body
                )
                with api_ref.lock:
                    api_ref.requests.append(
                        Logged(
                            endpoint,
                            self.command,
                            parts.path,
                            params,
                            token,
                            time.time(),
                            status,
                            body,
                        )
                    )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> XServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
