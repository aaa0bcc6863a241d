"""deploy/compose: the file a Docker host starts from, checked without a Docker engine."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import compose_checks as checks
from tests.deploy.readers import SERVICES


def test_compose_file_is_valid() -> None:
    assert checks.compose_problems() == []


@pytest.mark.skipif(not checks.docker_compose_available(), reason="no docker compose client")
def test_our_reading_of_the_compose_file_is_docker_compose_s() -> None:
    """The interpolation in checks.py gives each service the environment compose gives it."""
    env = checks.example_env(checks.COMPOSE_DIR / ".env.example")
    rc, out = checks.docker_compose_config(checks.COMPOSE_FILE, env)
    assert rc == 0, out
    theirs = yaml.safe_load(out)["services"]
    _, ours = checks.load_compose(checks.COMPOSE_FILE, env)
    for name, service in ours["services"].items():
        mine = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        assert mine == {k: str(v) for k, v in (theirs[name].get("environment") or {}).items()}


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert checks.interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $SET $$SET", env) == (
        "x d  d x $SET"
    )
    assert checks.interpolate("${SET:+alt}${EMPTY:+alt}", env) == "alt"
    with pytest.raises(checks.InterpolationError, match="EMPTY"):
        checks.interpolate("${EMPTY:?say so}", env)


def _copy(tmp_path: Path) -> Path:
    """deploy/compose in a scratch tree whose services/ is the repository's."""
    target = tmp_path / "deploy" / "compose"
    shutil.copytree(checks.COMPOSE_DIR, target, ignore=shutil.ignore_patterns(".env"))
    (tmp_path / "services").symlink_to(SERVICES)
    return target / "docker-compose.yml"


def _edit(compose: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(compose.read_text())
    edit(data)
    compose.write_text(yaml.safe_dump(data, sort_keys=False))


Edit = Callable[[dict[str, Any]], None]
BROKEN: dict[str, tuple[Edit, str]] = {
    "an image from elsewhere": (
        lambda d: d["services"]["kafka"].update(image="bitnami/kafka:4.0"),
        "neither built from this repository nor an official image",
    ),
    "a floating tag": (
        lambda d: d["services"]["mongo"].update(image="mongo:latest"),
        "has no fixed tag",
    ),
    "a missing Dockerfile": (
        lambda d: d["services"]["router"]["build"].update(dockerfile="services/router/Dockerfile"),
        "no Dockerfile",
    ),
    "a service that does not exist": (
        lambda d: d["services"]["router"]["build"]["args"].update(SERVICE="routr"),
        "SERVICE=routr is no folder",
    ),
    "a dependency on an undefined service": (
        lambda d: d["services"]["router"]["depends_on"].update(
            kafak={"condition": "service_healthy"}
        ),
        "kafak, an undefined service",
    ),
    "a dependency without a condition": (
        lambda d: d["services"]["router"].update(depends_on=["kafka", "topics"]),
        "depends on kafka without a condition",
    ),
    "no healthcheck": (
        lambda d: d["services"]["ingest-chat"].pop("healthcheck"),
        "service ingest-chat: no healthcheck",
    ),
    "a required variable dropped": (
        lambda d: d["services"]["ticket-api"]["environment"].pop("TICKET_API_ADMIN_API_KEY"),
        "TICKET_API_ADMIN_API_KEY is not set",
    ),
    "a variable no service reads": (
        lambda d: d["services"]["ingest-email"]["environment"].update(IMAP_HOTS="imap"),
        "IMAP_HOTS is set but ingest-email reads no such variable",
    ),
    "a secret written into the file": (
        lambda d: d["services"]["ticket-api"]["environment"].update(
            TICKET_API_ADMIN_API_KEY="0123456789abcdef0123456789abcdef"
        ),
        "TICKET_API_ADMIN_API_KEY is a secret",
    ),
    "a value the service refuses": (
        lambda d: d["services"]["ingest-email"]["environment"].update(IMAP_PORT="imaps"),
        "ingest-email refuses these settings",
    ),
    "a healthcheck on the wrong port": (
        lambda d: d["services"]["router"]["environment"].update(ROUTER_HTTP_PORT="9000"),
        "does not probe the service's port 9000",
    ),
    "an undeclared volume": (
        lambda d: d["services"]["kafka"].update(volumes=["kafka-logs:/var/lib/kafka/data"]),
        "volume kafka-logs is not declared",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_compose_file_is_reported(tmp_path: Path, case: str) -> None:
    edit, expected = BROKEN[case]
    compose = _copy(tmp_path)
    _edit(compose, edit)
    problems = checks.compose_problems(compose, use_docker=False)
    assert any(expected in p for p in problems), problems


def test_an_unparsable_compose_file_is_reported(tmp_path: Path) -> None:
    compose = _copy(tmp_path)
    compose.write_text(compose.read_text().replace("services:\n", "services:\n  - [\n", 1))
    assert any("does not load" in p for p in checks.compose_problems(compose, use_docker=False))


def test_a_required_variable_missing_from_env_example_is_reported(tmp_path: Path) -> None:
    compose = _copy(tmp_path)
    example = compose.parent / ".env.example"
    example.write_text(example.read_text().replace("\nIMAP_HOST=\n", "\n# IMAP_HOST=\n"))
    problems = checks.compose_problems(compose, use_docker=False)
    assert any("IMAP_HOST is required but commented out" in p for p in problems), problems


@pytest.mark.skipif(not checks.docker_compose_available(), reason="no docker compose client")
def test_docker_compose_own_validation_runs_too(tmp_path: Path) -> None:
    """What only compose knows (its schema): an unknown key in a service."""
    compose = _copy(tmp_path)
    _edit(compose, lambda d: d["services"]["router"].update(restart_policy="always"))
    problems = checks.compose_problems(compose)
    assert any("docker compose config" in p and "restart_policy" in p for p in problems), problems
