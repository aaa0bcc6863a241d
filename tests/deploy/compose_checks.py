"""deploy/compose: the compose file an operator starts, checked without a Docker engine.

The file is read with PyYAML and its `${...}` variables interpolated as compose does, with
the values an operator's `.env` would hold (`.env.example`, required values filled in).
Where the docker client with its compose plugin is installed, `docker compose config`
(which needs no engine) validates the file against compose's own schema as well.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.readers import (
    PLACEHOLDER_SECRET,
    REPO,
    TOPICS,
    Source,
    consistency_problems,
    env_problems,
    image_parts,
    readers,
    runs_topics,
    settings_problems,
)

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
# Images compose may pull rather than build here: Apache Kafka's own image and the Docker
# Official Image of MongoDB.
OFFICIAL_IMAGES = frozenset({"apache/kafka", "mongo"})
CONDITIONS = frozenset({"service_healthy", "service_completed_successfully", "service_started"})


_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>(?:[^{}]|\{[^{}]*\})*))?\}"
    r"|\$(?P<bare>[A-Za-z_]\w*)"
)


class InterpolationError(ValueError):
    pass


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax: $VAR, ${VAR}, ${VAR:-default}, ${VAR:?error}, ${VAR:+alt}, $$."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        present = name in env
        filled = present and env[name] != ""
        if op in {":-", "-"}:
            return env[name] if (filled if op == ":-" else present) else interpolate(arg, env)
        if op in {":?", "?"}:
            if not (filled if op == ":?" else present):
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return env[name]
        if op in {":+", "+"}:
            return interpolate(arg, env) if (filled if op == ":+" else present) else ""
        return env.get(name, "")

    return _VAR.sub(one, value)


def compose_variables(text: str) -> dict[str, bool]:
    """The variables a compose file refers to, each with whether it is required (`:?`)."""
    found: dict[str, bool] = {}
    for m in _VAR.finditer(text):
        name = m.group("name") or m.group("bare")
        if name:
            found[name] = found.get(name, False) or (m.group("op") or "").endswith("?")
    return found


def read_env_example(path: Path) -> tuple[dict[str, str], set[str]]:
    """`.env.example`: its active entries (to fill in) and every name it documents."""
    active, documented = {}, set()
    for line in path.read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            documented.add(m.group(2))
            if not m.group(1):
                active[m.group(2)] = m.group(3)
    return active, documented


def example_env(env_example: Path) -> dict[str, str]:
    """What an operator's .env would hold: every empty required value filled in."""
    active, _ = read_env_example(env_example)
    return {k: v or PLACEHOLDER_SECRET for k, v in active.items()}


