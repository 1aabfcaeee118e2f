"""The deployment kit in ``deploy/`` and the ``Dockerfile``: valid, consistent with each other
and with the code (settings names, ports, probe paths, drain timings)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from devkit.embedded import free_port
from devkit.nginx import DEPLOYED_CONF, Nginx, nginx_binary
from gateway.http import server
from gateway.settings import Settings
from tests.support.tokens import SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# kustomize's own file in that folder: how to apply the objects, not one of them.
KUSTOMIZATION = "kustomization.yaml"
# The oldest Kubernetes release the manifests promise to work on, and the newest the
# validator ships schemas for.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# Everything after the drain timeout: aiohttp's wait-then-cancel, then the app's cleanup.
AFTER_DRAIN_S = 2 * server.CANCEL_GRACE_S + server.CLEANUP_BOUND_S


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s, by ``Kind/name``."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == KUSTOMIZATION:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def setting_names() -> set[str]:
    """The environment variables the settings declare (gateway/settings.py)."""
    names: set[str] = set()
    for declared in dataclasses.fields(Settings):
        spec = declared.metadata["setting"]
        names.update(name for name in (spec.env, *spec.aliases) if name)
    return names


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    objects = manifests()
    assert {
        "Deployment/agent-gateway",
        "Deployment/agent-gateway-consumer",
        "Service/agent-gateway",
        "ConfigMap/agent-gateway",
        "Secret/agent-gateway",
        "PodDisruptionBudget/agent-gateway",
        "HorizontalPodAutoscaler/agent-gateway",
        "Job/agent-gateway-migrate",
    } <= set(objects)
    for name, doc in objects.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name} on Kubernetes {version}: {exc.message}") from exc


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_the_gateway_probes_drain_and_resources_match_the_code() -> None:
    objects = manifests()
    deployment = objects["Deployment/agent-gateway"]
    config = objects["ConfigMap/agent-gateway"]["data"]
    pod = deployment["spec"]["template"]["spec"]
    gateway = container(deployment)

    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["ports"][0]["containerPort"] == int(config["GATEWAY_PORT"])
    assert gateway["resources"]["requests"].keys() >= {"cpu", "memory"}
    pre_stop = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # SIGKILL must not come before the drain has run its course.
    needed = (
        float(pre_stop[1])
        + float(config["DRAIN_PRE_STOP_S"])
        + float(config["DRAIN_TIMEOUT_S"])
        + float(config["DRAIN_IDLE_CLOSE_S"])
        + AFTER_DRAIN_S
    )
    assert pod["terminationGracePeriodSeconds"] >= needed
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_consumer_serves_probes_and_metrics_on_its_configured_port() -> None:
    objects = manifests()
    config = objects["ConfigMap/agent-gateway"]["data"]
    consumer = container(objects["Deployment/agent-gateway-consumer"])

    assert consumer["args"] == ["consume"]
    assert consumer["ports"][0]["containerPort"] == int(config["CONSUMER_PORT"])
    assert consumer["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    annotations = objects["Deployment/agent-gateway-consumer"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/port"] == config["CONSUMER_PORT"]


def test_selectors_targets_and_references_line_up() -> None:
    objects = manifests()
    gateway = objects["Deployment/agent-gateway"]
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    for name in ("Service/agent-gateway", "PodDisruptionBudget/agent-gateway"):
        spec = objects[name]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), name
    hpa = objects["HorizontalPodAutoscaler/agent-gateway"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "agent-gateway",
    }
    assert hpa["minReplicas"] > objects["PodDisruptionBudget/agent-gateway"]["spec"]["minAvailable"]
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"

    secret_keys = set(objects["Secret/agent-gateway"]["stringData"])
    for name, doc in objects.items():
        if doc["kind"] not in {"Deployment", "Job"}:
            continue
        for env in container(doc).get("env", []):
            ref = env["valueFrom"]
            if "secretKeyRef" in ref:
                assert ref["secretKeyRef"]["name"] == "agent-gateway"
                assert ref["secretKeyRef"]["key"] in secret_keys, name
            else:
                assert ref["configMapKeyRef"]["name"] == "agent-gateway"
        for source in container(doc).get("envFrom", []):
            assert source["configMapRef"]["name"] == "agent-gateway"


def test_every_configured_variable_is_a_setting_the_code_reads() -> None:
    known = setting_names()
    objects = manifests()
    assert set(objects["ConfigMap/agent-gateway"]["data"]) <= known
    assert set(objects["Secret/agent-gateway"]["stringData"]) <= known
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    for name in ("gateway", "consumer", "migrate"):
        assert set(compose["services"][name]["environment"]) <= known, name


def test_compose_runs_two_gateways_a_consumer_and_nginx_with_room_to_drain() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    gateway, consumer, nginx = services["gateway"], services["consumer"], services["nginx"]

    assert {"postgres", "redis", "migrate", "gateway", "consumer", "nginx"} <= set(services)
    assert gateway["command"] == ["serve"]
    assert gateway["deploy"]["replicas"] == 2
    assert "ports" not in gateway  # only nginx is published
    drain = sum(
        float(gateway["environment"][name])
        for name in ("DRAIN_PRE_STOP_S", "DRAIN_TIMEOUT_S", "DRAIN_IDLE_CLOSE_S")
    )
    assert int(gateway["stop_grace_period"].removesuffix("s")) >= drain + AFTER_DRAIN_S
    assert consumer["command"] == ["consume"]
    port = consumer["environment"]["CONSUMER_PORT"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(consumer["healthcheck"]["test"])
    assert nginx["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]


def test_the_nginx_config_has_what_streaming_needs() -> None:
    conf = DEPLOYED_CONF.read_text()
    directives = {line.strip().rstrip(";") for line in conf.splitlines()}

    assert "proxy_buffering off" in directives
    assert "proxy_request_buffering off" in directives
    assert "proxy_http_version 1.1" in directives
    assert 'proxy_set_header Connection ""' in directives
    assert any(d.startswith("keepalive ") for d in directives)
    read_timeout = next(d for d in directives if d.startswith("proxy_read_timeout "))
    # Longer than the longest wait window (HARD_CEILING_MS, 600 s).
    assert int(read_timeout.split()[1].removesuffix("s")) > 600


def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (e.g. `apt-get install nginx`)")
    nginx = Nginx(binary, tmp_path, free_port(), ["127.0.0.1:9", "127.0.0.1:10"])

    checked = nginx.check()

    assert checked.returncode == 0, checked.stderr


def dockerfile_runtime_stage() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM ", text, flags=re.M)
    return [line.strip() for line in stages[-1].splitlines() if line.strip()]


def test_the_image_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    lines = dockerfile_runtime_stage()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    healthchecks = [line for line in lines if line.startswith("HEALTHCHECK ")]

    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()  # numeric, so runAsNonRoot can verify it
    assert int(uid) != 0
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0]


async def run_healthcheck(port: int) -> int:
    """The image's HEALTHCHECK command, run as Docker would, against ``port``."""
    line = next(line for line in dockerfile_runtime_stage() if line.startswith("HEALTHCHECK "))
    command = json.loads(line[line.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env={"GATEWAY_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await asyncio.wait_for(process.wait(), 30)


async def test_the_image_healthcheck_passes_on_a_live_gateway_and_fails_without_one(
    gateway: TestClient[web.Request, web.Application],
) -> None:
    port = gateway.port
    assert port is not None

    assert await run_healthcheck(port) == 0
    assert await run_healthcheck(free_port()) != 0


def test_the_healthcheck_command_is_shell_free() -> None:
    line = next(line for line in dockerfile_runtime_stage() if line.startswith("HEALTHCHECK "))
    # Exec form: no shell in the image is needed, and nothing is interpolated by one.
    assert line.split("CMD", 1)[1].strip().startswith("[")
    assert shlex.split(line)[0] == "HEALTHCHECK"


# PostgreSQL's default max_connections, less its superuser_reserved_connections: what the kit's
# processes may open together on a server left as installed.
POSTGRES_CONNECTIONS = 100 - 3
# Connections outside the long-running pools: the migrate Job (one) and an admin console (two).
ONE_OFF_CONNECTIONS = 1 + 2
# Connections a process holds beside its pool: a gateway's cache listener and dependency probe,
# a consumer's dependency probe (its monitor's, gateway/ops/dependencies.py).
GATEWAY_OWN_CONNECTIONS = 2
CONSUMER_OWN_CONNECTIONS = 1


def _size(text: str) -> int:
    """An nginx size (``64m``, ``512k``, ``1048576``) in bytes."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _configured(name: str) -> Any:
    """A setting as the ConfigMap gives it to every pod (the code's default where it is silent)."""
    data = manifests()["ConfigMap/agent-gateway"]["data"]
    return getattr(Settings.from_env(data), name)


def _surge(deployment: dict[str, Any], replicas: int) -> int:
    """Pods a rolling update may add above ``replicas`` (Kubernetes' default: 25 %, rounded up)."""
    rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
    surge = rolling.get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return -(-replicas * int(surge[:-1]) // 100)
    return int(surge)


def test_the_postgres_connection_budget_fits_at_the_largest_scale() -> None:
    """Every gateway pod holds its pool plus the cache's listening connection and the dependency
    probe's, every consumer its pool plus its probe's; at the HPA's ceiling, mid-rollout, they
    fit in a PostgreSQL left at its defaults."""
    objects = manifests()
    gateways = objects["HorizontalPodAutoscaler/agent-gateway"]["spec"]["maxReplicas"]
    gateways += _surge(objects["Deployment/agent-gateway"], gateways)
    consumer_deployment = objects["Deployment/agent-gateway-consumer"]
    consumers = consumer_deployment["spec"]["replicas"]
    consumers += _surge(consumer_deployment, consumers)

    needed = (
        gateways * (_configured("db_pool_max_size") + GATEWAY_OWN_CONNECTIONS)
        + consumers * (_configured("consumer_db_pool_max_size") + CONSUMER_OWN_CONNECTIONS)
        + ONE_OFF_CONNECTIONS
    )

    assert needed <= POSTGRES_CONNECTIONS, (gateways, consumers, needed)


def test_compose_fits_the_postgres_connection_budget() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    gateway = Settings.from_env(
        {k: str(v) for k, v in services["gateway"]["environment"].items() if "$" not in str(v)}
    )
    consumer = Settings.from_env(
        {k: str(v) for k, v in services["consumer"]["environment"].items() if "$" not in str(v)}
    )
    needed = (
        services["gateway"]["deploy"]["replicas"]
        * (gateway.db_pool_max_size + GATEWAY_OWN_CONNECTIONS)
        + consumer.consumer_db_pool_max_size
        + CONSUMER_OWN_CONNECTIONS
        + ONE_OFF_CONNECTIONS
    )
    assert needed <= POSTGRES_CONNECTIONS


def test_a_file_of_the_contracts_largest_size_passes_every_shipped_proxy() -> None:
    """Execute takes files as base64 in JSON: the proxies must pass the gateway's largest body,
    so that every refusal is the gateway's own JSON 413."""
    largest_body = _configured("execute_max_request_body")
    largest_file = _configured("max_file_bytes")
    assert largest_file >= 20 * 1024 * 1024  # the execute contract's 20 MB
    # base64 grows 4/3; the JSON around it is small.
    assert largest_body >= largest_file * 4 // 3 + 64 * 1024

    conf = DEPLOYED_CONF.read_text()
    nginx_limit = re.search(r"client_max_body_size (\S+);", conf)
    assert nginx_limit is not None
    assert _size(nginx_limit.group(1)) >= largest_body

    annotations = (K8S / "ingress-nginx-annotations.md").read_text()
    ingress_limits = re.findall(r'proxy-body-size: "(\S+)"', annotations)
    assert ingress_limits
    assert all(_size(limit) >= largest_body for limit in ingress_limits)


def test_the_kit_trusts_its_load_balancer_and_keeps_blobs_off_the_pods() -> None:
    """Behind the ingress every peer is a proxy (failed keys are counted per caller only if it is
    trusted); the pods' root is read-only and shared by no other replica (blobs go to S3)."""
    objects = manifests()
    config = objects["ConfigMap/agent-gateway"]["data"]
    secret = objects["Secret/agent-gateway"]["stringData"]
    # The example's SECRET_KEY is a placeholder the start refuses (tests/security): filled in.
    k8s = Settings.from_env({**config, **secret, "SECRET_KEY": SECRET_KEY})
    assert k8s.trusted_proxies
    assert k8s.blob_backend == "s3"
    assert k8s.s3_bucket
    gateway = container(objects["Deployment/agent-gateway"])
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    passed = {env["name"] for env in gateway["env"]}
    assert {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"} <= passed
    # The consumer's retention deletes blobs: it reads the same store (ConfigMap and keys).
    consumer = container(objects["Deployment/agent-gateway-consumer"])
    assert {"configMapRef": {"name": "agent-gateway"}} in consumer["envFrom"]
    assert {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"} <= {env["name"] for env in consumer["env"]}

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    environment = compose["services"]["gateway"]["environment"]
    assert environment["BLOB_BACKEND"] == "s3"
    consumer_env = compose["services"]["consumer"]["environment"]
    for key in ("BLOB_BACKEND", "S3_BUCKET", "S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID"):
        assert consumer_env[key] == environment[key], key
    assert environment["TRUSTED_PROXIES"]
    assert "minio" in compose["services"]


def _generated_keys(generator: dict[str, Any]) -> set[str]:
    """The keys a ``configMapGenerator`` entry writes itself: its literals, env files and files
    (``key=path`` or the file's name)."""
    keys = {literal.split("=", 1)[0] for literal in generator.get("literals", [])}
    env_files = generator.get("envs", []) + ([generator["env"]] if "env" in generator else [])
    for env_file in env_files:
        for line in (K8S / env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                keys.add(line.split("=", 1)[0].strip())
    for source in generator.get("files", []):
        keys.add(source.split("=", 1)[0] if "=" in source else Path(source).name)
    return keys


def test_the_kustomization_applies_every_manifest_and_rolls_pods_on_a_settings_change() -> None:
    """``kubectl apply -k deploy/k8s`` gets every object but the Secret example, and its
    ConfigMap is configmap.yaml's, hash-named so that the workloads roll when it changes."""
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text())
    shipped = {p.name for p in K8S.glob("*.yaml")} - {KUSTOMIZATION, "secret.example.yaml"}
    patches = [patch["path"] for patch in kustomization["patches"]]
    assert sorted(kustomization["resources"] + patches) == sorted(shipped)

    # The generator makes the ConfigMap (hash-named: what rolls the pods) and configmap.yaml,
    # applied to it as a patch, is its whole content: the settings stay written once.
    configmap = manifests()["ConfigMap/agent-gateway"]
    assert patches == ["configmap.yaml"]
    assert "configmap.yaml" not in kustomization["resources"]
    [generator] = kustomization["configMapGenerator"]
    assert generator["name"] == configmap["metadata"]["name"]
    assert generator.get("behavior", "create") == "create"
    assert _generated_keys(generator) == set()
    for options in (kustomization.get("generatorOptions", {}), generator.get("options", {})):
        assert not options.get("disableNameSuffixHash"), "the hash suffix is what rolls the pods"
