"""The ways a reply leaves this service: Slack's chat.postMessage and a signed webhook POST.

A sender raises `Retryable` (rate limit, server error, timeout: try again later) or
`Permanent` (the target does not exist, the token is refused: trying again cannot help).
"""

from __future__ import annotations

import json
import time

import aiohttp
from deskstream.events import OutboundReply
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from deskstream_ingest_chat import slack_events, webhook
from deskstream_ingest_chat.signing import WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, webhook_signature


class Retryable(Exception):
    def __init__(
        self, detail: str, retry_after_s: float | None = None, *, unreachable: bool = False
    ) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        # No answer at all (not a 429 or 5xx): the connection gauge reads 0.
        self.unreachable = unreachable


class Permanent(Exception):
    pass


# Slack's documented errors of chat.postMessage that a later attempt may get past.
_SLACK_TRANSIENT = {
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
}


class SlackSender:
    def __init__(self, *, token: str, base_url: str, timeout_s: float) -> None:
        self.client = AsyncWebClient(token=token, base_url=base_url, timeout=int(timeout_s) or 1)

    async def send(self, reply: OutboundReply) -> str:
        where = slack_events.parse_conversation_key(reply.conversation_key)
        if where is None:
            raise Permanent(f"not a Slack conversation: {reply.conversation_key}")
        _, channel, thread_ts = where
        try:
            response = await self.client.chat_postMessage(
                channel=channel, text=reply.text, thread_ts=thread_ts
            )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "")) if exc.response is not None else ""
            status = exc.response.status_code if exc.response is not None else 0
            if status == 429 or error in _SLACK_TRANSIENT or status >= 500:
                after = exc.response.headers.get("retry-after") if exc.response else None
                raise Retryable(
                    f"slack: {error or status}", float(after) if after else None
                ) from None
            raise Permanent(f"slack: {error or status}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Retryable(f"slack unreachable: {type(exc).__name__}", unreachable=True) from None
        return f"posted to Slack {channel} thread {thread_ts} as {response.get('ts')}"

    async def close(self) -> None:
        session = getattr(self.client, "session", None)
        if session is not None:
            await session.close()


class WebhookReplySender:
    """POSTs a reply to the configured URL, signed like inbound webhooks (README)."""

    def __init__(self, *, url: str, secret: str, timeout_s: float) -> None:
        self.url = url
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, reply: OutboundReply) -> str:
        where = webhook.parse_conversation_key(reply.conversation_key)
        if where is None:
            raise Permanent(f"not a webhook conversation: {reply.conversation_key}")
        source, conversation = where
        body = json.dumps(
            {
                "source": source,
                "conversation_id": conversation,
                "reply_id": reply.reply_id,
                "ticket_id": reply.ticket_id,
                "recipient_id": reply.recipient.id,
                "text": reply.text,
                "agent_id": reply.author_agent_id,
            }
        ).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            WEBHOOK_TIMESTAMP: ts,
            WEBHOOK_SIGNATURE: webhook_signature(secret=self.secret, body=body, timestamp=ts),
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.post(self.url, data=body, headers=headers) as resp,
            ):
                if resp.status == 429 or resp.status >= 500:
                    after = resp.headers.get("Retry-After")
                    raise Retryable(
                        f"webhook answered {resp.status}",
                        float(after) if after and after.isdigit() else None,
                    )
                if resp.status >= 300:
                    raise Permanent(f"webhook answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Retryable(
                f"webhook unreachable: {type(exc).__name__}", unreachable=True
            ) from None
        return f"posted to {source}"

    async def close(self) -> None:
        return None
