"""What each program of a deployment reads from its environment, derived from the code.

A service's variables come from its pydantic settings class (env prefix, aliases, nested
delimiter); the topic bootstrap's from what `deskstream.topics.main` takes from
`os.environ`. The deployment checks (compose_checks, k8s_checks) hold each container's
environment against them: every variable a service needs is set, nothing is set that
nobody reads (a typo), secrets come from a secret store, and the settings class accepts
the values.

Every `*_problems` function of tests/deploy returns a list of problems, one string each
naming the file or resource and what is wrong; an empty list means valid.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from pydantic import BaseModel, SecretStr, ValidationError

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "services"
# Stands in for every secret a check has to fill in (long enough for the services' rules).
PLACEHOLDER_SECRET = "placeholder-secret-0123456789abcdef"
TOPICS = "topics"  # the topic bootstrap (`python -m deskstream.topics`), a reader of its own

# Settings every deployment states although they have defaults: where the topics are, how
# much to log, where to listen, which database.
DEPLOY_ALWAYS = frozenset(
    {"topic_prefix", "log_level", "http_host", "http_port", "mongodb_database"}
)
# Per service, the optional settings an operator decides on (mail servers, channels).
DEPLOY_FIELDS: dict[str, frozenset[str]] = {
    "ticket-api": frozenset({"publish_replies"}),
    "ingest-chat": frozenset({"slack_channels", "webhook_reply_url"}),
    "router": frozenset(),
    "ingest-email": frozenset(
        {
            "imap_port",
            "imap_ssl",
            "imap_user",
            "imap_folder",
            "mailboxes",
            "desk_addresses",
            "allowed_list_ids",
            "smtp_port",
            "smtp_starttls",
            "smtp_user",
            "reply_from",
        }
    ),
    "ingest-social": frozenset({"x_user_id", "x_username"}),
}


@dataclass(frozen=True)
class Setting:
    env: str  # the variable an operator sets
    field: str
    required: bool  # no default: the service does not start without it
    secret: bool  # SecretStr: from a Secret / the environment, never written into a file
    deploy: bool  # a deployment must set it (required, secret, or an operator's decision)


@dataclass(frozen=True)
class Reader:
    """A program in an image and the environment variables it reads."""

    name: str
    settings: dict[str, Setting]  # every variable it reads (alias choices included)
    settings_class: type[Any] | None = None

    @property
    def reads(self) -> frozenset[str]:
        return frozenset(self.settings)

    @property
    def must_set(self) -> frozenset[str]:
        return frozenset(s.env for s in self.settings.values() if s.deploy)

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(s.env for s in self.settings.values() if s.secret)

    def http_port(self, env: Mapping[str, str]) -> int | None:
        """The port the service listens on with this environment."""
        for s in self.settings.values():
            if s.field == "http_port" and self.settings_class is not None:
                value = env.get(s.env) or self.settings_class.model_fields["http_port"].default
                return int(value)
        return None


def service_names() -> list[str]:
    return sorted(p.parent.name for p in SERVICES.glob("*/pyproject.toml"))


def _default_value(info: Any) -> Any:
    value = info.get_default(call_default_factory=False)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def settings_env(cls: type[Any], service: str = "") -> dict[str, Setting]:
    """Every environment variable a pydantic-settings class reads, with how it matters."""
    config = cls.model_config
    prefix = str(config.get("env_prefix", ""))
    delimiter = config.get("env_nested_delimiter")
    extra = DEPLOY_FIELDS.get(service, frozenset())
    found: dict[str, Setting] = {}
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", [alias]) if alias is not None else [prefix + name]
        names = [c.upper() for c in choices if isinstance(c, str)]
        if not names:
            continue
        default = _default_value(info)
        local = isinstance(default, str) and ("127.0.0.1" in default or "localhost" in default)
        secret = "SecretStr" in str(info.annotation)
        required = info.is_required()
        setting = Setting(
            env=names[0],
            field=name,
            required=required,
            secret=secret,
            deploy=required or secret or local or name in DEPLOY_ALWAYS or name in extra,
        )
        for env in names:
            found[env] = setting
            annotation = info.annotation
            if delimiter and isinstance(annotation, type) and issubclass(annotation, BaseModel):
                for sub in _nested(annotation, f"{env}{delimiter}".upper(), str(delimiter)):
                    found[sub] = Setting(sub, name, False, secret, False)
    return found


def _nested(model: type[BaseModel], prefix: str, delimiter: str) -> Iterator[str]:
    for name, info in model.model_fields.items():
        yield f"{prefix}{name}".upper()
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _nested(annotation, f"{prefix}{name}{delimiter}".upper(), delimiter)


def _topics_reader() -> Reader:
    import deskstream.topics

    names = re.findall(
        r"os\.environ\.get\(\s*\"([A-Z0-9_]+)\"", inspect.getsource(deskstream.topics.main)
    )
    return Reader(TOPICS, {n: Setting(n, n.lower(), False, False, True) for n in names})


@functools.cache
def readers() -> dict[str, Reader]:
    """Every program the deployments run: the five services and the topic bootstrap."""
    from services.image import settings_class

    found = {TOPICS: _topics_reader()}
    for service in service_names():
        cls = settings_class(service)
        found[service] = Reader(service, settings_env(cls, service), cls)
    return found


def settings_problems(where: str, reader: Reader, env: Mapping[str, str]) -> list[str]:
    """Whether the service's settings class accepts this environment (types, validators)."""
    if reader.settings_class is None:
        return []
    with mock.patch.dict(os.environ, dict(env), clear=True):
        try:
            reader.settings_class()
        except (ValidationError, ValueError) as exc:
            return [f"{where}: {reader.name} refuses these settings: {exc}"]
    return []


