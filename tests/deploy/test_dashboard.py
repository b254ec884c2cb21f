"""The Grafana dashboard queries only metrics (and labels) that the exporter really produces.

The exporter's output comes from `GatewayCollector` fed with real stats objects of every kind (Modbus,
BACnet, delivery, normaliser), filled as if events had flowed, so that every family has samples.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.bacnet.plan import DeviceCounters
from adapters.modbus.stats import DeviceStats
from gateway.core.normaliser import NormaliserStats
from gateway.delivery.stats import DeliveryStats
from gateway.ops.metrics import GatewayCollector, Sources
from tests.support.metrics import StaticDevices
from tests.support.paths import REPO
from tests.support.sites import minimal_site

DASHBOARD = REPO / "deploy" / "grafana" / "gcmk-gateway.json"
FROM_PROMETHEUS = {"up"}  # made by Prometheus per target, not by the exporter
TARGET_LABELS = {"job", "instance", "le"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def exporter_output() -> str:
    site = minimal_site()  # one Modbus device (panel-1) and one BACnet device (fire-1)
    normaliser = NormaliserStats(readings=10, events=Counter({("panel-1", "intrusion", "burglary"): 2}))
    modbus = DeviceStats("panel-1", polls=3, failed_polls=1, online=True)
    for duration in (0.01, 0.02, 0.4):
        modbus.poll_durations.append(duration)
    modbus.errors["DeviceTimeout"] += 1
    bacnet = DeviceCounters(online=True, cov_subscriptions_active=4, last_contact=datetime.now(UTC))
    bacnet.errors["DeviceRejected"] += 1
    delivery = DeliveryStats(connected=True, journaled=2, published=1, journal_depth=1, oldest_undelivered_age=2.0)
    delivery.latency.append(0.05)
    sources = Sources(
        site=site,
        config_hash="0123abcd",
        normaliser=normaliser,
        accepted=lambda: 2,
        components=("sink", "modbus", "bacnet"),
        adapters=[
            StaticDevices("modbus", {"panel-1": modbus.snapshot()}),
            StaticDevices("bacnet", {"fire-1": bacnet.snapshot()}),
        ],
        delivery=delivery,
    )
    registry = CollectorRegistry()
    registry.register(GatewayCollector(sources))
    return generate_latest(registry).decode()


def exported() -> tuple[set[str], set[str]]:
    """(sample names, label names) in the exporter's output."""
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(exporter_output()):
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def expressions(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in walk_panels(doc["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for var in doc["templating"]["list"]:
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that name metrics: not functions, keywords, labels or strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)", r" \1 ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\s*(\()?", expr):
        if match.group(2) is None and match.group(1) not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def label_names(expr: str) -> set[str]:
    found: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        found.update(x.strip() for x in group.split(",") if x.strip())
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        found.update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    found.update(re.findall(r"\{\{\s*(\w+)\s*\}\}", expr))
    return found


def test_the_metric_name_extraction_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (site, le) (rate(gcmk_x_bucket{site=~"$site"}[$__rate_interval])))'
        " / on (instance) group_left (site) gcmk_y and time() - gcmk_z offset 5m"
    )
    assert metric_names(expr) == {"gcmk_x_bucket", "gcmk_y", "gcmk_z"}
    assert metric_names("label_values(gcmk_config_info, site)") == {"gcmk_config_info"}
    assert label_names(expr) == {"site", "le", "instance"}


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    names, _ = exported()
    doc = dashboard()
    used = set().union(*(metric_names(e) for e in expressions(doc)))
    missing = used - names - FROM_PROMETHEUS
    assert not missing, f"the dashboard queries metrics the gateway does not export: {sorted(missing)}"
    assert len(used) >= 15, "the dashboard should cover the operator metrics"


def test_every_label_the_dashboard_uses_is_exported() -> None:
    _, labels = exported()
    doc = dashboard()
    texts = expressions(doc) + [
        t.get("legendFormat", "") for p in walk_panels(doc["panels"]) for t in p.get("targets", [])
    ]
    used = set().union(*(label_names(e) for e in texts))
    assert used - labels - TARGET_LABELS == set()


def test_the_dashboard_selects_a_building_and_every_query_honours_it() -> None:
    doc = dashboard()
    site = next(v for v in doc["templating"]["list"] if v["name"] == "site")
    assert site["multi"] and site["includeAll"]
    for expr in expressions(doc):
        if "label_values" in expr:
            continue
        for name in metric_names(expr) - {"gcmk_build_info"}:  # build info is joined on instance
            assert re.search(re.escape(name) + r'\{[^}]*site=~"\$site"', expr), f"{name} ignores $site in {expr}"


def test_panels_have_unique_ids_and_a_datasource() -> None:
    panels = list(walk_panels(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
