"""Automatic mail is recognised by its headers, whatever else it looks like."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from deskstream_ingest_email.classify import ClassifyContext, IgnoreReason, classify

CTX = ClassifyContext(
    own_addresses=frozenset({"servicedesk@example.com", "noreply@desk.example.com"}),
    allowed_list_ids=frozenset({"it-escalations.example.com"}),
)


def _mail(sender: str = "maria@example.com", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "servicedesk@example.com"
    msg["Subject"] = "RE: [#DS-7K2M6QXA] VPN"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("text")
    return msg


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto_Submitted": "auto-generated"}, IgnoreReason.AUTO_REPLY),
        ({"Auto_Submitted": "Auto-Replied; owner-email=x@example.com"}, IgnoreReason.AUTO_REPLY),
        ({"X_Autorespond": "vacation"}, IgnoreReason.AUTO_REPLY),
        ({"X_Auto_Response_Suppress": "DR, OOF, AutoReply"}, IgnoreReason.AUTO_REPLY),
        ({"Precedence": "junk"}, IgnoreReason.BULK),
        ({"Precedence": "list"}, IgnoreReason.BULK),
        ({"List_Id": "Vendor news <news.vendor.example.org>"}, IgnoreReason.BULK),
        ({"X_Failed_Recipients": "gone@example.org"}, IgnoreReason.BOUNCE),
    ],
)
def test_automatic_mail_is_ignored_with_its_reason(
    headers: dict[str, str], reason: IgnoreReason
) -> None:
    assert classify(_mail(**headers), "maria@example.com", CTX) is reason


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto_Submitted": "no"},
        {"X_Auto_Response_Suppress": "DR, RN"},  # suppresses receipts only: a person wrote it
        {"List_Id": "IT escalations <IT-Escalations.example.com>", "Precedence": "list"},
        {},
    ],
)
def test_mail_from_people_is_not_ignored(headers: dict[str, str]) -> None:
    assert classify(_mail(**headers), "maria@example.com", CTX) is None


@pytest.mark.parametrize("sender", ["Postmaster@corp.example.org", "mailer-daemon@x.example"])
def test_daemon_senders_are_bounces(sender: str) -> None:
    assert classify(_mail(sender), sender.lower(), CTX) is IgnoreReason.BOUNCE


def test_own_addresses_are_loops_in_any_case_also_as_sender_header() -> None:
    assert classify(_mail(), "servicedesk@example.com", CTX) is IgnoreReason.LOOP
    msg = _mail(Sender="NoReply@Desk.Example.com")
    assert classify(msg, "maria@example.com", CTX) is IgnoreReason.LOOP


def test_a_read_receipt_is_automatic() -> None:
    msg = _mail()
    msg.make_mixed()
    msg.replace_header("Content-Type", 'multipart/report; report-type="disposition-notification"')
    assert classify(msg, "maria@example.com", CTX) is IgnoreReason.AUTO_REPLY
