"""ingest-chat's adapters and signatures without a network: what is accepted, what is not."""

from __future__ import annotations

import json
import time

import pytest
from deskstream.ids import event_id
from deskstream_ingest_chat import slack_events, webchat, webhook
from deskstream_ingest_chat.bodies import parse_json_object
from deskstream_ingest_chat.outcomes import Challenge, Ignored, Invalid, Publish
from deskstream_ingest_chat.settings import IngestChatSettings
from deskstream_ingest_chat.signing import (
    slack_valid,
    webhook_signature,
    webhook_valid,
)
from fastapi import HTTPException

from tests import slackapi

SECRET = "slack-signing-secret-0123456789abcdef"
CONFIG = slack_events.SlackConfig(channels={"C0SUPPORT01"}, bot_user_id=None, max_text_chars=10_000)


def _event(**changes: object) -> dict[str, object]:
    body = json.loads(
        slackapi.message_event(
            event_id="Ev01",
            channel="C0SUPPORT01",
            user="U0MARIA001",
            text="VPN is down",
            ts="1764061200.000100",
        )
    )
    body["event"].update(changes)
    return dict(body)


def test_slack_signature_good_bad_and_stale() -> None:
    body = b'{"type": "url_verification", "challenge": "abc"}'
    now = int(time.time())
    headers = slackapi.sign(SECRET, body, timestamp=now)
    ts, sig = headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    assert slack_valid(secret=SECRET, body=body, timestamp=ts, signature=sig)
    # One changed byte, another secret, no signature, a non-numeric timestamp.
    assert not slack_valid(secret=SECRET, body=body + b" ", timestamp=ts, signature=sig)
    assert not slack_valid(secret=SECRET + "x", body=body, timestamp=ts, signature=sig)
    assert not slack_valid(secret=SECRET, body=body, timestamp=ts, signature=None)
    assert not slack_valid(secret=SECRET, body=body, timestamp="12ab", signature=sig)
    # Signed correctly, but more than five minutes old (or ahead): a replay.
    old = slackapi.sign(SECRET, body, timestamp=now - 301)
    assert not slack_valid(
        secret=SECRET,
        body=body,
        timestamp=old["X-Slack-Request-Timestamp"],
        signature=old["X-Slack-Signature"],
    )
    assert slack_valid(
        secret=SECRET,
        body=body,
        timestamp=old["X-Slack-Request-Timestamp"],
        signature=old["X-Slack-Signature"],
        now=now - 200,
    )
    assert not slack_valid(secret=SECRET, body=b"\xff\xfe", timestamp=ts, signature=sig)


def test_webhook_signature_and_replay_window() -> None:
    body = b'{"text": "hi"}'
    ts = str(int(time.time()))
    sig = webhook_signature(secret=SECRET, body=body, timestamp=ts)
    assert sig.startswith("v1=")
    assert webhook_valid(secret=SECRET, body=body, timestamp=ts, signature=sig)
    tampered = sig[:-1] + ("1" if sig.endswith("0") else "0")  # one hex digit changed
    assert not webhook_valid(secret=SECRET, body=body, timestamp=ts, signature=tampered)
    assert not webhook_valid(secret=SECRET, body=body, timestamp=str(int(ts) + 1), signature=sig)
    assert not webhook_valid(
        secret=SECRET, body=body, timestamp=ts, signature=sig, now=int(ts) + 301
    )


def test_slack_message_becomes_a_chat_message_keyed_by_its_thread() -> None:
    outcome = slack_events.interpret(_event(thread_ts="1764061100.000001"), CONFIG)
    assert isinstance(outcome, Publish)
    msg = outcome.message
    assert msg.conversation_key == f"slack:{slackapi.TEAM}:C0SUPPORT01:1764061100.000001"
    assert msg.event_id == event_id("slack", slackapi.TEAM, "C0SUPPORT01", "1764061200.000100")
    assert (msg.sender.kind, msg.sender.id) == ("slack", f"{slackapi.TEAM}:U0MARIA001")
    assert msg.subject == "VPN is down"
    assert outcome.dedupe_key == "slack-event:Ev01"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"bot_id": "B0OTHER001"}, "bot"),
        ({"user": slackapi.BOT_USER}, "bot"),  # the app itself, named in authorizations
        ({"subtype": "message_changed"}, "subtype"),
        ({"subtype": "message_deleted"}, "subtype"),
        ({"channel": "C0RANDOM001"}, "support channel"),
        ({"type": "reaction_added"}, "event type"),
    ],
)
def test_slack_events_that_are_not_requests_are_ignored(
    changes: dict[str, object], reason: str
) -> None:
    outcome = slack_events.interpret(_event(**changes), CONFIG)
    assert isinstance(outcome, Ignored)
    assert reason in outcome.reason