@dataclass(frozen=True)
class Source:
    """Where a container's variable comes from."""

    kind: str  # "value" (written in the file), "config" (a ConfigMap), "secret", "field"
    value: str | None = None
    explicit: bool = True  # named for this container (not imported wholesale by envFrom)
    optional: bool = False  # an optional secretKeyRef: unset until the key exists
    origin: str = ""


def env_problems(where: str, reader: Reader, env: Mapping[str, Source]) -> list[str]:
    """Every variable the reader needs is set; nothing set is unread; secrets stay secret."""
    problems = [
        f"{where}: {name} is not set ({reader.name} reads it)"
        for name in sorted(reader.must_set - set(env))
    ]
    for name, source in sorted(env.items()):
        if source.explicit and name not in reader.reads:
            problems.append(f"{where}: {name} is set but {reader.name} reads no such variable")
        setting = reader.settings.get(name)
        if setting is None:
            continue
        if setting.secret and source.kind not in {"secret", "interpolated"}:
            problems.append(
                f"{where}: {name} is a secret and must come from a Secret or the environment, "
                f"not from {source.origin or source.kind}"
            )
        if setting.required and source.optional:
            problems.append(f"{where}: {name} is required; its secretKeyRef must not be optional")
    return problems


def effective_env(env: Mapping[str, Source]) -> dict[str, str]:
    """The environment a container starts with: placeholders for the secrets it must have."""
    values = {}
    for name, source in env.items():
        if source.kind == "secret":
            if not source.optional:
                values[name] = PLACEHOLDER_SECRET
        elif source.value is not None:
            values[name] = source.value
    return values


def consistency_problems(where: str, values: dict[str, dict[str, str]]) -> list[str]:
    """Every program of one deployment agrees on the Kafka cluster and the topic prefix."""
    problems = []
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DESKSTREAM_TOPIC_PREFIX"):
        seen = {env.get(name) for env in values.values() if name in env}
        if len(seen) > 1:
            problems.append(f"{where}: {name} differs between services: {sorted(map(str, seen))}")
    return problems


def image_parts(image: str) -> tuple[str, str | None]:
    """Repository and tag (or digest) of an image reference."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, None


def runs_topics(command: Any) -> bool:
    """Whether a container's command is the topic bootstrap."""
    return "deskstream.topics" in " ".join(map(str, command or []))
