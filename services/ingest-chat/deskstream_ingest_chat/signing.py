"""Request signatures: Slack's v0 scheme and the generic webhook's v1 scheme (HMAC-SHA256).

Both sign `<version>:<timestamp>:<raw body>` with a shared secret and refuse timestamps
further than `max_age_s` from now, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from slack_sdk.signature import Clock, SignatureVerifier

WEBHOOK_TIMESTAMP = "X-Deskstream-Timestamp"
WEBHOOK_SIGNATURE = "X-Deskstream-Signature"


class _FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def _fresh(timestamp: str | None, max_age_s: int, now: float) -> bool:
    if timestamp is None or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(now - int(timestamp)) <= max_age_s


def slack_valid(
    *,
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    max_age_s: int = 300,
    now: float | None = None,
) -> bool:
    """True for a request Slack signed with `secret` within `max_age_s` of `now`."""
    now = time.time() if now is None else now
    if signature is None or not _fresh(timestamp, max_age_s, now):
        return False
    try:
        body.decode("utf-8")  # slack-sdk decodes the body; invalid UTF-8 is simply invalid
    except UnicodeDecodeError:
        return False
    # slack-sdk checks its own 5-minute window as well; ours (above) is the configured one.
    verifier = SignatureVerifier(secret, clock=_FixedClock(float(timestamp or 0)))
    return verifier.is_valid(body=body, timestamp=timestamp, signature=signature)


def webhook_signature(*, secret: str, body: bytes, timestamp: str) -> str:
    """`v1=` + hex HMAC-SHA256 of `v1:{timestamp}:{body}` (what a sender puts in the header)."""
    mac = hmac.new(secret.encode(), b"v1:" + timestamp.encode() + b":" + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def webhook_valid(
    *,
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    max_age_s: int = 300,
    now: float | None = None,
) -> bool:
    now = time.time() if now is None else now
    if signature is None or timestamp is None or not _fresh(timestamp, max_age_s, now):
        return False
    expected = webhook_signature(secret=secret, body=body, timestamp=timestamp)
    return hmac.compare_digest(expected, signature)