def test_slack_direct_message_and_handshake() -> None:
    dm = slack_events.interpret(_event(channel="D0MARIA001", channel_type="im"), CONFIG)
    assert isinstance(dm, Publish)
    challenge = slack_events.interpret({"type": "url_verification", "challenge": "xyz"}, CONFIG)
    assert challenge == Challenge("xyz")
    with pytest.raises(Invalid, match="challenge"):
        slack_events.interpret({"type": "url_verification"}, CONFIG)
    with pytest.raises(Invalid, match="event_id"):
        slack_events.interpret({"type": "event_callback", "team_id": "T1", "event": {}}, CONFIG)


def test_webhook_payload_names_its_problems() -> None:
    with pytest.raises(Invalid, match="sender"):
        webhook.interpret(
            {"source": "zulip", "message_id": "1", "conversation_id": "c", "text": "hi"}, 100
        )
    with pytest.raises(Invalid, match="source"):
        webhook.interpret(
            {
                "source": "Not Valid",
                "message_id": "1",
                "conversation_id": "c",
                "sender": {"id": "u"},
                "text": "hi",
            },
            100,
        )
    ok = webhook.interpret(
        {
            "source": "zulip",
            "message_id": "1",
            "conversation_id": "a:b",
            "sender": {"id": "u"},
            "text": "  \n",
        },
        100,
    )
    assert ok.message.subject == "Message from zulip"
    assert webhook.parse_conversation_key(ok.message.conversation_key) == ("zulip", "a:b")


def test_web_chat_message_ids_and_limits() -> None:
    item = webchat.visitor_message(
        visitor_id="v" * 20,
        conversation_id="c" * 20,
        client_msg_id="m1",
        text="Hello",
        name="Maria",
        max_text_chars=10,
    )
    assert item.message.event_id == event_id("webchat", "c" * 20, "m1")
    assert item.message.conversation_key == "webchat:" + "c" * 20
    with pytest.raises(Invalid, match="longer"):
        webchat.visitor_message(
            visitor_id="v" * 20,
            conversation_id="c" * 20,
            client_msg_id="m2",
            text="x" * 11,
            name=None,
            max_text_chars=10,
        )
    assert webchat.valid_id("short") is None
    assert webchat.valid_id("a" * 16) == "a" * 16
    assert webchat.valid_id("../../etc/passwd-xx") is None


def test_settings_refuse_weak_secrets_and_keep_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_CHAT_SLACK_SIGNING_SECRET", "changeme")
    with pytest.raises(ValueError, match="INGEST_CHAT_SLACK_SIGNING_SECRET"):
        IngestChatSettings()
    monkeypatch.setenv("INGEST_CHAT_SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("INGEST_CHAT_WEBHOOK_SECRET", "short")
    with pytest.raises(ValueError, match="INGEST_CHAT_WEBHOOK_SECRET"):
        IngestChatSettings()
    monkeypatch.delenv("INGEST_CHAT_WEBHOOK_SECRET")
    monkeypatch.setenv("INGEST_CHAT_SLACK_CHANNELS", "C1, C2")
    monkeypatch.setenv("INGEST_CHAT_SLACK_API_BASE_URL", "http://127.0.0.1:9/api")
    settings = IngestChatSettings()
    assert settings.slack_channels == ["C1", "C2"]
    assert settings.slack_api_base_url == "http://127.0.0.1:9/api/"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"type": ', "malformed JSON"),
        (b"\xff\xfe{}", "malformed JSON"),
        (b"[" * 60_000, "malformed JSON"),  # nesting beyond the parser's depth: 400, not 500
        (b"[1, 2]", "JSON object"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_a_400(body: bytes, detail: str) -> None:
    with pytest.raises(HTTPException) as refused:
        parse_json_object(body)
    assert refused.value.status_code == 400
    assert detail in str(refused.value.detail)
