"""The deploy files (``infra/deploy/``) parse and pass their schemas, set only real settings
with valid values, run real commands, and agree with each other on ports and names. No
docker daemon and nothing downloaded: the compose-spec schema is committed beside this file
(from check-jsonschema's vendored copy, Apache-2.0), the Kubernetes schemas come with
``kubernetes-validate``."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from featflow.cli import main
from featflow.settings import Settings
from tests.deploy import deploy_files as files

HERE = Path(__file__).parent
KUBERNETES = "1.31.0"  # the oldest minor the manifests target (autoscaling/v2, batch/v1)
SETTINGS = {f"FEATFLOW_{name.upper()}" for name in Settings.model_fields}


def _compose_validator() -> jsonschema.Validator:
    schema = json.loads((HERE / "compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_compose_passes_the_compose_spec_schema() -> None:
    validator = _compose_validator()
    doc = files.compose()
    assert [e.message for e in validator.iter_errors(doc)] == []
    # the schema is strict enough to catch a typo (it would pass vacuously otherwise)
    bad = copy.deepcopy(doc)
    bad["services"]["worker"]["enviroment"] = {}
    assert list(validator.iter_errors(bad))


def test_compose_has_the_production_shape() -> None:
    services = files.compose()["services"]
    kafka = services["kafka"]["environment"]
    assert "broker" in kafka["KAFKA_PROCESS_ROLES"] and "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert int(kafka["KAFKA_NUM_PARTITIONS"]) >= 3
    env = files.compose_featflow_env()
    assert int(env["worker"]["FEATFLOW_TOPIC_PARTITIONS"]) >= 3
    commands = files.compose_commands()
    replicas = [n for n, c in commands.items() if c[0] == "serve"]
    assert len(replicas) >= 2
    assert {"worker", "monitor", "trainer"} <= {c[0] for c in commands.values()}
    nginx = (files.DEPLOY / "nginx" / "nginx.conf").read_text()
    for name in replicas:
        assert f"server {name}:8000" in nginx
    assert {"redis", "prometheus", "grafana", "front"} <= services.keys()


def test_kubernetes_manifests_pass_their_schemas() -> None:
    kinds = []
    for file, doc in files.k8s_documents():
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{file} {doc['kind']}: {exc.message}") from exc
        kinds.append(doc["kind"])
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= set(kinds)
    worker = next(
        d
        for _, d in files.k8s_documents()
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "featflow-worker"
    )
    worker["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES, strict=True)


def test_every_serving_workload_is_ready_by_health() -> None:
    """Each featflow container that listens has a readiness probe on /health at the port
    its settings open; the trainer listens nowhere."""
    env = files.k8s_featflow_env()
    probed = set()
    for name, container in files.k8s_featflow_containers():
        probe = container.get("readinessProbe")
        if container["args"][0] in ("init", "trainer"):
            assert probe is None, name
            continue
        assert probe["httpGet"]["path"] == "/health", name
        port = {p["name"]: p["containerPort"] for p in container["ports"]}[probe["httpGet"]["port"]]
        settings, args = env[f"{name}/{container['name']}"], container["args"]
        if args[0] == "serve":
            expected = args[args.index("--port") + 1]
            assert args[args.index("--host") + 1] == "0.0.0.0", name
        else:
            expected = settings[f"FEATFLOW_{args[0].upper()}_WEB_PORT"]
            assert settings["FEATFLOW_METRICS_HOST"] == "0.0.0.0", name
        assert str(port) == expected, name
        probed.add(args[0])
    assert probed == {"worker", "monitor", "serve"}


def test_resource_requests_follow_the_measured_figures() -> None:
    """benchmarks/RESULTS.md: a worker with 1M users peaks at 1.85 GiB while a checkpoint
    snapshot is held (State memory); `featflow train` on 1M labelled events at 1,734 MiB
    (Training data at scale). Limits leave that room; requests are set for every container."""
    gib = {"Gi": 1.0, "Mi": 1 / 1024}

    def size(value: str) -> float:
        return float(value[:-2]) * gib[value[-2:]]

    limits = {}
    for name, container in files.k8s_featflow_containers():
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), name
        if "limits" in resources:
            limits[container["args"][0]] = size(resources["limits"]["memory"])
    assert limits["worker"] > 1.85
    assert limits["trainer"] > 1734 / 1024


def test_worker_autoscaling_stops_at_the_partitions() -> None:
    config = next(d for _, d in files.k8s_documents() if d["kind"] == "ConfigMap")
    partitions = int(config["data"]["FEATFLOW_TOPIC_PARTITIONS"])
    hpas = [d for _, d in files.k8s_documents() if d["kind"] == "HorizontalPodAutoscaler"]
    hpa = next(h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == "featflow-worker")
    assert hpa["spec"]["maxReplicas"] <= partitions
    assert any(m["type"] == "External" for m in hpa["spec"]["metrics"])  # consumer lag


def _all_env() -> dict[str, dict[str, str]]:
    return {
        **{f"compose {k}": v for k, v in files.compose_featflow_env().items()},
        **{f"k8s {k}": v for k, v in files.k8s_featflow_env().items()},
        "Dockerfile": files.dockerfile_env(),
    }


def test_every_featflow_variable_is_a_setting_with_a_valid_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names from ``Settings``' own fields (pydantic's ``FEATFLOW_`` + field name), values
    read by ``Settings()`` as the container would read them."""
    assert len(SETTINGS) > 50  # the definitions were read
    unknown = {
        (where, name)
        for where, env in _all_env().items()
        for name in env
        if name.startswith("FEATFLOW_") and name not in SETTINGS
    }
    assert unknown == set()
    for where, env in _all_env().items():
        with monkeypatch.context() as m:
            for name in [n for n in os.environ if n.startswith("FEATFLOW_")]:
                m.delenv(name)
            for name, value in env.items():
                if name.startswith("FEATFLOW_"):
                    m.setenv(name, value)
            try:
                Settings()  # raises on a value the setting refuses
            except ValueError as exc:
                raise AssertionError(f"{where}: {exc}") from exc
    # the other kind of container variable: only the image's own
    others = {n for env in _all_env().values() for n in env if not n.startswith("FEATFLOW_")}
    assert others <= {"NUMBA_CACHE_DIR", "PYTHONUNBUFFERED"}, others


