"""The HTTP inputs: Slack's Events API and the generic signed webhook.

Order of checks, so that nothing unverified is parsed and nothing invalid is ingested:
size (413) -> signature and timestamp (401) -> JSON (400) -> content (400) -> Kafka ack
(200; 503 if Kafka has not acknowledged in time, and the sender retries).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse

from deskstream_ingest_chat import slack_events, webhook
from deskstream_ingest_chat.bodies import parse_json_object, read_body
from deskstream_ingest_chat.ingest import INBOUND, NotAcknowledged
from deskstream_ingest_chat.outcomes import Challenge, Ignored, Invalid
from deskstream_ingest_chat.runtime import Runtime
from deskstream_ingest_chat.signing import (
    WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP,
    slack_valid,
    webhook_valid,
)

log = logging.getLogger(__name__)


def _unavailable(exc: NotAcknowledged) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), {"Retry-After": "1"})


def router(rt: Runtime) -> APIRouter:
    settings = rt.settings
    api = APIRouter(tags=["inbound"])
    slack_config = slack_events.SlackConfig(
        channels=frozenset(settings.slack_channels),
        bot_user_id=settings.slack_bot_user_id,
        max_text_chars=settings.max_text_chars,
    )

    @api.post("/slack/events", response_model=None)
    async def slack(request: Request) -> JSONResponse:
        """Slack Events API request URL (messages in support channels, DMs to the app)."""
        secret = settings.slack_signing_secret
        if secret is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "Slack is not configured")
        body = await read_body(request, settings.max_body_bytes)
        if not slack_valid(
            secret=secret.get_secret_value(),
            body=body,
            timestamp=request.headers.get("X-Slack-Request-Timestamp"),
            signature=request.headers.get("X-Slack-Signature"),
            max_age_s=settings.signature_max_age_s,
        ):
            INBOUND.labels("slack", "rejected").inc()
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or stale Slack signature")
        payload = parse_json_object(body)
        try:
            outcome = slack_events.interpret(payload, slack_config)
        except Invalid as exc:
            INBOUND.labels("slack", "rejected").inc()
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        if isinstance(outcome, Challenge):
            return JSONResponse({"challenge": outcome.challenge})
        if isinstance(outcome, Ignored):
            INBOUND.labels("slack", "ignored").inc()
            return JSONResponse({"ok": True, "ignored": outcome.reason})
        try:
            new = await rt.ingestor.ingest(
                outcome, source="slack", event_type=slack_events.EVENT_TYPE
            )
        except NotAcknowledged as exc:
            raise _unavailable(exc) from None
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry is not None:
            log.info("Slack retry", extra={"retry": retry, "new": new})
        return JSONResponse({"ok": True, "duplicate": not new})

    @api.post("/webhooks/chat", response_model=None)
    async def generic(request: Request) -> JSONResponse:
        """A chat message from another tool, signed with INGEST_CHAT_WEBHOOK_SECRET."""
        secret = settings.webhook_secret
        if secret is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the chat webhook is not configured")
        body = await read_body(request, settings.max_body_bytes)
        if not webhook_valid(
            secret=secret.get_secret_value(),
            body=body,
            timestamp=request.headers.get(WEBHOOK_TIMESTAMP),
            signature=request.headers.get(WEBHOOK_SIGNATURE),
            max_age_s=settings.signature_max_age_s,
        ):
            INBOUND.labels("webhook", "rejected").inc()
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or stale signature")
        payload: dict[str, Any] = parse_json_object(body)
        try:
            outcome = webhook.interpret(payload, settings.max_text_chars)
        except Invalid as exc:
            INBOUND.labels("webhook", "rejected").inc()
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        try:
            new = await rt.ingestor.ingest(outcome, source="webhook", event_type=webhook.EVENT_TYPE)
        except NotAcknowledged as exc:
            raise _unavailable(exc) from None
        message = outcome.message
        return JSONResponse(
            {
                "ok": True,
                "duplicate": not new,
                "event_id": message.event_id,
                "conversation_key": message.conversation_key,
            },
            status_code=status.HTTP_202_ACCEPTED,
        )

    return api
