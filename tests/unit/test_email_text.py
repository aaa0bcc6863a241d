"""The text of a mail: quotes stripped where quotequail does not see them, HTML made text,
charsets decoded whatever they are called."""

from __future__ import annotations

import pytest
from deskstream_ingest_email.html_text import html_to_text
from deskstream_ingest_email.parse import decode_bytes
from deskstream_ingest_email.quotes import split_reply

OLD = "\n\nHello Raj,\nyour request has been logged.\n"


@pytest.mark.parametrize(
    ("quote", "lang"),
    [
        (
            "From: IT Service Desk <noreply@desk.example.com>\n"
            "Sent: Monday, March 4, 2024 10:07 AM\nTo: Raj Patel\nSubject: VPN",
            "Outlook header block without a separator",
        ),
        (
            "______________________\nFrom: IT Service Desk <noreply@desk.example.com>\n"
            "Sent: Monday\nTo: Raj\nSubject: VPN",
            "a short OWA separator",
        ),
        (
            "Von: IT Service Desk <noreply@desk.example.com>\n"
            "Gesendet: Montag, 4. März 2024 10:07\nAn: Raj\nBetreff: VPN",
            "German Outlook",
        ),
        (
            "*From:* IT Service Desk <noreply@desk.example.com>\n"
            "*Sent:* Monday, March 4, 2024 10:07 AM\n*To:* Raj",
            "bold headers of an HTML quote made text",
        ),
        ("-----Original Message----- \nFrom: X\nSent: Y", "separator with trailing blanks"),
        ("----- Ursprüngliche Nachricht -----\nVon: X", "German separator"),
        ("On Mon, 4 Mar 2024 at 10:05, Raj <raj@example.net> wrote:\n> old", "Gmail"),
    ],
)
def test_quoted_mail_is_cut_from_the_new_text(quote: str, lang: str) -> None:
    new, found = split_reply("Thanks, it works again.\n\nRaj\n\n" + quote + OLD)
    assert found, lang
    assert new == "Thanks, it works again.\n\nRaj"


def test_lines_that_only_look_like_headers_are_not_a_quote() -> None:
    text = "Hello\n\nFrom: the 3rd floor I cannot print.\nSent: twice, no answer.\nThanks"
    assert split_reply(text) == (text, False)


def test_a_long_report_is_not_cut_at_quotequails_line_limit() -> None:
    text = "\n".join(f"log line {i}" for i in range(3000))
    assert split_reply(text) == (text, False)


def test_html_becomes_readable_text_with_quotes_marked() -> None:
    html = (
        "<html><head><style>p{color:red}</style><title>x</title></head><body>"
        "<p>Hi&nbsp;team,</p><p>the <b>VPN</b> drops.<br>Every day.</p>"
        "<ul><li>Laptop LT-2291</li><li>Windows 11</li></ul>"
        "<table><tr><td>Asset</td><td>DK-40917</td></tr></table>"
        '<div class="gmail_quote">On Mon, Raj wrote:<blockquote>old text</blockquote></div>'
        "<script>alert(1)</script></body></html>"
    )
    text = html_to_text(html)
    assert "color:red" not in text
    assert "alert" not in text
    assert "Hi team," in text
    assert "the VPN drops.\nEvery day." in text
    assert "- Laptop LT-2291\n- Windows 11" in text
    assert "Asset DK-40917" in text
    assert "> old text" in text
    new, found = split_reply(text)
    assert found
    assert "old text" not in new


@pytest.mark.parametrize(
    ("data", "charset", "expected"),
    [
        ("手机".encode("gbk"), "gb2312", "手机"),  # GBK bytes labelled gb2312 (Foxmail)
        ("表ソ".encode("cp932"), "shift_jis", "表ソ"),
        (b"\x93quoted\x94 \x80", "iso-8859-1", "\u201cquoted\u201d \u20ac"),  # as browsers do
        (b"Gr\xfc\xdfe", "x-unknown-8bit-foo", "Gr\ufffd\ufffde"),
        (b"plain", None, "plain"),
        (b"caf\xc3\xa9", '"UTF-8"', "café"),
        (b"C:\\new\\x41", "unicode_escape", "C:\\new\\x41"),  # escapes stay text
        (b"C:\\new", "raw-unicode-escape", "C:\\new"),
    ],
)
def test_charsets_decode_with_aliases_and_replacement(
    data: bytes, charset: str | None, expected: str
) -> None:
    assert decode_bytes(data, charset) == expected


def test_a_huge_mail_still_fits_one_kafka_record() -> None:
    from datetime import UTC, datetime
    from email.message import EmailMessage

    from deskstream_ingest_email.classify import ClassifyContext
    from deskstream_ingest_email.normalise import (
        MAX_RECORD_BYTES,
        TRUNCATED,
        MailSource,
        NormaliseConfig,
        Publish,
        normalise,
    )
    from deskstream_ingest_email.settings import Mailbox
    from pydantic import SecretStr

    msg = EmailMessage()
    msg["From"] = "maria@example.com"
    msg["Subject"] = "Full event log"
    msg["Message-ID"] = "<huge@example.com>"
    # ~4 MB, three bytes a character: even the capped fields are too big together.
    text = "".join(f"{i}: {'事件日志文本' * 10}\n" for i in range(50_000))
    msg.set_content(text)
    msg.add_alternative(f"<html><body><pre>{text}</pre></body></html>", subtype="html")
    mailbox = Mailbox(
        host="h", port=1, ssl=False, user="u", folder="INBOX", password=SecretStr("x"), address="a"
    )
    source = MailSource(mailbox, 1, 1, None, datetime.now(UTC))
    outcome = normalise(msg.as_bytes(), source, NormaliseConfig(1, ClassifyContext(())))
    assert isinstance(outcome, Publish)
    record = outcome.message
    assert len(record.model_dump_json().encode()) <= MAX_RECORD_BYTES
    assert record.html is None  # too big to keep whole
    assert record.text.startswith(f"0: {'事件日志文本' * 10}\n1: ")
    assert record.text.endswith(TRUNCATED)
    assert record.full_text is not None
    assert record.full_text.endswith(TRUNCATED)
    assert len(record.full_text) < len(record.text)  # the copy shrinks before the new text
