"""The poller of the desk's X account: lease, sweep mentions and DMs page by page, repeat.

One sweep of a kind reads pages newest first, following `next_token`:
- mentions (`GET /2/users/:id/mentions`) from the checkpointed `since_id`;
- DM events (`GET /2/dm_events`, which has no since_id) until a page reaches the newest
  event id seen before (ids are snowflakes: they grow with time).
Each page is published and acknowledged by Kafka before the next is read; the checkpoint
moves to the newest id only after the whole sweep is on Kafka. A crash mid-sweep re-reads
it (at-least-once; the event ids are deterministic, so downstream drops the repeats), and
items at or below the checkpoint, or seen earlier in the sweep, are never published again.

Rate limits: a 429 is waited out until `x-rate-limit-reset`, then the same request (same
page token) is made again, so nothing is skipped; an answer with `x-rate-limit-remaining:
0` makes the next request of that endpoint wait for the reset first. Waits are
interruptible by a stop.

Runs in a thread of its own: tweepy's `Client` is blocking (requests), like the IMAP
worker's client, and the shared lease keeper and producer are built for such threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import requests
import tweepy
from deskstream.health import failed_dependency
from deskstream.lease import LeaseKeeper, LeaseLost, LeaseStore
from deskstream.metrics import Meter
from pymongo import UpdateOne
from pymongo.collection import Collection

from deskstream_ingest_social.metrics import POLLS, RATE_LIMIT_WAIT_SECONDS, RATE_LIMIT_WAITS
from deskstream_ingest_social.normalise import (
    DM,
    MENTION,
    Account,
    Ignore,
    Includes,
    Outcome,
    Publish,
    Reject,
    normalise,
)
from deskstream_ingest_social.publish import PagePublisher
from deskstream_ingest_social.settings import IngestSocialSettings
from deskstream_ingest_social.state import XState
from deskstream_ingest_social.xclient import RateLimit, describe

log = logging.getLogger(__name__)

TICK_S = 1.0  # waits wake this often to notice a stop or a lost lease
CHECKPOINT_FIELD = {MENTION: "mentions_since_id", DM: "dm_newest_id"}
ENDPOINT = {MENTION: "GET /2/users/:id/mentions", DM: "GET /2/dm_events"}
TWEET_FIELDS = ["created_at", "conversation_id", "author_id", "referenced_tweets", "lang"]
TWEET_FIELDS += ["in_reply_to_user_id"]
USER_FIELDS = ["username", "name"]
DM_FIELDS = ["id", "text", "event_type", "dm_conversation_id", "created_at", "sender_id"]
DM_FIELDS += ["participant_ids", "referenced_tweets", "attachments"]


class InvalidPage(Exception):
    """X's answer is not the documented page shape (not JSON, `data` not a list)."""


