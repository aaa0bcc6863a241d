"""ingest-social settings and the X client's base URL and rate-limit reading."""

from __future__ import annotations

import pytest
import requests
from deskstream_ingest_social.settings import IngestSocialSettings
from deskstream_ingest_social.xclient import RateLimit, RebasedSession, make_client
from pydantic import ValidationError

TOKEN = "a-long-enough-bearer-token-123"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INGEST_SOCIAL_X_BEARER_TOKEN", "INGEST_SOCIAL_X_CONSUMER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INGEST_SOCIAL_X_USER_ID", "1500000000000000001")


def test_a_token_is_required_and_a_weak_one_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="BEARER_TOKEN"):
        IngestSocialSettings()
    monkeypatch.setenv("INGEST_SOCIAL_X_BEARER_TOKEN", "secret")
    with pytest.raises(ValidationError, match="shorter than"):
        IngestSocialSettings()
    monkeypatch.setenv("INGEST_SOCIAL_X_BEARER_TOKEN", TOKEN)
    settings = IngestSocialSettings()
    assert settings.account_key == "x:1500000000000000001"
    assert not settings.x_user_auth
    assert TOKEN not in repr(settings)


def test_oauth1_needs_all_four_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_SOCIAL_X_CONSUMER_KEY", "consumer-key-0123456789")
    with pytest.raises(ValidationError, match="all four"):
        IngestSocialSettings()


def test_the_client_sends_tweepys_requests_to_the_base_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST_SOCIAL_X_BEARER_TOKEN", TOKEN)
    monkeypatch.setenv("INGEST_SOCIAL_X_API_BASE_URL", "http://127.0.0.1:9/x/")
    client = make_client(IngestSocialSettings())
    assert isinstance(client.session, RebasedSession)
    assert client.session.base_url == "http://127.0.0.1:9/x"
    # Nothing listens on port 9: the error names the rebased URL, not api.twitter.com.
    with pytest.raises(requests.ConnectionError, match=r"127\.0\.0\.1.*9"):
        client.get_users_mentions("1500000000000000001")


def test_rate_limit_waits_until_the_reset_with_a_cap() -> None:
    response = requests.Response()
    response.headers.update({"x-rate-limit-remaining": "0", "x-rate-limit-reset": "1000"})
    limit = RateLimit.of(response)
    assert (limit.remaining, limit.reset_at) == (0, 1000.0)
    assert limit.wait_s(990.0, cap=900) == 11.0  # one second of slack after the reset
    assert limit.wait_s(2000.0, cap=900) == 0.0
    assert limit.wait_s(0.0, cap=900) == 900
    assert RateLimit(None, None).wait_s(0.0, cap=900) == 60.0


def test_without_an_account_the_service_is_idle_not_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INGEST_SOCIAL_X_USER_ID")
    assert not IngestSocialSettings().x_enabled
    monkeypatch.setenv("INGEST_SOCIAL_X_BEARER_TOKEN", TOKEN)
    with pytest.raises(ValidationError, match="X_USER_ID is not"):
        IngestSocialSettings()
