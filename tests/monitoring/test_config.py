"""The monitoring configuration: Prometheus config, alert rules and their tests, Grafana dashboards.

promtool (Debian package ``prometheus``) validates the config and parses every PromQL query; metric
and label names are checked against :class:`monitoring.metrics.Metrics`, where every metric is
defined once.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitoring.metrics import AuditMetrics, Metrics, ReviewMetrics
from testbed.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
GRAFANA_DIR = ROOT / "monitoring" / "grafana"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))

COMPONENT_JOBS = {"inference-worker", "training-worker", "dispatcher"}
DATASOURCE_UID = "prometheus"
SEVERITIES = {"info", "warning", "critical"}
# Labels every scraped series carries besides its own: prometheus.yml sets job, instance and the
# `component` target label.
SCRAPE_LABELS = {"job", "instance", "component"}
# Grafana's interval variables, replaced by a duration so that promtool can parse the query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}

_METRIC = re.compile(r"\blabeler_[a-z_]+")
_SELECTOR = re.compile(r"\b(labeler_[a-z_]+)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool", "apt-get install -y prometheus")


def _promtool(promtool: str, *args: str | Path) -> None:
    result = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (
        f"promtool {args[0]} {args[1]} failed:\n{result.stdout}{result.stderr}"
    )


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for every query of every dashboard."""
    queries = []
    for path in DASHBOARDS:
        for panel in _panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                where = f"{path.name} panel {panel['id']} ({panel['title']}) {target['refId']}"
                queries.append((where, target["expr"]))
    return queries


def _all_queries() -> list[tuple[str, str]]:
    alerts = [(f"alert {rule['alert']}", rule["expr"]) for rule in _alert_rules()]
    return alerts + _dashboard_queries()


def _defined_metrics() -> dict[str, tuple[str, set[str]]]:
    """Series name -> (type, label names) of every metric :class:`Metrics` (and the review
    app's :class:`ReviewMetrics`) defines."""
    registry = CollectorRegistry()
    groups = (Metrics(registry), ReviewMetrics(registry))
    # Families carry no label names until a child exists; the metric objects know them.
    label_names = {
        collector.describe()[0].name: set(collector._labelnames)
        for metrics in groups
        for collector in vars(metrics).values()
    }
    label_names |= AuditMetrics(registry, dict).label_names  # read at scrape time from Redis
    defined = {}
    for family in registry.collect():
        # prometheus_client names a counter family without the `_total` its samples carry.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        defined[name] = (family.type, label_names[family.name])
    return defined


def _metric_of(series: str, defined: dict[str, tuple[str, set[str]]]) -> str:
    """The metric a series belongs to: a histogram's series carry a suffix."""
    for suffix in _HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and defined.get(base, ("", set()))[0] == "histogram":
            return base
    return series


# --- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_config_is_valid(promtool: str) -> None:
    # `check config` also checks the rule files the config names.
    _promtool(promtool, "check", "config", PROMETHEUS_CONFIG)


def test_alert_rules_are_valid(promtool: str) -> None:
    _promtool(promtool, "check", "rules", ALERTS)


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    _promtool(promtool, "test", "rules", ALERTS_TEST)


def test_every_labeler_component_is_scraped_and_watched() -> None:
    config = _load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == [ALERTS.name]
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert set(targets) == COMPONENT_JOBS | {"prometheus", "review"}
    for job in COMPONENT_JOBS:
        assert targets[job] == [f"{job}:9100"]
    assert targets["review"] == ["review:8300"]  # the review app's own web port
    (worker_down,) = (r for r in _alert_rules() if r["alert"] == "LabelerWorkerDown")
    watched = re.search(r'job=~"([^"]+)"', worker_down["expr"])
    assert watched is not None
    assert set(watched.group(1).split("|")) == COMPONENT_JOBS


def test_every_alert_has_a_duration_severity_and_annotations() -> None:
    rules = _alert_rules()
    assert rules
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in _load_yaml(ALERTS_TEST)["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert alerts - firing == set(), "alerts without a case where they fire"
    assert alerts - quiet == set(), "alerts without a case where they stay quiet"


# --- Grafana ------------------------------------------------------------------------------------


def test_there_are_dashboards() -> None:
    assert DASHBOARDS, f"no dashboard JSON under {GRAFANA_DIR / 'dashboards'}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_query_the_prometheus_datasource(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"]
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":  # a row only groups panels: no queries, no datasource
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == DATASOURCE_UID
            assert target["expr"].strip(), panel["title"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    provisioning = GRAFANA_DIR / "provisioning"
    (datasource,) = _load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = _load_yaml(provisioning / "dashboards" / "labeler.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    # promtool has no "parse this expression" command; recording rules are parsed by check rules.
    rules = []
    for index, (where, expr) in enumerate(_dashboard_queries()):
        for variable, duration in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, duration)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    assert rules
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    _promtool(promtool, "check", "rules", rule_file)


# --- names against monitoring/metrics.py ---------------------------------------------------------


def test_queries_name_only_defined_metrics() -> None:
    defined = _defined_metrics()
    undefined = sorted(
        f"{where}: {series}"
        for where, expr in _all_queries()
        for series in _METRIC.findall(expr)
        if _metric_of(series, defined) not in defined
    )
    assert undefined == [], "metrics not defined in monitoring/metrics.py"


def test_selectors_use_only_defined_labels() -> None:
    defined = _defined_metrics()
    wrong: list[str] = []
    for where, expr in _all_queries():
        for series, matchers in _SELECTOR.findall(expr):
            metric = _metric_of(series, defined)
            if metric not in defined:
                continue  # reported by test_queries_name_only_defined_metrics
            allowed = defined[metric][1] | SCRAPE_LABELS
            if series.endswith("_bucket"):
                allowed = allowed | {"le"}
            labels = set(_MATCHER_LABEL.findall(_QUOTED.sub('""', matchers)))
            wrong.extend(f"{where}: {series} has no label {label!r}" for label in labels - allowed)
    assert wrong == []


def test_defined_metrics_are_found() -> None:
    # Guards the two tests above against comparing with an empty set.
    defined = _defined_metrics()
    assert defined["labeler_images_processed_total"] == ("counter", {"outcome", "reason"})
    assert defined["labeler_stage_duration_seconds"][0] == "histogram"
    assert defined["labeler_queue_depth"] == ("gauge", {"queue", "state"})
