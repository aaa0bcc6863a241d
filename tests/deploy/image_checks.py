"""The image recipe (services/Dockerfile): small, non-root, pinned base, health check,
installed from uv.lock, and a build context that holds what it copies."""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.readers import REPO, SERVICES, service_names

DOCKERFILE = SERVICES / "Dockerfile"


def workspace_members() -> list[str]:
    import tomllib

    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = []
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        members += sorted(
            str(p.parent.relative_to(REPO)) for p in REPO.glob(f"{pattern}/pyproject.toml")
        )
    return members


def _ignore_regex(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern: Go's filepath.Match (`*` stays within a path element) plus `**`."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        elif glob[i] == "[" and "]" in glob[i:]:
            j = glob.index("]", i)
            out, i = out + glob[i : j + 1], j + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Whether a file reaches the build context: the last pattern matching it, or one of its
    parent directories, decides (`!` lets it in)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    allowed = True
    for pattern in patterns:
        regex = _ignore_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            allowed = pattern.startswith("!")
    return allowed


def dockerfile_problems(
    dockerfile: Path = DOCKERFILE, dockerignore: Path | None = None
) -> list[str]:
    """Small, non-root, pinned base, health check, built from the lock, context complete."""
    dockerignore = dockerignore or REPO / ".dockerignore"
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    where = dockerfile.name
    problems = []
    args: dict[str, str] = {}
    for ln in lines:
        if (m := re.match(r"ARG\s+(\w+)=(\S+)", ln)) is not None:
            args[m.group(1)] = m.group(2)
    stages = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    for i in stages:
        image = re.sub(
            r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), lines[i].split()[1]
        )
        if "@sha256:" not in image and not re.search(r":\d+\.\d+\.\d+[-\w.]*$", image):
            problems.append(
                f"{where}: base image {image} is not pinned to a full version or digest"
            )
        if "slim" not in image and "alpine" not in image and "distroless" not in image:
            problems.append(f"{where}: base image {image} is not a small (slim) variant")
    final = lines[stages[-1] :] if stages else lines
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in {"0", "root"}:
        problems.append(f"{where}: the final stage does not switch to a non-root USER")
    if not any(ln.upper().startswith("HEALTHCHECK ") for ln in final):
        problems.append(f"{where}: the final stage has no HEALTHCHECK")
    if not any("uv sync" in ln and "--frozen" in ln for ln in lines):
        problems.append(f"{where}: dependencies are not installed from uv.lock (uv sync --frozen)")
    copied = {
        src
        for ln in lines
        if ln.upper().startswith("COPY ") and "--from=" not in ln
        for src in ln.split()[1:-1]
        if not src.startswith("--")
    }
    for member in workspace_members():
        if f"{member}/pyproject.toml" not in copied:
            problems.append(f"{where}: the manifest of workspace member {member} is not copied")
    patterns = [
        ln.strip()
        for ln in dockerignore.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for src in sorted(copied):
        for service in service_names() if "${SERVICE}" in src else [""]:
            path = src.replace("${SERVICE}", service)
            local = REPO / path
            files = [local] if local.is_file() else [f for f in local.rglob("*") if f.is_file()]
            if not files:
                problems.append(f"{where}: COPY {path}: no such file in the repository")
            elif not any(dockerignore_allows(str(f.relative_to(REPO)), patterns) for f in files):
                problems.append(f"{where}: COPY {path}: .dockerignore keeps it out of the context")
    return problems
