"""deploy/k8s: each overlay rendered with the pinned kustomize, every resource validated
against the strict Kubernetes JSON schemas that kubernetes-validate ships, and what the
schemas cannot see: env coverage, probes, resources, pod security, the router's
autoscaler, disruption budgets and network policies."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.readers import (
    REPO,
    TOPICS,
    Source,
    consistency_problems,
    effective_env,
    env_problems,
    image_parts,
    readers,
    runs_topics,
    service_names,
    settings_problems,
)

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUSTOMIZE_VERSION = "v5.8.2"  # keep equal to KUSTOMIZE_VERSION in the Makefile
# Strict schemas (unknown fields are errors) of the oldest and the newest Kubernetes minor
# the manifests are meant for; kubernetes-validate 1.37.0 ships schemas up to 1.37.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")


class KustomizeMissing(RuntimeError):
    pass


def kustomize() -> str:
    """The pinned kustomize that `make deps` installs (or $KUSTOMIZE)."""
    path = os.environ.get("KUSTOMIZE") or str(REPO / ".tools" / "bin" / "kustomize")
    if not os.access(path, os.X_OK):
        raise KustomizeMissing(
            f"{path} is missing: run `make deps` (kustomize {KUSTOMIZE_VERSION})"
        )
    return path


def kustomize_build(overlay: Path) -> tuple[list[dict[str, Any]], str]:
    """The rendered resources, or an empty list and kustomize's error."""
    result = subprocess.run(
        [kustomize(), "build", str(overlay)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        return [], result.stderr.strip()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(result.stdout, Loader=loader) if d], ""


@functools.cache
def _schema_validator(version: str, kind: str, api_version: str) -> Any:
    """A validator for one kind from the strict schemas kubernetes-validate ships (None: no
    such kind). Cached: each schema file is parsed once per test session, not per resource."""
    import importlib.resources

    import jsonschema
    from referencing import Registry, Resource

    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = root / f"v{version}-local-strict"
    if not folder.is_dir():
        raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {version}")
    # apps/v1 -> apps-v1, networking.k8s.io/v1 -> networking-v1, v1 -> v1 (the file names)
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = folder / f"{kind.lower()}-{group}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_problems(resources: list[dict[str, Any]], versions: tuple[str, ...]) -> list[str]:
    """Every resource against the strict JSON schemas (unknown fields are errors)."""
    problems = []
    for doc in resources:
        kind, api_version = str(doc.get("kind")), str(doc.get("apiVersion"))
        name = f"{kind}/{(doc.get('metadata') or {}).get('name')}"
        for version in versions:
            validator = _schema_validator(version, kind, api_version)
            if validator is None:
                problems.append(
                    f"{name}: no schema for {api_version} {kind} in Kubernetes {version}"
                )
                continue
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path))):
                path = ".".join(str(p) for p in error.path)
                problems.append(f"{name}: {path}: {error.message} (Kubernetes {version} schema)")
    return problems


def _matches(selector: dict[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) against a set of labels."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


@dataclass
class Workload:
    kind: str
    name: str
    template: dict[str, Any]

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.template.get("spec") or {})

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.template.get("metadata") or {}).get("labels") or {})

    @property
    def containers(self) -> list[dict[str, Any]]:
        return list(self.pod.get("containers") or [])


@dataclass
class Rendered:
    resources: list[dict[str, Any]]
    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for doc in self.resources:
            self.by_kind.setdefault(str(doc.get("kind")), []).append(doc)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return self.by_kind.get(kind, [])

    def workloads(self) -> list[Workload]:
        found = []
        for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            for doc in self.of(kind):
                found.append(Workload(kind, doc["metadata"]["name"], doc["spec"]["template"]))
        for doc in self.of("CronJob"):
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
            found.append(Workload("CronJob", doc["metadata"]["name"], template))
        return found


def secret_template(template: Path) -> tuple[str, set[str], list[str]]:
    """Name and keys of the Secret template, and the keys whose value is no <placeholder>."""
    doc = yaml.safe_load(template.read_text())
    data = {**(doc.get("stringData") or {}), **(doc.get("data") or {})}
    real = [k for k, v in data.items() if not re.fullmatch(r"<[^<>]+>", str(v))]
    return doc["metadata"]["name"], set(data), real


