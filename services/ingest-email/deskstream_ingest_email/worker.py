"""The worker of one mailbox: lease, connect, drain new mail in batches, IDLE, repeat.

One batch is: FETCH many UIDs (BODY.PEEK, so the server marks nothing read), normalise
each, send all to Kafka and flush once, advance the checkpoint, and only then set \\Seen.
A crash anywhere before the checkpoint re-reads the batch (at-least-once; the event ids are
deterministic, so downstream drops the repeats); a crash after it loses nothing.

Runs in a thread of its own: imapclient is blocking. Any error of a session (the server
went away, Kafka or MongoDB did not answer) ends the session; the worker backs off and
starts a new one, re-reading from the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from deskstream.health import failed_dependency
from deskstream.lease import LeaseKeeper
from deskstream.metrics import Meter
from imapclient import IMAPClient
from imapclient.imapclient import FLAGGED, SEEN

from deskstream_ingest_email.normalise import (
    DeadLetter,
    Ignore,
    MailSource,
    NormaliseConfig,
    Publish,
    normalise,
)
from deskstream_ingest_email.publish import BatchPublisher, Fetched
from deskstream_ingest_email.settings import IngestEmailSettings, Mailbox
from deskstream_ingest_email.store import LeaseLost, MailboxStore

log = logging.getLogger(__name__)

Connect = Callable[[Mailbox, float], IMAPClient]
# idle_check wakes this often to notice a stop, a lost lease or a dead connection.
IDLE_TICK_S = 1.0


class ConnectionDropped(Exception):
    """The IMAP server closed the connection (seen while idling)."""


def connect(mailbox: Mailbox, timeout_s: float) -> IMAPClient:
    client = IMAPClient(mailbox.host, port=mailbox.port, ssl=mailbox.ssl, timeout=timeout_s)
    try:
        client.normalise_times = False  # INTERNALDATE with its zone, not naive local time
        client.login(mailbox.user, mailbox.password.get_secret_value())
    except BaseException:
        _close(client)
        raise
    return client


def _close(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:  # already gone: nothing to close politely
        with contextlib.suppress(Exception):
            client.shutdown()


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MailboxWorker:
    def __init__(
        self,
        *,
        mailbox: Mailbox,
        settings: IngestEmailSettings,
        store: MailboxStore,
        publisher: BatchPublisher,
        config: NormaliseConfig,
        stop: threading.Event,
        connect: Connect = connect,
    ) -> None:
        self.mailbox = mailbox
        self.key = mailbox.key
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.config = config
        self.stop = stop
        self._connect = connect
        self.meter = Meter.of(settings)
        self._lease: LeaseKeeper | None = None
        self._selected = False  # the session got as far as its mailbox

    def _log(self, **extra: object) -> dict[str, object]:
        return {"mailbox": self.key, **extra}

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
                        log.info("mailbox held by another worker; standing by", extra=self._log())
                        was_standby = True
                    self.stop.wait(self.settings.lease_heartbeat_s)
                    continue
                was_standby = False
                log.info("lease taken; working the mailbox", extra=self._log())
                with LeaseKeeper(
                    self.store.leases,
                    self.key,
                    heartbeat_s=self.settings.lease_heartbeat_s,
                    ttl_s=self.settings.lease_ttl_s,
                    meter=self.meter,
                ) as lease:
                    self._lease = lease
                    try:
                        self._session()
                    finally:
                        self._lease = None
            except LeaseLost:
                log.warning("lease lost; standing by", extra=self._log())
            except Exception as exc:  # the session's dependency failed: back off, reconnect
                if self._selected:  # it worked for a while: start the back-off afresh
                    delay, self._selected = 1.0, False
                self.meter.connection_error(failed_dependency(exc, "imap"), exc)
                log.warning(
                    "mailbox session ended; reconnecting after a pause",
                    extra=self._log(error=repr(exc)[:500], retry_in_s=delay),
                )
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.reconnect_backoff_max_s)
        if held:
            self._release()

    def _release(self) -> None:
        try:
            self.store.release(self.key)  # a standby takes over now, not at expiry
        except Exception as exc:
            log.warning("lease not released", extra=self._log(error=repr(exc)))

    def _check(self) -> None:
        if self._lease is not None:
            self._lease.check()

    # --- one session: connect, select, drain, idle -----------------------------------

    def _session(self) -> None:
        try:
            client = self._connect(self.mailbox, self.settings.imap_timeout_s)
        except Exception:
            self.meter.connection("imap", False, self.key)
            raise
        try:
            info = client.select_folder(self.mailbox.folder)
            uidvalidity = int(info[b"UIDVALIDITY"])
            last_uid = self._start_point(uidvalidity)
            self._selected = True
            self.meter.connection("imap", True, self.key)
            can_idle = b"IDLE" in client.capabilities()
            log.info(
                "mailbox selected",
                extra=self._log(uidvalidity=uidvalidity, last_uid=last_uid, idle=can_idle),
            )
            while not self.stop.is_set():
                last_uid = self._drain(client, uidvalidity, last_uid)
                if self.stop.is_set():
                    break
                if can_idle:
                    self._idle(client)
                else:
                    self._poll(client)
        except LeaseLost:
            self.meter.forget_connection("imap", self.key)  # the new holder reports it
            raise
        except BaseException as exc:
            if failed_dependency(exc, "imap") == "imap":
                self.meter.connection("imap", False, self.key)
            raise
        finally:
            _close(client)

    def _start_point(self, uidvalidity: int) -> int:
        checkpoint = self.store.checkpoint(self.key)
        if checkpoint.uidvalidity == uidvalidity:
            return checkpoint.last_uid
        if checkpoint.uidvalidity is not None:
            # The old UIDs mean nothing now. Re-reading the folder repeats no ticket:
            # mail with a Message-ID gets the same event id as before.
            log.warning(
                "UIDVALIDITY changed; re-reading the whole folder",
                extra=self._log(old=checkpoint.uidvalidity, new=uidvalidity),
            )
        self.store.advance(self.key, uidvalidity=uidvalidity, last_uid=0)
        return 0

    def _drain(self, client: IMAPClient, uidvalidity: int, last_uid: int) -> int:
        """Publish every mail above `last_uid`, batch by batch; returns the new last UID."""
        while not self.stop.is_set():
            self._check()
            # SEARCH answers from the session's view of the folder, which only a sync
            # updates: without this NOOP, mail delivered since the last sync is missed
            # until the server's next IDLE check (30 s on Dovecot). Right before IDLE, it
            # also leaves only one round trip in which new mail can slip past both.
            client.noop()
            # "n:*" always matches the highest UID, even below n: filter.
            new = sorted(u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid)
            if not new:
                return last_uid
            for chunk in self._batches(client, new):
                last_uid = self._batch(client, uidvalidity, chunk)
                if self.stop.is_set():
                    break
        return last_uid

    def _batches(self, client: IMAPClient, uids: Sequence[int]) -> Iterator[Sequence[int]]:
        """Batches of at most `batch_size` mails and (one big mail aside) `batch_max_bytes`."""
        sizes: dict[int, int] = {}
        for chunk in _chunks(uids, 1000):  # sizes are cheap; ask for many at once
            for uid, data in client.fetch(list(chunk), [b"RFC822.SIZE"]).items():
                sizes[uid] = int(data.get(b"RFC822.SIZE") or 0)
        batch: list[int] = []
        total = 0
        for uid in uids:
            size = sizes.get(uid, 0)
            if batch and (
                len(batch) >= self.settings.batch_size
                or total + size > self.settings.batch_max_bytes
            ):
                yield batch
                batch, total = [], 0
            batch.append(uid)
            total += size
        if batch:
            yield batch

    def _batch(self, client: IMAPClient, uidvalidity: int, uids: Sequence[int]) -> int:
        started = time.monotonic()
        fetched = client.fetch(list(uids), [b"BODY.PEEK[]", b"INTERNALDATE"])
        now = datetime.now(UTC)
        batch: list[Fetched] = []
        for uid in uids:
            data = fetched.get(uid)
            if data is None:
                continue  # expunged since the search: nothing to publish
            raw = bytes(data.get(b"BODY[]") or b"")
            internal = data.get(b"INTERNALDATE")
            source = MailSource(
                mailbox=self.mailbox,
                uidvalidity=uidvalidity,
                uid=uid,
                internaldate=internal if isinstance(internal, datetime) else None,
                fetched_at=now,
            )
            batch.append(Fetched(source, raw, normalise(raw, source, self.config)))
        self._check()
        self.publisher.publish(batch)
        # Kafka has every record of the batch: now, and only now, acknowledge it.
        self.store.advance(self.key, uidvalidity=uidvalidity, last_uid=max(uids))
        self._account(batch)
        self._acknowledge(client, batch)  # \Seen is a courtesy; the checkpoint is the truth
        self.meter.processing("imap", time.monotonic() - started)
        return max(uids)

    def _acknowledge(self, client: IMAPClient, batch: Sequence[Fetched]) -> None:
        seen = [f.source.uid for f in batch]
        dead = [f.source.uid for f in batch if isinstance(f.outcome, DeadLetter)]
        if seen:
            client.add_flags(seen, [SEEN], silent=True)
        if dead:  # flagged, so a person looking at the mailbox finds them
            client.add_flags(dead, [FLAGGED], silent=True)

    def _account(self, batch: Sequence[Fetched]) -> None:
        """Count and log each mail of a batch Kafka has (published and dead letters are
        counted by the producer; ignored mail only here)."""
        for item in batch:
            outcome, uid = item.outcome, item.source.uid
            if isinstance(outcome, Publish):
                log.info(
                    "mail published",
                    extra=self._log(
                        uid=uid,
                        event_id=outcome.message.event_id,
                        conversation_key=outcome.message.conversation_key,
                        ticket_id=outcome.message.ticket_hint,
                    ),
                )
            elif isinstance(outcome, Ignore):
                self.meter.ignored(outcome.reason.value)
                log.info(
                    "automatic mail ignored",
                    extra=self._log(
                        uid=uid,
                        event_id=outcome.event_id,
                        message_id=outcome.message_id,
                        sender=outcome.sender,
                        reason=outcome.reason.value,
                    ),
                )
            else:
                self.meter.dead_letter(outcome.error_type)
                log.error(
                    "mail dead-lettered",
                    extra=self._log(
                        uid=uid,
                        event_id=outcome.event_id,
                        error=outcome.error[:300],
                        raw_ref=item.source.raw_ref,
                    ),
                )

    # --- waiting for new mail ----------------------------------------------------------

    def _idle(self, client: IMAPClient) -> None:
        """IDLE until new mail, a stop, or the renewal time; raises if the server left."""
        client.idle()
        started = time.monotonic()
        dropped = False
        try:
            while not self.stop.is_set():
                if time.monotonic() - started >= self.settings.idle_renew_s:
                    return  # re-issue IDLE before the server's inactivity timeout
                self._check()
                tick = time.monotonic()
                responses = client.idle_check(timeout=IDLE_TICK_S)
                if any(len(r) > 1 and r[0] == b"BYE" for r in responses):
                    dropped = True
                    raise ConnectionDropped("server said BYE")
                if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    return
                if not responses and time.monotonic() - tick < IDLE_TICK_S / 2:
                    # The socket was readable but held no line: the server closed it.
                    dropped = True
                    raise ConnectionDropped("connection closed while idling")
        finally:
            if not dropped:
                client.idle_done()

    def _poll(self, client: IMAPClient) -> None:
        """Without IDLE: wait the poll interval, then let the server report news (NOOP)."""
        deadline = time.monotonic() + self.settings.poll_interval_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            self._check()
            self.stop.wait(min(IDLE_TICK_S, max(0.0, deadline - time.monotonic())))
        client.noop()
