"""Every captured mail of tests/fixtures/email through the parser and the adapter, checked
against manifest.json (what a person decided each file must become)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from deskstream.ids import event_id
from deskstream_ingest_email.classify import ClassifyContext
from deskstream_ingest_email.normalise import (
    DeadLetter,
    Ignore,
    MailSource,
    NormaliseConfig,
    Outcome,
    Publish,
    normalise,
)
from deskstream_ingest_email.parse import normalise_message_id, parse
from deskstream_ingest_email.settings import Mailbox
from pydantic import SecretStr

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "email"
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text())
ENTRIES: dict[str, dict[str, Any]] = {e["file"]: e for e in MANIFEST["messages"]}
LIMIT = MANIFEST["attachment_size_limit_bytes"]
MAILBOX = Mailbox(
    host="imap.example.com",
    port=993,
    ssl=True,
    user="desk",
    folder="INBOX",
    password=SecretStr("not-used-by-the-adapter"),
    address="servicedesk@example.com",
)
CONFIG = NormaliseConfig(
    attachment_limit=LIMIT,
    classify=ClassifyContext(own_addresses=frozenset(MANIFEST["desk_addresses"])),
)
UIDVALIDITY = 1709500000
INTERNALDATE = datetime(2024, 3, 6, 12, 0, tzinfo=UTC)


def _source(file: str) -> MailSource:
    uid = list(ENTRIES).index(file) + 1
    return MailSource(MAILBOX, UIDVALIDITY, uid, INTERNALDATE, datetime.now(UTC))


def _outcome(file: str) -> Outcome:
    return normalise((CORPUS / file).read_bytes(), _source(file), CONFIG)


def _published(file: str) -> Publish:
    outcome = _outcome(file)
    assert isinstance(outcome, Publish), outcome
    return outcome


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_manifest_names_every_corpus_file() -> None:
    on_disk = {p.name for p in CORPUS.glob("*.eml")}
    assert on_disk == set(ENTRIES)


@pytest.mark.parametrize("file", list(ENTRIES))
def test_corpus_file_becomes_what_the_manifest_says(file: str) -> None:
    entry = ENTRIES[file]
    outcome = _outcome(file)
    expected = entry["outcome"]
    if expected == "deadletter":
        assert isinstance(outcome, DeadLetter), outcome
        assert outcome.event_id == _source(file).fallback_event_id
        return
    if expected == "ignored":
        assert isinstance(outcome, Ignore), outcome
        assert outcome.reason.value == entry["reason"]
        return
    assert isinstance(outcome, Publish), outcome
    msg = outcome.message
    assert msg.raw_ref == _source(file).raw_ref
    assert msg.raw_ref.startswith("imap://desk@imap.example.com:993/INBOX;UIDVALIDITY=")
    if expected == "duplicate":
        assert msg.event_id == _published(entry["duplicate_of"]).message.event_id
        return
    assert msg.subject == entry["subject"]
    assert _collapse(entry["body_contains"]) in _collapse(msg.text)
    if "body_not_contains" in entry:
        assert _collapse(entry["body_not_contains"]) not in _collapse(msg.text)
        assert _collapse(entry["body_not_contains"]) in _collapse(msg.full_text or "")
    if entry["message_id"] is None:
        assert msg.event_id == _source(file).fallback_event_id
    else:
        mid = normalise_message_id(entry["message_id"])
        assert mid is not None
        assert msg.event_id == event_id("email", MAILBOX.address, mid)


@pytest.mark.parametrize(
    "file", [f for f, e in ENTRIES.items() if e["outcome"] in {"ticket", "reply"}]
)
def test_corpus_attachments_charsets_and_defects(file: str) -> None:
    entry = ENTRIES[file]
    parsed = parse((CORPUS / file).read_bytes(), attachment_limit=LIMIT)
    if "attachments" in entry:
        assert len(parsed.attachments) == entry["attachments"]
        assert sum(a.omitted for a in parsed.attachments) == entry["omitted_over_limit"]
    names = entry.get("attachment_filenames")
    if names is not None:
        assert [a.filename for a in parsed.attachments] == names
    for name, size in entry.get("attachment_sizes", {}).items():
        (att,) = [a for a in parsed.attachments if a.filename == name]
        assert att.size == size
        assert att.omitted == (size > LIMIT)
        assert (att.sha256 is None) == att.omitted
    for cid in entry.get("inline_content_ids", []):
        (att,) = [a for a in parsed.attachments if a.content_id == cid]
        assert att.inline
    if entry.get("charset"):  # null where the stdlib finds no part (we repair: see 31)
        assert (parsed.charset or "").lower() == entry["charset"].lower()
    assert set(entry.get("expected_defects", [])) <= set(parsed.defects)
    if entry.get("body_part") == "html":
        assert parsed.html is not None
    if "forwarded_message_id" in entry:  # the forwarded mail is an attachment, not the body
        assert "Your mailbox storage is full" not in parsed.text


@pytest.mark.parametrize("file", [f for f, e in ENTRIES.items() if e["outcome"] == "reply"])
def test_replies_thread_to_their_original(file: str) -> None:
    entry = ENTRIES[file]
    reply = _published(file).message
    original = _published(entry["reply_to_file"]).message
    if entry["via"] == "subject-token":
        assert reply.ticket_hint == entry["ticket_token"]
        assert reply.conversation_key == f"ticket:{entry['ticket_token']}"
        assert reply.reply_to == []
    else:
        assert reply.ticket_hint is None
        assert reply.conversation_key == original.conversation_key
        original_mid = normalise_message_id(ENTRIES[entry["reply_to_file"]]["message_id"])
        assert original_mid in reply.reply_to
    unknown = entry.get("in_reply_to_unknown")
    if unknown:
        assert normalise_message_id(unknown) in reply.reply_to


def test_a_ticket_is_keyed_by_its_own_message_id() -> None:
    msg = _published("01-plain-thunderbird-account-locked.eml").message
    assert msg.conversation_key == normalise_message_id(
        ENTRIES["01-plain-thunderbird-account-locked.eml"]["message_id"]
    )
    assert msg.sender.id == "tomasz.nowak@example.com"
    assert msg.sender.display_name == "Tomasz Nowak"


def test_mail_without_message_id_is_keyed_by_its_event_id() -> None:
    msg = _published("33-no-message-id-scan-to-email.eml").message
    assert msg.conversation_key == msg.event_id


def test_unparseable_date_falls_back_to_the_imap_internaldate() -> None:
    msg = _published("34-unparseable-date-header.eml").message
    assert msg.received_at == INTERNALDATE
    ok = _published("01-plain-thunderbird-account-locked.eml").message
    assert ok.received_at != INTERNALDATE  # the Date header wins where it parses


def test_every_deadletter_file_is_refused_by_the_parser() -> None:
    refused = {f for f in ENTRIES if isinstance(_outcome(f), DeadLetter)}
    assert refused == {f for f, e in ENTRIES.items() if e["outcome"] == "deadletter"}