def _newer(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if int(a) >= int(b) else b


class AccountPoller:
    def __init__(
        self,
        *,
        settings: IngestSocialSettings,
        client: tweepy.Client,
        store: LeaseStore,
        publisher: PagePublisher,
        sources: Collection[dict[str, Any]],
        state: XState,
        stop: threading.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.publisher = publisher
        self.sources = sources
        self.state = state
        self.stop = stop
        self.key = settings.account_key
        self.account = Account(settings.x_user_id or "", settings.x_username)
        self.kinds = [
            k for k, on in ((MENTION, settings.poll_mentions), (DM, settings.poll_dms)) if on
        ]
        self._clock = clock
        self.meter = Meter.of(settings)
        self._lease: LeaseKeeper | None = None
        self._exhausted: dict[str, float] = {}  # endpoint -> reset time, while remaining == 0
        self.sweeps_done = 0

    def _log(self, **extra: object) -> dict[str, object]:
        return {"account": self.key, **extra}

    # --- the outer loop: lease, session, back-off ------------------------------------

    def run(self) -> None:
        delay = 1.0
        was_standby = False
        held = False
        while not self.stop.is_set():
            try:
                held = self.store.acquire(self.key)
                if not held:
                    if not was_standby:
                        log.info(
                            "X account polled by another replica; standing by", extra=self._log()
                        )
                        was_standby = True
                    self.stop.wait(self.settings.lease_heartbeat_s)
                    continue
                was_standby = False
                log.info("lease taken; polling the X account", extra=self._log())
                with LeaseKeeper(
                    self.store,
                    self.key,
                    heartbeat_s=self.settings.lease_heartbeat_s,
                    ttl_s=self.settings.lease_ttl_s,
                    meter=self.meter,
                ) as lease:
                    self._lease = lease
                    try:
                        self._session()
                        delay = 1.0
                    finally:
                        self._lease = None
            except LeaseLost:
                log.warning("lease lost; standing by", extra=self._log())
            except Exception as exc:  # X, Kafka or MongoDB failed: back off, start again
                self.meter.connection_error(failed_dependency(exc, "x"), exc)
                log.warning(
                    "polling failed; retrying after a pause",
                    extra=self._log(error=describe(exc), retry_in_s=delay),
                )
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.reconnect_backoff_max_s)
        if held:
            try:
                self.store.release(self.key)  # a standby takes over now, not at expiry
            except Exception as exc:
                log.warning("lease not released", extra=self._log(error=repr(exc)))

    def _check(self) -> None:
        if self._lease is not None:
            self._lease.check()

    def _session(self) -> None:
        while not self.stop.is_set():
            for kind in self.kinds:
                self.sweep(kind)
                if self.stop.is_set():
                    return
            self.sweeps_done += 1
            self._wait(self.settings.poll_interval_s)

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            self._check()
            self.stop.wait(min(TICK_S, max(0.0, deadline - time.monotonic())))

    # --- one sweep -------------------------------------------------------------------

    def sweep(self, kind: str) -> None:
        """Publish every item of `kind` newer than the checkpoint, then move the checkpoint."""
        field = CHECKPOINT_FIELD[kind]
        last = self.store.checkpoint(self.key).get(field)
        last = str(last) if last is not None else None
        if last is None and not self.settings.initial_backfill:
            self._start_from_now(kind)
            return
        newest = last
        token: str | None = None
        seen: set[str] = set()
        for _ in range(self.settings.max_pages_per_sweep):
            self._check()
            body = self._fetch(kind, since=last, token=token)
            items = body.get("data") or []
            if not isinstance(items, list):
                raise InvalidPage(f"{ENDPOINT[kind]}: data is not a list")
            fresh: list[Any] = []
            reached_seen = False
            for item in items:
                item_id = item.get("id") if isinstance(item, dict) else None
                if isinstance(item_id, str) and item_id.isdigit():
                    if last is not None and int(item_id) <= int(last):
                        reached_seen = True  # read before: a re-fetched page or the old edge
                        continue
                    if item_id in seen:
                        continue
                    seen.add(item_id)
                    newest = _newer(newest, item_id)
                fresh.append(item)  # an item without a usable id is dead-lettered
            includes = Includes.of(body)
            outcomes = [normalise(kind, item, includes, self.account) for item in fresh]
            self._remember(outcomes)
            self._check()
            self.publisher.publish(kind, outcomes)
            self._account(kind, outcomes)
            meta = body.get("meta") or {}
            token = meta.get("next_token") if isinstance(meta, dict) else None
            if not token or (kind == DM and reached_seen):
                break
        else:
            log.warning(
                "sweep stopped at the page limit; older items are skipped",
                extra=self._log(kind=kind, pages=self.settings.max_pages_per_sweep),
            )
        if newest != last:
            # Every page of the sweep is on Kafka: now, and only now, move the checkpoint.
            self.store.save(self.key, {field: newest})
            log.info("checkpoint moved", extra=self._log(kind=kind, newest_id=newest))

    def _start_from_now(self, kind: str) -> None:
        """First start without backfill: the newest id X shows now becomes the checkpoint."""
        body = self._fetch(kind, since=None, token=None)
        items = body.get("data") or []
        ids = [
            i["id"]
            for i in (items if isinstance(items, list) else [])
            if isinstance(i, dict) and isinstance(i.get("id"), str) and i["id"].isdigit()
        ]
        newest = max(ids, key=int) if ids else "0"
        self.store.save(self.key, {CHECKPOINT_FIELD[kind]: newest})
        log.info(
            "no backfill: starting after the newest item",
            extra=self._log(kind=kind, newest_id=newest),
        )

    def _remember(self, outcomes: Sequence[Outcome]) -> None:
        """Keep what each published item was at X, so a reply can find its post."""
        ops = [
            UpdateOne({"_id": o.source["_id"]}, {"$setOnInsert": o.source}, upsert=True)
            for o in outcomes
            if isinstance(o, Publish)
        ]
        if ops:
            self.sources.bulk_write(ops, ordered=False)

    def _account(self, kind: str, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, Publish):  # counted by the producer
                log.info(
                    "published",
                    extra=self._log(
                        kind=kind,
                        event_id=outcome.message.event_id,
                        conversation_key=outcome.message.conversation_key,
                    ),
                )
            elif isinstance(outcome, Ignore):
                self.meter.ignored(outcome.reason)
                log.info(
                    "ignored",
                    extra=self._log(kind=kind, event_id=outcome.event_id, reason=outcome.reason),
                )
            elif isinstance(outcome, Reject):
                self.meter.dead_letter(outcome.error_type)
                log.error(
                    "dead-lettered",
                    extra=self._log(
                        kind=kind, event_id=outcome.event_id, error=outcome.reason[:300]
                    ),
                )

    # --- one request, rate limits honoured ---------------------------------------------

    def _fetch(self, kind: str, *, since: str | None, token: str | None) -> dict[str, Any]:
        endpoint = ENDPOINT[kind]
        while True:
            self._wait_for_window(endpoint)
            try:
                response = self._request(kind, since=since, token=token)
            except tweepy.TooManyRequests as exc:
                POLLS.labels(endpoint, "rate_limited").inc()
                self.state.answered("read")
                self._wait_rate_limit(endpoint, RateLimit.of(exc.response))
                continue  # the same request again: nothing skipped
            except (
                tweepy.TwitterServerError,
                requests.RequestException,
                tweepy.Unauthorized,
            ) as exc:
                POLLS.labels(endpoint, "failed").inc()
                self.state.failed("read", describe(exc))
                raise
            except tweepy.HTTPException:
                POLLS.labels(endpoint, "failed").inc()
                self.state.answered("read")
                raise
            POLLS.labels(endpoint, "ok").inc()
            self.state.answered("read")
            limit = RateLimit.of(response)
            if limit.remaining == 0 and limit.reset_at is not None:
                self._exhausted[endpoint] = limit.reset_at
            try:
                body = response.json()
            except ValueError as exc:
                raise InvalidPage(f"{endpoint}: the answer is not JSON") from exc
            if not isinstance(body, dict):
                raise InvalidPage(f"{endpoint}: the answer is not a JSON object")
            return body

    def _request(self, kind: str, *, since: str | None, token: str | None) -> requests.Response:
        common: dict[str, Any] = {
            "max_results": self.settings.page_size,
            "user_fields": USER_FIELDS,
        }
        if token:
            common["pagination_token"] = token
        if kind == MENTION:
            if since and since != "0":  # "0": the timeline was empty at the first start
                common["since_id"] = since
            response = self.client.get_users_mentions(
                self.account.user_id,
                expansions=["author_id", "referenced_tweets.id", "referenced_tweets.id.author_id"],
                tweet_fields=TWEET_FIELDS,
                user_auth=self.settings.x_user_auth,
                **common,
            )
        else:
            response = self.client.get_direct_message_events(
                expansions=["sender_id", "referenced_tweets.id", "participant_ids"],
                dm_event_fields=DM_FIELDS,
                tweet_fields=TWEET_FIELDS,
                user_auth=self.settings.x_user_auth,
                **common,
            )
        assert isinstance(response, requests.Response)  # return_type, see xclient.py
        return response

    def _wait_for_window(self, endpoint: str) -> None:
        reset_at = self._exhausted.pop(endpoint, None)
        if reset_at is not None:
            self._wait_rate_limit(endpoint, RateLimit(0, reset_at))

    def _wait_rate_limit(self, endpoint: str, limit: RateLimit) -> None:
        seconds = limit.wait_s(self._clock(), cap=self.settings.rate_limit_max_wait_s)
        RATE_LIMIT_WAITS.labels(endpoint).inc()
        RATE_LIMIT_WAIT_SECONDS.labels(endpoint).inc(seconds)
        log.warning(
            "rate limited; waiting for the window to reset",
            extra=self._log(endpoint=endpoint, wait_s=round(seconds, 1), reset_at=limit.reset_at),
        )
        self._wait(seconds)
