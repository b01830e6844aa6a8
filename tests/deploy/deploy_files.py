"""Reading the deploy files (``infra/deploy/``) as their tools would: compose's variable
interpolation, Kubernetes documents, the environment each featflow container gets, and the
metric names a PromQL expression reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
IMAGE = "featflow:latest"

_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(node: Any) -> Any:
    """``${VAR:-default}`` as compose fills it with VAR unset: the default (``""`` without)."""
    if isinstance(node, str):
        return _VARIABLE.sub(lambda m: m.group(2) or "", node)
    if isinstance(node, dict):
        return {k: interpolate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v) for v in node]
    return node


def compose() -> dict[str, Any]:
    """compose.yaml as compose reads it (YAML merge keys resolved, variables filled)."""
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """(file name, document) for every Kubernetes object under k8s/."""
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def _env_map(env: Any) -> dict[str, str]:
    if isinstance(env, list):  # ["NAME=value", ...]
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in (env or {}).items()}


def compose_featflow_env() -> dict[str, dict[str, str]]:
    """Each compose service that runs the featflow image: the environment it gets."""
    return {
        name: _env_map(service.get("environment"))
        for name, service in compose()["services"].items()
        if service.get("image") == IMAGE
    }


def compose_commands() -> dict[str, list[str]]:
    """Each featflow service's command line (the image's entrypoint is ``featflow``)."""
    return {
        name: list(service["command"])
        for name, service in compose()["services"].items()
        if service.get("image") == IMAGE
    }


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in k8s_documents():
        spec = doc.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template"
        )
        if template:
            yield doc["metadata"]["name"], template["spec"]


def k8s_featflow_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, container) for every container of the featflow image."""
    for name, pod in _pod_specs():
        for container in pod["containers"]:
            if container["image"] == IMAGE:
                yield name, container


def k8s_featflow_env() -> dict[str, dict[str, str]]:
    """Each featflow container's environment: its ConfigMaps' data, then its own ``env``."""
    maps = {
        doc["metadata"]["name"]: doc.get("data", {})
        for _, doc in k8s_documents()
        if doc["kind"] == "ConfigMap"
    }
    out = {}
    for name, container in k8s_featflow_containers():
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(maps[source["configMapRef"]["name"]])
        env.update({e["name"]: e["value"] for e in container.get("env", [])})
        out[f"{name}/{container['name']}"] = env
    return out


def dockerfile_env() -> dict[str, str]:
    """The ``ENV`` of the Dockerfile (``ENV A=1 \\ B=2`` form)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


# -- PromQL -----------------------------------------------------------------------------

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are neither functions
    (followed by ``(``), keywords, label names (inside ``{...}`` or a grouping clause),
    durations nor numbers.

    >>> sorted(metric_names('histogram_quantile(0.99, sum by (le) '
    ...                     '(rate(x_bucket{path="/p"}[5m]))) > 0.005 or absent(up)'))
    ['up', 'x_bucket']
    """
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        name, rest = match.group(), text[match.end() :].lstrip()
        before = text[match.start() - 1] if match.start() else " "
        if rest.startswith("(") or name.lower() in _KEYWORDS or before.isdigit():
            continue
        names.add(name)
    return names


def dashboard_queries() -> dict[str, str]:
    """``"dashboard / panel / refId"`` -> PromQL, annotations included."""
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                out[f"{path.name} / {panel['title']} / {target['refId']}"] = target["expr"]
        for note in dash.get("annotations", {}).get("list", []):
            if "expr" in note:
                out[f"{path.name} / annotation {note['name']}"] = note["expr"]
    return out


def alert_queries() -> dict[str, str]:
    """Alert name -> PromQL."""
    rules = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}


def exported_names(exposition: str) -> set[str]:
    """The series names a Prometheus text exposition offers, families without samples yet
    included (a counter ``x`` as ``x_total``; a histogram as ``_bucket``, ``_sum``,
    ``_count``)."""
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count")}  # fmt: skip
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + s for s in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(_NAME.match(line).group())
    return names