@dataclass
class Context:
    """What the checks of one rendered overlay share."""

    rendered: Rendered
    secret_name: str
    secret_keys: set[str]
    problems: list[str] = field(default_factory=list)
    # (ConfigMap, key) -> the readers that import it with envFrom
    imported: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # container -> the environment it starts with
    started: dict[str, dict[str, str]] = field(default_factory=dict)

    @functools.cached_property
    def configmaps(self) -> dict[str, dict[str, str]]:
        return {
            cm["metadata"]["name"]: {k: str(v) for k, v in (cm.get("data") or {}).items()}
            for cm in self.rendered.of("ConfigMap")
        }

    def container_env(self, at: str, container: dict[str, Any], reader: str) -> dict[str, Source]:
        """The container's variables and where each comes from; dangling references reported."""
        env: dict[str, Source] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self.configmaps.get(ref["name"])
                if data is None and not ref.get("optional"):
                    self.problems.append(f"{at}: envFrom ConfigMap {ref['name']} does not exist")
                for key, value in (data or {}).items():
                    origin = f"ConfigMap {ref['name']}"
                    env[prefix + key] = Source("config", value, explicit=False, origin=origin)
                    self.imported.setdefault((ref["name"], prefix + key), set()).add(reader)
            elif "secretRef" in source:
                ref = source["secretRef"]
                if self._secret_known(at, ref["name"], None):
                    for key in self.secret_keys:
                        env[prefix + key] = Source(
                            "secret",
                            None,
                            False,
                            bool(ref.get("optional")),
                            f"Secret {ref['name']}",
                        )
        for item in container.get("env") or []:
            name, ref = item["name"], item.get("valueFrom") or {}
            if "value" in item:
                env[name] = Source("value", str(item["value"]), origin="a literal value")
            elif "secretKeyRef" in ref:
                key = ref["secretKeyRef"]
                self._secret_known(f"{at}: {name}", key.get("name"), key["key"])
                env[name] = Source(
                    "secret", None, True, bool(key.get("optional")), f"Secret {key.get('name')}"
                )
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                data = self.configmaps.get(key["name"], {})
                if key["key"] not in data and not key.get("optional"):
                    self.problems.append(
                        f"{at}: {name} refers to {key['name']}/{key['key']}, which does not exist"
                    )
                env[name] = Source(
                    "config", data.get(key["key"]), origin=f"ConfigMap {key['name']}"
                )
            else:
                env[name] = Source("field", None, origin="the pod's fields")
        return env

    def _secret_known(self, at: str, name: str | None, key: str | None) -> bool:
        if name != self.secret_name:
            self.problems.append(f"{at}: Secret {name} has no template in the repository")
            return False
        if key is not None and key not in self.secret_keys:
            self.problems.append(f"{at}: key {key} is not in the Secret template")
            return False
        return True


def _pod_security_problems(at: str, workload: Workload) -> list[str]:
    """The main rules of the `restricted` Pod Security Standard, and a read-only root."""
    pod = workload.pod
    problems = []
    pod_ctx = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"{at}: {host} is on")
    if any("hostPath" in v for v in pod.get("volumes") or []):
        problems.append(f"{at}: mounts a hostPath volume")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{at}: mounts a service account token it does not need")
    for c in pod.get("containers") or []:
        ctx = c.get("securityContext") or {}
        cat = f"{at} container {c.get('name')}"
        if not (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))):
            problems.append(f"{cat}: runAsNonRoot is not set")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cat}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{cat}: does not drop ALL capabilities")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{cat}: no RuntimeDefault seccomp profile")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cat}: the root filesystem is writable")
    return problems


def _port_number(port: Any, container_ports: list[dict[str, Any]]) -> int | None:
    if isinstance(port, int):
        return port
    for p in container_ports:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def _rule_allows(rule: dict[str, Any], port: int, protocol: str, named: str | None = None) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True  # no ports: every port
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        value = p.get("port")
        if value is None:
            return True
        if isinstance(value, str):
            if value == named:
                return True
        elif value <= port <= p.get("endPort", value):
            return True
    return False