def test_every_command_line_is_a_featflow_command() -> None:
    """compose and Kubernetes run commands and options ``featflow`` has (parsed by click,
    not run)."""
    lines = list(files.compose_commands().values())
    lines += [c["args"] for _, c in files.k8s_featflow_containers()]
    for args in lines:
        command = main.get_command(None, args[0])  # type: ignore[arg-type]
        assert command is not None, args
        command.make_context(args[0], list(args[1:]))
    assert CliRunner().invoke(main, ["serve", "--help"]).exit_code == 0


def test_prometheus_scrapes_what_the_services_open() -> None:
    config = yaml.safe_load(files.PROMETHEUS.read_text())
    assert (files.DEPLOY / "prometheus" / "alerts.yml").name in str(config["rule_files"])
    env = files.compose_featflow_env()
    commands = files.compose_commands()
    expected = {
        "featflow-worker": {f"worker:{env['worker']['FEATFLOW_WORKER_WEB_PORT']}"},
        "featflow-monitor": {f"monitor:{env['monitor']['FEATFLOW_MONITOR_WEB_PORT']}"},
        "featflow-inference": {
            f"{name}:{args[args.index('--port') + 1]}"
            for name, args in commands.items()
            if args[0] == "serve"
        },
    }
    for job in config["scrape_configs"]:
        targets = {t for c in job.get("static_configs", []) for t in c["targets"]}
        targets |= {f"{n}:{c['port']}" for c in job.get("dns_sd_configs", []) for n in c["names"]}
        assert targets == expected.pop(job["job_name"]), job["job_name"]
    assert expected == {}


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    provisioning = files.DEPLOY / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    uid = source["datasources"][0]["uid"]
    provider = yaml.safe_load((provisioning / "dashboards" / "featflow.yaml").read_text())
    mounted = files.compose()["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert any(v.endswith(f":{path}:ro") for v in mounted)
    dash = json.loads((files.DASHBOARDS / "featflow.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == uid
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ("Throughput", "Consumer lag (events)", "Freshness (s)",
                   "Dead letters by reason", "Predict latency", "Drift per feature (PSI)",
                   "Live AUC", "Model version over time"):  # fmt: skip
        assert wanted in titles
    notes = {n["name"] for n in dash["annotations"]["list"]}
    assert {"Promotions", "Rollbacks"} <= notes


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load(files.ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in ("page", "ticket", "info")
            assert rule["annotations"]["summary"]
