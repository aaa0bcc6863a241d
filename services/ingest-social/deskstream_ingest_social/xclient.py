"""The one place tweepy is pointed at an X API base URL, and where its answers are read.

tweepy 4.17 writes `https://api.twitter.com` into `BaseClient.request`, and passes no
timeout to requests. Its `Client` keeps a `requests.Session` (`client.session`), so a
session subclass that rewrites that host to the configured base URL and adds a timeout is
enough: every tweepy method, its authentication (bearer or OAuth 1.0a) and its mapping of
status codes to exceptions stay tweepy's own. The client returns the raw
`requests.Response` (`return_type`), because the rate-limit headers and the exact bytes of
each item (for dead letters) are needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests
import tweepy

from deskstream_ingest_social.settings import IngestSocialSettings

TWEEPY_HOST = "https://api.twitter.com"
# X sends these on every answer, a 429 included (epoch seconds for the reset).
RESET_HEADER = "x-rate-limit-reset"
REMAINING_HEADER = "x-rate-limit-remaining"


class RebasedSession(requests.Session):
    """Sends tweepy's requests to `base_url` instead of X's fixed host, with a timeout."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(url, str) and url.startswith(TWEEPY_HOST):
            url = self.base_url + url[len(TWEEPY_HOST) :]
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(method, url, *args, **kwargs)


def make_client(settings: IngestSocialSettings) -> tweepy.Client:
    def secret(value: Any) -> str | None:
        return None if value is None else str(value.get_secret_value())

    client = tweepy.Client(
        bearer_token=secret(settings.x_bearer_token),
        consumer_key=secret(settings.x_consumer_key),
        consumer_secret=secret(settings.x_consumer_secret),
        access_token=secret(settings.x_access_token),
        access_token_secret=secret(settings.x_access_token_secret),
        return_type=requests.Response,
        wait_on_rate_limit=False,  # waited out by the caller, interruptible by a stop
    )
    client.session = RebasedSession(settings.x_api_base_url, settings.x_request_timeout_s)
    return client


@dataclass(frozen=True)
class RateLimit:
    """What the last answer said about the endpoint's window."""

    remaining: int | None
    reset_at: float | None  # epoch seconds

    @classmethod
    def of(cls, response: requests.Response | None) -> RateLimit:
        headers = response.headers if response is not None else {}
        return cls(_int(headers.get(REMAINING_HEADER)), _float(headers.get(RESET_HEADER)))

    def wait_s(self, now: float | None = None, *, cap: float) -> float:
        """Seconds until the window resets (one second of slack), at most `cap`."""
        if self.reset_at is None:
            return min(60.0, cap)  # no reset given: a minute, X's own suggestion for 429s
        now = time.time() if now is None else now
        return max(0.0, min(self.reset_at - now + 1.0, cap))


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: rate limited, X's servers, or no connection at all."""
    return isinstance(
        exc, tweepy.TooManyRequests | tweepy.TwitterServerError | requests.RequestException
    )


def describe(exc: BaseException) -> str:
    """A short reason for logs and delivery results (never a token: tweepy puts none in)."""
    if isinstance(exc, tweepy.HTTPException):
        response = exc.response  # (a Response is falsy for 4xx/5xx: compare with None)
        if response is None:
            return f"X answered: {exc}"[:500]
        detail = "; ".join(str(m) for m in exc.api_messages) or response.reason
        return f"X answered {response.status_code}: {detail}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