def _policy_allows(
    policies: list[dict[str, Any]],
    labels: Mapping[str, str],
    direction: str,
    port: int,
    protocol: str = "TCP",
    named: str | None = None,
) -> bool:
    key = "ingress" if direction == "Ingress" else "egress"
    for policy in policies:
        spec = policy.get("spec") or {}
        types = spec.get("policyTypes") or ["Ingress"]
        if direction not in types or not _matches(spec.get("podSelector"), labels):
            continue
        if any(_rule_allows(rule, port, protocol, named) for rule in spec.get(key) or []):
            return True
    return False


def _kafka_ports(env: Mapping[str, str]) -> set[int]:
    servers = env.get("KAFKA_BOOTSTRAP_SERVERS", "")
    return {int(hp.rsplit(":", 1)[1]) for hp in servers.split(",") if ":" in hp}


def k8s_problems(
    overlay: Path,
    *,
    router_max_replicas: int,
    secret_template_file: Path | None = None,
    versions: tuple[str, ...] = KUBERNETES_VERSIONS,
) -> list[str]:
    """`kustomize build` of the overlay, every resource against the Kubernetes schemas, then
    what the schemas cannot see (see the module's docstring)."""
    template = secret_template_file or overlay.parent.parent / "base" / "secret.template.yaml"
    resources, error = kustomize_build(overlay)
    if error:
        return [f"kustomize build {overlay}: {error}"]
    problems = schema_problems(resources, versions)
    if problems:
        return problems  # the checks below read fields the schemas vouch for
    secret_name, secret_keys, real = secret_template(template)
    ctx = Context(Rendered(resources), secret_name, secret_keys)
    ctx.problems += [f"{template.name}: {k} holds a value, not a <placeholder>" for k in real]
    if ctx.rendered.of("Secret"):
        ctx.problems.append(
            "a Secret is rendered: secrets never live in the repository (see secret.template.yaml)"
        )
    for workload in ctx.rendered.workloads():
        _workload_problems(ctx, workload)
    for (configmap, key), users in sorted(ctx.imported.items()):
        if not any(key in readers()[user].reads for user in users):
            ctx.problems.append(
                f"ConfigMap {configmap}: {key} is read by none of the services that import it "
                f"({', '.join(sorted(users))})"
            )
    ctx.problems += consistency_problems("the rendered manifests", ctx.started)
    ctx.problems += _availability_problems(ctx.rendered, router_max_replicas)
    ctx.problems += _network_problems(ctx)
    return ctx.problems


def _workload_problems(ctx: Context, workload: Workload) -> None:
    at = f"{workload.kind}/{workload.name}"
    ctx.problems.extend(_pod_security_problems(at, workload))
    known = set(service_names())
    for container in workload.containers:
        cat = f"{at} container {container.get('name')}"
        image = container.get("image")
        if not image:
            ctx.problems.append(f"{cat}: no image")
            continue
        if image_parts(image)[1] in {None, "latest"}:
            ctx.problems.append(f"{cat}: image {image} has no fixed tag or digest")
        service = image_parts(image)[0].rsplit("/", 1)[-1]
        if service not in known:
            ctx.problems.append(f"{cat}: image {image} is built from no service in services/")
        limits = container.get("resources") or {}
        ctx.problems += [
            f"{cat}: no {what} {bound}"
            for bound in ("requests", "limits")
            for what in ("cpu", "memory")
            if what not in (limits.get(bound) or {})
        ]
        reader = readers().get(TOPICS if runs_topics(container.get("command")) else service)
        if reader is None:
            continue
        env = ctx.container_env(cat, container, reader.name)
        ctx.problems += env_problems(cat, reader, env)
        started = {k: v for k, v in effective_env(env).items() if v != ""}
        ctx.problems += settings_problems(cat, reader, started)
        ctx.started[cat] = started
        if workload.kind == "Deployment":
            ctx.problems += _probe_problems(cat, container, reader.http_port(started))


def _probe_problems(at: str, container: dict[str, Any], listen: int | None) -> list[str]:
    """Readiness on /readyz, liveness on /healthz, both on the port the service listens on."""
    problems = []
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (container.get(probe) or {}).get("httpGet")
        if not get or get.get("path") != path:
            problems.append(f"{at}: {probe} is not an HTTP GET of {path}")
            continue
        number = _port_number(get.get("port"), container.get("ports") or [])
        if number is None:
            problems.append(f"{at}: {probe} probes port {get.get('port')}, which is not declared")
        elif listen is not None and number != listen:
            problems.append(f"{at}: {probe} probes port {number}, the service listens on {listen}")
    return problems


