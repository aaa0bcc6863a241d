"""Replies to X: `outbound.social` -> a reply to the post or a DM -> `DeliveryResult`.

- A PUBLIC reply is posted as a reply to the post it answers (`POST /2/tweets` with
  `reply.in_reply_to_tweet_id`): the post named by the reply's `in_reply_to` (an inbound
  event id; the poller kept what it was at X), else the root of the conversation. A
  PRIVATE reply, or a public one without a post to answer, is a DM to the requester
  (`POST /2/dm_conversations/with/:participant_id/messages`).
- Never twice: before sending, the reply id is written to MongoDB as "sending"; after X's
  answer, as "delivered" or "failed". A reply found "delivered"/"failed" is not sent again
  (only its result is re-published). One found "sending" was interrupted by a crash after
  the request may have reached X: it is reported failed ("outcome unknown") rather than
  risking a second public post.
- Transient failures (429, 5xx, no connection) are retried with back-off (a 429 waits for
  its reset), then reported `delivered=false` with the reason; other refusals at once.
  Every reply ends in a `DeliveryResult` on `tickets.commands` (key = ticket id), with a
  command id derived from the reply id, so a re-published result changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import requests
import tweepy
from deskstream.events import Channel, DeliveryResult, OutboundReply, Visibility
from deskstream.logs import correlation, event_context
from deskstream.metrics import Meter
from deskstream.producer import Publisher, command_record, delivery_result
from deskstream.runner import PoisonRecords, Record, decode_all
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from deskstream_ingest_social.normalise import MENTION
from deskstream_ingest_social.settings import IngestSocialSettings
from deskstream_ingest_social.state import XState
from deskstream_ingest_social.xclient import RateLimit, describe, is_transient

log = logging.getLogger(__name__)

POST_LIMIT = 280  # characters of a post on a standard account
DM_LIMIT = 10_000


class Refused(Exception):
    """The reply cannot be delivered as it is (too long, no recipient): not worth retrying."""


class GaveUp(Exception):
    """Transient failures outlasted the retries (or the service stopped meanwhile)."""


class Replier:
    def __init__(
        self,
        *,
        settings: IngestSocialSettings,
        client: tweepy.Client | None,
        sources: Collection[dict[str, Any]],
        deliveries: Collection[dict[str, Any]],
        publisher: Publisher,
        state: XState,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.client = client
        self.sources = sources
        self.deliveries = deliveries
        self.publisher = publisher
        self.state = state
        self.stop = stop
        self.commands_topic = settings.topics.name("tickets.commands")
        self.meter = Meter.of(settings)

    async def handle(self, records: list[Record]) -> None:
        """The BatchRunner handler: deliver each reply in order, then publish the results."""
        good, bad = decode_all(records, OutboundReply)
        results: list[DeliveryResult] = []
        for index, reply in good:
            if reply.channel is not Channel.SOCIAL:
                bad[index] = ValueError(f"a {reply.channel.value} reply on the social topic")
                continue
            # The worker thread gets a copy of this context: its log lines carry the ids.
            with event_context(**correlation(reply)):
                results.append(await asyncio.to_thread(self.deliver, reply))
        await self.publisher.publish_many(command_record(self.commands_topic, r) for r in results)
        if bad:
            raise PoisonRecords(bad)

    # --- one reply (blocking: runs in a worker thread) -----------------------------------

    def deliver(self, reply: OutboundReply) -> DeliveryResult:
        """Send one reply unless it was handled before; its result either way.

        A MongoDB error before the claim propagates (the runner retries the batch, nothing
        was sent); after the claim, only X's answer decides.
        """
        done = self._handled_before(reply)
        if done is not None:
            return done
        if self.client is None:
            detail = "no X account is configured (INGEST_SOCIAL_X_USER_ID); nothing was sent"
            return self._finish(reply, "none", delivered=False, detail=detail)
        try:
            kind, target = self._target(reply)
        except Refused as exc:
            return self._finish(reply, "none", delivered=False, detail=str(exc))
        if not self._claim(reply):
            return self._handled_before(reply) or self._unknown(reply)
        try:
            x_id = self._send_with_retries(kind, target, reply)
        except (Refused, GaveUp) as exc:
            return self._finish(reply, kind, delivered=False, detail=str(exc))
        except (tweepy.HTTPException, requests.RequestException) as exc:  # refused by X (4xx)
            return self._finish(reply, kind, delivered=False, detail=describe(exc))
        what = "reply" if kind == "reply" else "direct message"
        return self._finish(reply, kind, delivered=True, detail=f"sent as {what} {x_id}", x_id=x_id)

    def _handled_before(self, reply: OutboundReply) -> DeliveryResult | None:
        doc = self.deliveries.find_one({"_id": reply.reply_id})
        if doc is None:
            return None
        if doc.get("state") in ("delivered", "failed"):
            self.meter.reply(doc.get("kind", "?"), "repeat")
            return self._result(reply, doc["state"] == "delivered", str(doc.get("detail", "")))
        return self._unknown(reply, str(doc.get("kind", "?")))

    def _unknown(self, reply: OutboundReply, kind: str = "?") -> DeliveryResult:
        """A predecessor crashed between claiming the reply and recording X's answer."""
        return self._finish(
            reply,
            kind,
            delivered=False,
            detail="delivery interrupted; the outcome at X is unknown, so it is not sent "
            "again (a second public post would be worse than none)",
        )

    def _claim(self, reply: OutboundReply) -> bool:
        """Mark the reply as being sent; False if someone else marked it first."""
        try:
            self.deliveries.insert_one(
                {
                    "_id": reply.reply_id,
                    "ticket_id": reply.ticket_id,
                    "state": "sending",
                    "started_at": datetime.now(UTC),
                }
            )
        except DuplicateKeyError:
            return False
        return True

    def _finish(
        self,
        reply: OutboundReply,
        kind: str,
        *,
        delivered: bool,
        detail: str,
        x_id: str | None = None,
    ) -> DeliveryResult:
        state = "delivered" if delivered else "failed"
        self.deliveries.update_one(
            {"_id": reply.reply_id},
            {
                "$setOnInsert": {"ticket_id": reply.ticket_id},
                "$set": {
                    "state": state,
                    "kind": kind,
                    "detail": detail,
                    "x_id": x_id,
                    "finished_at": datetime.now(UTC),
                },
            },
            upsert=True,  # refusals and "no account" are recorded without a claim
        )
        self.meter.reply(kind, state)
        (log.info if delivered else log.warning)(
            "reply " + state,
            extra={"reply_id": reply.reply_id, "ticket_id": reply.ticket_id, "detail": detail},
        )
        return self._result(reply, delivered, detail)

    @staticmethod
    def _result(reply: OutboundReply, delivered: bool, detail: str) -> DeliveryResult:
        return delivery_result(
            "x",
            reply_id=reply.reply_id,
            ticket_id=reply.ticket_id,
            delivered=delivered,
            detail=detail,
        )

    def _target(self, reply: OutboundReply) -> tuple[str, str]:
        """("reply", post id) for a public reply with a post to answer, else ("dm", user id)."""
        if reply.visibility is Visibility.PUBLIC:
            post_id = self._post_answered(reply)
            if post_id is not None:
                if len(reply.text) > POST_LIMIT:
                    raise Refused(
                        f"a public reply is limited to {POST_LIMIT} characters "
                        f"(this one has {len(reply.text)})"
                    )
                return "reply", post_id
        if not reply.recipient.id.isdigit():
            raise Refused(f"recipient {reply.recipient.id!r} is not an X user id")
        if len(reply.text) > DM_LIMIT:
            raise Refused(f"a direct message is limited to {DM_LIMIT} characters")
        return "dm", reply.recipient.id

    def _post_answered(self, reply: OutboundReply) -> str | None:
        if reply.in_reply_to:
            source = self.sources.find_one({"_id": reply.in_reply_to})
            if source and source.get("kind") == MENTION:
                return str(source["post_id"])
        conversation = reply.conversation_key.removeprefix("x-post:")
        return conversation if conversation != reply.conversation_key else None

    def _send_with_retries(self, kind: str, target: str, reply: OutboundReply) -> str:
        delay = self.settings.delivery_backoff_s
        attempt = 1
        while True:
            try:
                x_id = self._send(kind, target, reply.text)
                self.state.answered("write")
                return x_id
            except Exception as exc:
                self._observe(exc)
                if not is_transient(exc):
                    raise
                if attempt >= self.settings.delivery_attempts:
                    raise GaveUp(f"gave up after {attempt} attempts: {describe(exc)}") from exc
                wait = delay
                if isinstance(exc, tweepy.TooManyRequests):
                    wait = RateLimit.of(exc.response).wait_s(
                        cap=self.settings.rate_limit_max_wait_s
                    )
                log.warning(
                    "reply not sent yet; retrying",
                    extra={"reply_id": reply.reply_id, "error": describe(exc), "retry_in_s": wait},
                )
                self.meter.reply(kind, "retried")
                if self.stop.wait(wait):
                    raise GaveUp(f"stopped before a retry could succeed: {describe(exc)}") from exc
                delay = min(delay * 2, self.settings.delivery_backoff_max_s)
                attempt += 1

    def _observe(self, exc: BaseException) -> None:
        """Tell readiness whether X was there: a 429 or a 4xx is an answer, 401/5xx not."""
        unanswered = (tweepy.TwitterServerError, tweepy.Unauthorized, requests.RequestException)
        if isinstance(exc, unanswered):
            self.state.failed("write", describe(exc))
        elif isinstance(exc, tweepy.HTTPException):
            self.state.answered("write")

    def _send(self, kind: str, target: str, text: str) -> str:
        assert self.client is not None  # checked in deliver()
        user_auth = self.settings.x_user_auth
        if kind == "reply":
            response = self.client.create_tweet(
                text=text, in_reply_to_tweet_id=target, user_auth=user_auth
            )
        else:
            response = self.client.create_direct_message(
                participant_id=target, text=text, user_auth=user_auth
            )
        assert isinstance(response, requests.Response)  # return_type, see xclient.py
        data = (response.json() or {}).get("data") or {}
        return str(data.get("id") or data.get("dm_event_id") or "")