def _walk(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [_walk(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, env) for k, v in value.items()}
    return value


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's `environment:`, mapping or list form (None: passed through from the shell)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).partition("=") for item in env)
        return {key: value if sep else None for key, sep, value in pairs}
    return {k: None if v is None else str(v) for k, v in env.items()}


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return result.returncode == 0


def docker_compose_config(compose: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """`docker compose config` (needs the client only, no engine) with exactly this env."""
    with tempfile.NamedTemporaryFile("w", suffix=".env") as env_file:
        env_file.write("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.flush()
        command = ["docker", "compose", "--env-file", env_file.name, "-f", str(compose)]
        result = subprocess.run(
            [*command, "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")},
        )
    return result.returncode, result.stdout if result.returncode == 0 else result.stderr.strip()


def load_compose(compose: Path, env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The file as written (anchors merged) and with its variables interpolated."""
    raw = yaml.safe_load(compose.read_text())
    if not isinstance(raw, dict):
        raise ValueError("not a mapping")
    return raw, _walk(raw, env)


@dataclass
class Compose:
    """The compose file as written (anchors merged) and as compose reads it (interpolated)."""

    path: Path
    raw: dict[str, Any]
    model: dict[str, Any]

    @property
    def services(self) -> dict[str, Any]:
        return dict(self.model.get("services") or {})

    @functools.cached_property
    def one_shot(self) -> set[str]:
        """Services that run once (restart: "no"), like the topic bootstrap."""
        return {
            name
            for name, svc in self.services.items()
            if str(svc.get("restart", "")).lower() in {"no", "false"}
        }


def compose_problems(
    compose: Path = COMPOSE_FILE,
    env_example: Path | None = None,
    *,
    use_docker: bool | None = None,
) -> list[str]:
    """The compose file parses, builds or pulls only what it may, starts in a sound order,
    and gives every deskstream service the variables it reads (and none it does not)."""
    env_example = env_example or compose.parent / ".env.example"
    where = compose.name
    problems = []
    active, documented = read_env_example(env_example)
    for name, required in sorted(compose_variables(compose.read_text()).items()):
        if name not in documented:
            problems.append(f"{where}: ${{{name}}} is not documented in {env_example.name}")
        elif required and name not in active:
            problems.append(f"{where}: {name} is required but commented out in {env_example.name}")
    env = example_env(env_example)
    try:
        raw, model = load_compose(compose, env)
    except (yaml.YAMLError, InterpolationError, ValueError) as exc:
        return [*problems, f"{where}: does not load: {exc}"]
    file = Compose(compose, raw, model)
    if not file.services:
        return [*problems, f"{where}: no services"]
    started: dict[str, dict[str, str]] = {}
    for name, svc in file.services.items():
        at = f"{where}: service {name}"
        problems += _image_problems(at, file, svc)
        problems += _order_problems(at, file, name, svc)
        problems += _env_problems(at, file, name, svc, started)
    problems += consistency_problems(where, started)
    if use_docker or (use_docker is None and docker_compose_available()):
        rc, out = docker_compose_config(compose, env)
        if rc != 0:
            problems.append(f"{where}: docker compose config: {out}")
    return problems


def _build_target(svc: dict[str, Any]) -> str | None:
    """The service an image is built for (the SERVICE build argument of services/Dockerfile)."""
    build = svc.get("build")
    if not isinstance(build, dict):
        return None
    target = (build.get("args") or {}).get("SERVICE")
    return None if target is None else str(target)


def _image_problems(at: str, file: Compose, svc: dict[str, Any]) -> list[str]:
    """Built from this repository's Dockerfile, or an official image; a fixed tag either way."""
    image = svc.get("image")
    if not image:
        return [f"{at}: no image"]
    problems = []
    repo, tag = image_parts(str(image))
    build = svc.get("build")
    if build is not None:
        build = {"context": build} if isinstance(build, str) else build
        context = (file.path.parent / str(build.get("context", "."))).resolve()
        dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
        if not dockerfile.is_file():
            problems.append(f"{at}: no Dockerfile at {dockerfile}")
        target = _build_target(svc)
        if target is not None:
            if not (context / "services" / target / "pyproject.toml").is_file():
                problems.append(
                    f"{at}: build argument SERVICE={target} is no folder under services/"
                )
            if repo.rsplit("/", 1)[-1] != target:
                problems.append(f"{at}: image {image} is built from services/{target}")
    elif repo not in OFFICIAL_IMAGES:
        problems.append(
            f"{at}: image {image} is neither built from this repository nor an official "
            f"image ({', '.join(sorted(OFFICIAL_IMAGES))})"
        )
    if tag in {None, "latest"}:
        problems.append(f"{at}: image {image} has no fixed tag")
    return problems


def _healthcheck(svc: dict[str, Any]) -> str | None:
    """The healthcheck's command line, if the service has one that runs."""
    check = svc.get("healthcheck") or {}
    if not check.get("test") or check.get("disable"):
        return None
    return " ".join(map(str, check["test"]))


def _order_problems(at: str, file: Compose, name: str, svc: dict[str, Any]) -> list[str]:
    """Healthchecks, `depends_on` with conditions that can be met, declared volumes."""
    problems = []
    if name not in file.one_shot and _healthcheck(svc) is None:
        problems.append(
            f'{at}: no healthcheck (only one-shot services, restart: "no", may lack one)'
        )
    depends = svc.get("depends_on") or {}
    if isinstance(depends, list):
        problems += [f"{at}: depends on {d} without a condition" for d in depends]
        depends = {}
    for dep, spec in depends.items():
        condition = (spec or {}).get("condition")
        if dep not in file.services:
            problems.append(f"{at}: depends on {dep}, an undefined service")
        elif condition is None:
            problems.append(f"{at}: depends on {dep} without a condition")
        elif condition == "service_healthy" and _healthcheck(file.services[dep]) is None:
            problems.append(f"{at}: waits for {dep} to be healthy, but {dep} has no healthcheck")
        elif condition == "service_completed_successfully" and dep not in file.one_shot:
            problems.append(f"{at}: waits for {dep} to complete, but {dep} restarts")
        elif condition not in CONDITIONS:
            problems.append(f"{at}: depends on {dep} with unknown condition {condition}")
    declared = set(file.model.get("volumes") or {})
    for volume in svc.get("volumes") or []:
        source = str(volume).split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
        if source and not source.startswith((".", "/", "~")) and source not in declared:
            problems.append(f"{at}: volume {source} is not declared under volumes:")
    return problems


def _env_problems(
    at: str, file: Compose, name: str, svc: dict[str, Any], started: dict[str, dict[str, str]]
) -> list[str]:
    """The deskstream program's variables: coverage, secrets, values, the probed port."""
    if "env_file" in svc:
        return [f"{at}: env_file hides the environment from this check; use environment:"]
    program = TOPICS if runs_topics(svc.get("entrypoint") or svc.get("command")) else None
    program = program or _build_target(svc)
    if program is None:
        return []  # Kafka and MongoDB: configured by their own images' variables
    reader = readers().get(program)
    if reader is None:
        return [f"{at}: runs {program}, which is no service of this repository"]
    written = _environment(file.raw["services"][name])
    resolved = {k: v for k, v in _environment(svc).items() if v is not None}
    sources = {
        k: Source(
            "interpolated" if "${" in (written.get(k) or "") else "value",
            v,
            origin="the compose file",
        )
        for k, v in resolved.items()
    }
    problems = env_problems(at, reader, sources)
    env = {k: v for k, v in resolved.items() if v != ""}  # empty counts as unset
    problems += settings_problems(at, reader, env)
    started[name] = env
    port, check = reader.http_port(env), _healthcheck(svc)
    if port is not None and check is not None and f":{port}/" not in check:
        problems.append(f"{at}: the healthcheck does not probe the service's port {port}")
    return problems