def _availability_problems(rendered: Rendered, router_max_replicas: int) -> list[str]:
    """A disruption budget for every Deployment; the router scaled within its partitions."""
    problems = []
    deployments = {d["metadata"]["name"]: d for d in rendered.of("Deployment")}
    budgets = rendered.of("PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
        if not any(_matches(b["spec"].get("selector"), labels) for b in budgets):
            problems.append(f"Deployment/{name}: no PodDisruptionBudget selects its pods")
    autoscalers = rendered.of("HorizontalPodAutoscaler")
    for hpa in autoscalers:
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            problems.append(
                f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: scales "
                f"{ref.get('kind')}/{ref.get('name')}, which is not rendered"
            )
    router = [h for h in autoscalers if h["spec"]["scaleTargetRef"].get("name") == "router"]
    if not router:
        problems.append("no HorizontalPodAutoscaler scales Deployment/router")
    for hpa in router:
        low, high = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        if not 1 <= low <= high <= router_max_replicas:
            problems.append(
                f"HorizontalPodAutoscaler/router: {low}..{high} replicas; want 1 <= min <= max "
                f"<= {router_max_replicas}, the partition count of the router's input topics"
            )
    if deployments.get("router", {}).get("spec", {}).get("replicas", 1) < 1:
        problems.append("Deployment/router: fewer than one replica")
    return problems


def _network_problems(ctx: Context) -> list[str]:
    """A default deny, and yet every pod reaches what it needs and every Service port is open."""
    policies = ctx.rendered.of("NetworkPolicy")
    problems = []
    if not any(
        not (p["spec"].get("podSelector") or {})
        and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes") or [])
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        problems.append("no default-deny NetworkPolicy (empty podSelector, Ingress and Egress)")
    workloads = ctx.rendered.workloads()
    for workload in workloads:
        at = f"{workload.kind}/{workload.name}"
        for container in workload.containers:
            started = ctx.started.get(f"{at} container {container.get('name')}")
            if started is None:
                continue
            needed = {("DNS", 53, "UDP")}
            needed |= {("Kafka", p, "TCP") for p in _kafka_ports(started)}
            if "MONGODB_URI" in started:
                needed.add(("MongoDB", 27017, "TCP"))
            for name in ("IMAP_PORT", "SMTP_PORT"):
                if name in started:
                    needed.add((name.split("_")[0], int(started[name]), "TCP"))
            problems += [
                f"{at}: the network policies block {what} (egress {port}/{protocol})"
                for what, port, protocol in sorted(needed)
                if not _policy_allows(policies, workload.labels, "Egress", port, protocol)
            ]
    for service in ctx.rendered.of("Service"):
        selector = {"matchLabels": service["spec"].get("selector") or {}}
        at = f"Service/{service['metadata']['name']}"
        for workload in (w for w in workloads if _matches(selector, w.labels)):
            declared = [p for c in workload.containers for p in c.get("ports") or []]
            for port in service["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                number = _port_number(target, declared)
                named = next(
                    (p.get("name") for p in declared if p["containerPort"] == number), None
                )
                if number is None:
                    problems.append(
                        f"{at}: {workload.kind}/{workload.name} declares no port {target}"
                    )
                elif not _policy_allows(
                    policies, workload.labels, "Ingress", number, port.get("protocol", "TCP"), named
                ):
                    problems.append(
                        f"{at}: the network policies close port {target} of "
                        f"{workload.kind}/{workload.name}"
                    )
    return problems


def router_partition_bound() -> tuple[int, dict[str, int]]:
    """How many router workers can have work: the partition count of its input topics.

    Read from the router itself (the topics its Faust agents consume) and the topic
    registry (their partitions); no broker is contacted.
    """
    from deskstream.topics import BY_NAME
    from deskstream_router.app import create_app
    from deskstream_router.settings import RouterSettings

    app = create_app(RouterSettings(topic_prefix=""))
    inputs = {t for agent in app.agents.values() for t in agent.channel.topics}
    partitions = {t: BY_NAME[t].partitions for t in sorted(inputs)}
    return max(partitions.values()), partitions
