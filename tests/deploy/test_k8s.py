"""deploy/k8s: every overlay renders with the pinned kustomize and validates against the
Kubernetes schemas, and carries what the schemas cannot see (env, probes, autoscaler...)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import k8s_checks as checks
from tests.deploy import readers


@functools.cache
def router_bound() -> int:
    return checks.router_partition_bound()[0]


def test_kustomize_is_the_pinned_version() -> None:
    out = subprocess.run([checks.kustomize(), "version"], capture_output=True, text=True)
    assert out.stdout.strip() == checks.KUSTOMIZE_VERSION
    makefile = (readers.REPO / "Makefile").read_text()
    assert f"KUSTOMIZE_VERSION := {checks.KUSTOMIZE_VERSION}" in makefile


@pytest.mark.parametrize("overlay", checks.OVERLAYS)
def test_overlay_is_valid(overlay: str) -> None:
    problems = checks.k8s_problems(
        checks.K8S / "overlays" / overlay, router_max_replicas=router_bound()
    )
    assert problems == []


def test_router_autoscaler_reaches_the_partition_count_in_prod() -> None:
    """Faust gives each partition to one worker: more workers than the partitions of the
    router's input topics would idle, fewer than that cap the router's throughput."""
    bound, partitions = checks.router_partition_bound()
    assert bound == max(partitions.values())
    assert "tickets.events" in partitions
    resources, error = checks.kustomize_build(checks.K8S / "overlays" / "prod")
    assert not error
    (hpa,) = [r for r in resources if r["kind"] == "HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, bound)


def test_deploy_fields_name_real_settings() -> None:
    """The optional settings a deployment must state exist (no stale names)."""
    for service, fields in readers.DEPLOY_FIELDS.items():
        cls = readers.readers()[service].settings_class
        assert cls is not None
        assert fields <= set(cls.model_fields), service
    assert set(readers.DEPLOY_FIELDS) == set(readers.service_names())
    assert readers.readers()[readers.TOPICS].reads == {
        "KAFKA_BOOTSTRAP_SERVERS",
        "DESKSTREAM_TOPIC_PREFIX",
    }


Edit = Callable[[list[dict[str, Any]]], object]


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(checks.K8S, tmp_path / "k8s")
    return tmp_path / "k8s"


def _edit(path: Path, edit: Edit) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    edit(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _container(docs: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    (workload,) = [d for d in docs if d["kind"] == kind]
    container: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(container: dict[str, Any], name: str) -> dict[str, Any]:
    (item,) = [e for e in container["env"] if e["name"] == name]
    assert isinstance(item, dict)
    return item


def _literals(
    name: str, edit: Callable[[list[str]], None]
) -> Callable[[list[dict[str, Any]]], None]:
    def apply(docs: list[dict[str, Any]]) -> None:
        (generator,) = [g for g in docs[0]["configMapGenerator"] if g["name"] == name]
        edit(generator["literals"])

    return apply


def _set(literals: list[str], literal: str) -> None:
    key = literal.split("=", 1)[0] + "="
    literals[:] = [item for item in literals if not item.startswith(key)] + [literal]


def _policy(
    name: str, edit: Callable[[dict[str, Any]], None]
) -> Callable[[list[dict[str, Any]]], None]:
    def apply(docs: list[dict[str, Any]]) -> None:
        (policy,) = [d for d in docs if d["metadata"]["name"] == name]
        edit(policy)

    return apply


def _hpa(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert isinstance(hpa, dict)
    return hpa


def _overlay_patch(patch: str, kind: str, name: str) -> Callable[[list[dict[str, Any]]], None]:
    """Adds a JSON patch to an overlay's kustomization."""

    def apply(docs: list[dict[str, Any]]) -> None:
        docs[0].setdefault("patches", []).append(
            {"target": {"kind": kind, "name": name}, "patch": patch}
        )

    return apply


def _overlay_literal(configmap: str, literal: str) -> Callable[[list[dict[str, Any]]], None]:
    """Merges one literal into a ConfigMap from an overlay."""

    def apply(docs: list[dict[str, Any]]) -> None:
        generators = docs[0].setdefault("configMapGenerator", [])
        generators.append({"name": configmap, "behavior": "merge", "literals": [literal]})

    return apply


