"""The monitoring kit in ``deploy/monitoring``: its rules pass promtool and their unit tests,
the PrometheusRule is the plain rules file, every runbook lands in docs/troubleshooting.md,
the PodMonitors select the pods the Deployments make, and every query of the rules and the
dashboard names only metrics a real gateway and a real consumer export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes_validate
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.http.monitor import monitor_app
from gateway.ops.consumer_monitor import ConsumerMonitor
from gateway.settings import Settings
from tests.deploy.test_manifests import K8S, manifests
from tests.docs.test_links import anchors, slugify
from tests.support.consumers import ConsumerFactory
from tests.support.tenants import Tenant

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"


def rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    return loaded


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in rules()["groups"] for rule in group["rules"]]


def test_the_prometheus_rule_embeds_the_plain_rules_file() -> None:
    resource = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == rules()["groups"]


def test_every_alert_has_a_severity_a_summary_and_a_runbook_in_troubleshooting() -> None:
    documented = anchors(TROUBLESHOOTING)
    names = [rule["alert"] for rule in alerting_rules()]
    assert len(names) == len(set(names))
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/troubleshooting.md", rule["alert"]
        assert anchor in documented, f"{rule['alert']}: no #{anchor} in {TROUBLESHOOTING.name}"
    # Every alert the troubleshooting page describes has a rule.
    alerts_section = TROUBLESHOOTING.read_text().split("## Alerts", 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"^### (.+)$", alerts_section, flags=re.M)
    linked = {rule["annotations"]["runbook_url"].partition("#")[2] for rule in alerting_rules()}
    assert {slugify(heading) for heading in headings} <= linked


def test_every_alert_has_a_promtool_unit_test() -> None:
    tested = {
        check["alertname"]
        for case in yaml.safe_load((MONITORING / "rules.test.yaml").read_text())["tests"]
        for check in case["alert_rule_test"]
        if check.get("exp_alerts")
    }
    assert tested == {rule["alert"] for rule in alerting_rules()}


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip(
            "promtool is not installed (Debian: `apt-get install prometheus`; "
            "scripts/check-monitoring.sh installs it as root)"
        )
    return binary


def test_promtool_checks_the_rules() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(MONITORING / "rules.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_pass() -> None:
    tested = subprocess.run(
        [promtool(), "test", "rules", str(MONITORING / "rules.test.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_pod_monitors_scrape_the_pods_the_deployments_make() -> None:
    monitors = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((MONITORING / "podmonitors.yaml").read_text())
    }
    objects = manifests()
    for monitor, deployment, path_port in (
        ("agent-gateway", "Deployment/agent-gateway", "http"),
        ("agent-gateway-consumer", "Deployment/agent-gateway-consumer", "metrics"),
    ):
        doc = monitors[monitor]
        assert doc["kind"] == "PodMonitor"
        template = objects[deployment]["spec"]["template"]
        assert (
            doc["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        )
        [endpoint] = doc["spec"]["podMetricsEndpoints"]
        [port] = template["spec"]["containers"][0]["ports"]
        assert endpoint == {"port": port["name"], "path": "/metrics", "interval": "30s"}
        assert port["name"] == path_port
        assert port["containerPort"] == int(
            template["metadata"]["annotations"]["prometheus.io/port"]
        )
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["podmonitors.yaml", "prometheus-rules.yaml"]


def test_the_consumer_service_selects_the_consumer_pods_on_its_metrics_port() -> None:
    service = manifests()["Service/agent-gateway-consumer"]
    consumer = manifests()["Deployment/agent-gateway-consumer"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= consumer["metadata"]["labels"].items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == consumer["spec"]["containers"][0]["ports"][0]["name"]
    assert port["port"] == consumer["spec"]["containers"][0]["ports"][0]["containerPort"]
    kubernetes_validate.validate(service, kubernetes_validate.latest_version(), strict=True)
    assert (
        "consumer-service.yaml"
        in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    )


# --- Every query names exported metrics --------------------------------------------------------

# Words of PromQL that are not metric names: functions, aggregations, operators, modifiers.
_PROMQL_WORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right",
}  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, templates)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = _GROUPING.sub("", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = match.groups()
        if call or word in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_names_finds_the_selected_metrics_only() -> None:
    expr = (
        'sum by (route, le) (rate(a_bucket{route=~"x|y", status="5.."}[$__rate_interval])) '
        "/ on (pod) group_left b > 0.9 and absent(c) or d offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            values_of = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert values_of, query
            yield f"variable {variable['name']}", values_of.group(1)


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    queries = " ".join(expr for _title, expr in dashboard_queries())
    for metric in (
        "agent_gateway_http_requests_total",
        "agent_gateway_http_time_to_first_byte_seconds_bucket",
        "agent_gateway_streams_in_flight",
        "agent_gateway_run_waits_in_flight",
        "agent_gateway_store_buffered_events",
        "agent_gateway_store_oldest_event_age_seconds",
        "agent_gateway_db_pool_max_connections",
        "agent_gateway_store_db_pool_max_connections",
        "agent_gateway_rate_limit_decisions_total",
    ):
        assert metric in queries


def exported(text: str) -> set[str]:
    """Every sample name a ``/metrics`` page can carry, from its families (with or without
    samples yet): counters' ``_total``, histograms' ``_bucket``, ``_sum`` and ``_count``."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def test_every_query_names_only_metrics_the_service_exports(
    tenant: Tenant,
    make_consumer: ConsumerFactory,
    redis_client: aioredis.Redis,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    gateway_page = await (await tenant.client.get("/metrics")).text()
    consumer = await make_consumer()
    consumer_monitor = ConsumerMonitor(consumer, redis_client, db, settings)
    monitor = TestClient(TestServer(monitor_app(consumer_monitor)))
    await monitor.start_server()
    try:
        consumer_page = await (await monitor.get("/metrics")).text()
    finally:
        await monitor.close()
    names = exported(gateway_page) | exported(consumer_page)
    assert {
        "agent_gateway_http_time_to_first_byte_seconds_bucket",
        "agent_gateway_build_info",
        "agent_gateway_store_loop_age_seconds",
    } <= names

    queries = [(f"alert {rule['alert']}", rule["expr"]) for rule in alerting_rules()]
    queries += list(dashboard_queries())
    unknown = {
        f"{where}: {name}"
        for where, expr in queries
        for name in metric_names(expr)
        if name not in names
    }
    assert not unknown, sorted(unknown)
