"""Reading a service's Prometheus `/metrics` in tests: samples, and sums over label subsets."""

from __future__ import annotations

import re

import httpx

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, dict[str, str], float]


def scrape(url: str) -> str:
    """The text of `<url>/metrics`."""
    return httpx.get(f"{url}/metrics", timeout=10).text


def samples(text: str) -> list[Sample]:
    """Every sample of a metrics text: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        m = None if line.startswith("#") else _SAMPLE.match(line)
        if m is not None:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def value(found: list[Sample], name: str, /, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v for n, ls, v in found if n == name and all(ls.get(k) == w for k, w in labels.items())
    )


def families(text: str) -> set[str]:
    """The metric families a metrics text declares (its `# TYPE` lines), by family name
    (a counter's without its `_total`, as prometheus_client names the family)."""
    out = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            out.add(name.removesuffix("_total") if kind == "counter" else name)
    return out