OVERLAY = "overlays/{overlay}/kustomization.yaml"
# file under deploy/k8s ({overlay}: each overlay), the edit, a fragment of the expected problem
BROKEN: dict[str, tuple[str, Edit, str]] = {
    "a field of the wrong type": (
        "base/router.yaml",
        lambda d: _container(d)["ports"][0].update(containerPort="eighty-two"),
        "containerPort: 'eighty-two' is not of type 'integer'",
    ),
    "a misspelt field": (
        "base/ticket-api.yaml",
        lambda d: d[0]["spec"].update(replica=2),
        "Additional properties are not allowed ('replica' was unexpected)",
    ),
    "an unknown kind": (
        "base/serviceaccount.yaml",
        lambda d: d[0].update(kind="ServiceAcount"),
        "no schema for v1 ServiceAcount",
    ),
    "a required variable dropped": (
        "base/kustomization.yaml",
        _literals("deskstream-config", lambda lits: lits.remove("DESKSTREAM_TOPIC_PREFIX=")),
        "DESKSTREAM_TOPIC_PREFIX is not set",
    ),
    "a misspelt variable": (
        "base/router.yaml",
        lambda d: _env(_container(d), "ROUTER_HTTP_PORT").update(name="ROUTER_HTTP_PRT"),
        "ROUTER_HTTP_PRT is set but router reads no such variable",
    ),
    "a ConfigMap key nobody reads": (
        "base/kustomization.yaml",
        _literals("ingest-email-config", lambda lits: lits.append("IMAP_TIMEOUT=30")),
        "IMAP_TIMEOUT is read by none of the services that import it",
    ),
    "a secret written into the manifest": (
        "base/ticket-api.yaml",
        lambda d: _container(d)["env"].__setitem__(
            [e["name"] for e in _container(d)["env"]].index("TICKET_API_ADMIN_API_KEY"),
            {"name": "TICKET_API_ADMIN_API_KEY", "value": "0123456789abcdef0123456789abcdef"},
        ),
        "TICKET_API_ADMIN_API_KEY is a secret and must come from a Secret",
    ),
    "a secret key the template lacks": (
        "base/ingest-email.yaml",
        lambda d: _env(_container(d), "IMAP_PASSWORD")["valueFrom"]["secretKeyRef"].update(
            key="IMAP_PASS"
        ),
        "IMAP_PASSWORD: key IMAP_PASS is not in the Secret template",
    ),
    "a required secret made optional": (
        "base/ticket-api.yaml",
        lambda d: _env(_container(d), "TICKET_API_ADMIN_API_KEY")["valueFrom"][
            "secretKeyRef"
        ].update(optional=True),
        "TICKET_API_ADMIN_API_KEY is required; its secretKeyRef must not be optional",
    ),
    "a value the service refuses": (
        "base/kustomization.yaml",
        _literals("ingest-social-config", lambda lits: _set(lits, "INGEST_SOCIAL_X_USER_ID=@desk")),
        "ingest-social refuses these settings",
    ),
    "readiness on the liveness path": (
        "base/ingest-chat.yaml",
        lambda d: _container(d)["readinessProbe"]["httpGet"].update(path="/healthz"),
        "readinessProbe is not an HTTP GET of /readyz",
    ),
    "a probe on another port than the service's": (
        "base/router.yaml",
        lambda d: _env(_container(d), "ROUTER_HTTP_PORT").update(value="9000"),
        "livenessProbe probes port 8082, the service listens on 9000",
    ),
    "no resources": (
        "base/ingest-social.yaml",
        lambda d: _container(d)["resources"].pop("limits"),
        "no memory limits",
    ),
    "running as root": (
        "base/ticket-api.yaml",
        lambda d: _container(d)["securityContext"].update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation is not false",
    ),
    "an image no service builds": (
        "base/router.yaml",
        lambda d: _container(d).update(image="deskstream/dispatcher"),
        "is built from no service",
    ),
    "an autoscaler beyond the partitions": (
        OVERLAY,
        _overlay_patch(
            "- {op: replace, path: /spec/maxReplicas, value: 12}",
            "HorizontalPodAutoscaler",
            "router",
        ),
        "want 1 <= min <= max <= 6",
    ),
    "no autoscaler for the router": (
        "base/router.yaml",
        lambda d: d.remove(_hpa(d)),
        "no HorizontalPodAutoscaler scales Deployment/router",
    ),
    "no disruption budget": (
        "base/ingest-chat.yaml",
        lambda d: d.pop(),
        "Deployment/ingest-chat: no PodDisruptionBudget",
    ),
    "no default deny": (
        "base/networkpolicies.yaml",
        lambda d: d.pop(0),
        "no default-deny NetworkPolicy",
    ),
    "DNS blocked": (
        "base/networkpolicies.yaml",
        _policy("allow-dns-and-kafka", lambda p: p["spec"]["egress"].pop(0)),
        "block DNS (egress 53/UDP)",
    ),
    "Kafka on another port than the policy opens": (
        OVERLAY,
        _overlay_literal("deskstream-config", "KAFKA_BOOTSTRAP_SERVERS=kafka.example.org:9094"),
        "block Kafka (egress 9094/TCP)",
    ),
    "an ops port closed": (
        "base/networkpolicies.yaml",
        lambda d: d.remove(next(p for p in d if p["metadata"]["name"] == "allow-metrics-scrape")),
        "Service/router: the network policies close port ops",
    ),
    "a ConfigMap that does not exist": (
        "base/ticket-api.yaml",
        lambda d: _container(d)["envFrom"][1]["configMapRef"].update(name="ticket-api-settings"),
        "envFrom ConfigMap ticket-api-settings does not exist",
    ),
    "a missing resource file": (
        "base/kustomization.yaml",
        lambda d: d[0]["resources"].append("dispatcher.yaml"),
        "kustomize build",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("overlay", checks.OVERLAYS)
def test_a_broken_manifest_is_reported(tmp_path: Path, case: str, overlay: str) -> None:
    filename, edit, expected = BROKEN[case]
    root = _copy(tmp_path)
    _edit(root / filename.format(overlay=overlay), edit)
    problems = checks.k8s_problems(root / "overlays" / overlay, router_max_replicas=router_bound())
    assert any(expected in p for p in problems), problems


def test_a_rendered_secret_is_reported(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    shutil.copy(root / "base" / "secret.template.yaml", root / "overlays" / "prod" / "secret.yaml")
    _edit(
        root / "overlays" / "prod" / "kustomization.yaml",
        lambda d: d[0]["resources"].append("secret.yaml"),
    )
    problems = checks.k8s_problems(root / "overlays" / "prod", router_max_replicas=router_bound())
    assert any("a Secret is rendered" in p for p in problems), problems


def test_a_real_value_in_the_secret_template_is_reported(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _edit(
        root / "base" / "secret.template.yaml",
        lambda d: d[0]["stringData"].update(IMAP_PASSWORD="hunter2hunter2hunter2"),
    )
    problems = checks.k8s_problems(root / "overlays" / "dev", router_max_replicas=router_bound())
    assert "secret.template.yaml: IMAP_PASSWORD holds a value, not a <placeholder>" in problems
