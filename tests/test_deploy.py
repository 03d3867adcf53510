"""deploy/: the Grafana dashboard and the Prometheus alerts refer only to metrics flagwarden
exports (taken from prometheus_client's registry, not from a list), the rules pass
``promtool check rules`` and their fixtures pass ``promtool test rules``."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import flagwarden
from flagwarden.providers.snapshot import FileSnapshotStore, Snapshot, SnapshotWriter
from tests.conftest import ROOT, Project, wait_for

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "flagwarden.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
SRC = ROOT / "src" / "flagwarden"

ALERT_NAMES = {
    "FlagwardenFlagKilled",
    "FlagwardenGuardBreach",
    "FlagwardenVendorOutage",
    "FlagwardenStaleSnapshot",
    "FlagwardenUnregisteredFlagExposure",
    "FlagwardenBackgroundThreadUnhealthy",
    "FlagwardenNotificationsFailing",
}
# What the dashboard is for (the spec), each name checked against the registry below.
DASHBOARD_METRICS = {
    "feature_flag_evaluations_total",
    "flagwarden_capped_evaluations_total",
    "flagwarden_policy_violations_total",
    "flagwarden_flag_stage_percent",
    "flagwarden_flag_killed",
    "flagwarden_flag_paused",
    "flagwarden_guard_breaches_total",
    "flagwarden_data_quality",
    "flagwarden_provider_state",
    "flagwarden_fallback_active",
    "flagwarden_background_healthy",
    "flagwarden_notifications_failed_total",
}
# Labels Prometheus attaches at scrape time, on every series.
TARGET_LABELS = {"instance", "job"}

# -- what flagwarden exports ------------------------------------------------------------

_METRIC_TYPES = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def metric_modules() -> list[str]:
    """Every module under src/flagwarden that creates a prometheus_client metric."""
    modules = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "prometheus_client" in text and _METRIC_TYPES.search(text):
            parts = path.relative_to(SRC.parent).with_suffix("").parts
            modules.append(".".join(p for p in parts if p != "__init__"))
    return modules


@dataclass(frozen=True)
class Exported:
    names: frozenset[str]  # every sample name /metrics can serve
    labels: dict[str, frozenset[str]] = field(default_factory=dict)  # by sample name


@pytest.fixture(scope="module")
def exported() -> Exported:
    modules = metric_modules()
    assert "flagwarden.telemetry.metrics" in modules
    for module in modules:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    labels: dict[str, frozenset[str]] = {}
    for module in modules:
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, MetricWrapperBase):
                # prometheus_client keeps a metric's label names here (no public accessor).
                label_names = frozenset(value._labelnames)
                for family in value.describe():
                    for suffix in _SUFFIXES.get(family.type, ("",)):
                        labels[family.name + suffix] = label_names
    return Exported(frozenset(names), labels)


# -- the PromQL a dashboard or a rule uses ----------------------------------------------

_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      |(?P<range>\[[^\]]*\])
      |(?P<duration>(?:\d+(?:ms|[smhdwy]))+\b)
      |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<variable>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
      |(?P<op>=~|!~|!=|==|>=|<=|[{}(),=<>+\-*/%^@])
      |(?P<space>\s+)""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "topk"} | {
    "count_values",
    "bottomk",
    "quantile",
    "limitk",
    "limit_ratio",
}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


@dataclass
class Query:
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)  # in matchers and grouping clauses


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
    return tokens


def parse_promql(expr: str) -> Query:
    """The metric names and label names an expression refers to."""
    tokens = _tokens(expr)
    query = Query()
    depth, i = 0, 0  # depth: inside a selector's {...}
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "op" and text == "{":
            depth += 1
        elif kind == "op" and text == "}":
            depth -= 1
        elif kind == "ident" and depth:
            query.labels.add(text)  # a matcher's label
            if text == "__name__" and after[1] == "=" and i + 2 < len(tokens):
                query.metrics.add(tokens[i + 2][1][1:-1])
        elif kind == "ident" and text in _GROUPING:
            if after[1] == "(":  # group_left/group_right may come without a list
                i += 2
                while tokens[i][1] != ")":
                    if tokens[i][0] == "ident":
                        query.labels.add(tokens[i][1])
                    i += 1
        elif kind == "ident" and text in _AGGREGATIONS and after[1] in ("by", "without"):
            pass  # `sum by (x) (...)`
        elif kind == "ident" and text.lower() not in _KEYWORDS and after[1] != "(":
            query.metrics.add(text)
        i += 1
    return query


def label_values_query(query: str) -> Query:
    """Grafana's ``label_values(METRIC_OR_SELECTOR, LABEL)``."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    assert match is not None, f"not label_values(...): {query!r}"
    inner = parse_promql(match.group(1))
    inner.labels.add(match.group(2))
    return inner


def problems(queries: Iterable[tuple[str, Query]], exported: Exported) -> list[str]:
    """Each metric flagwarden does not export and each label its metrics do not have."""
    found = []
    for where, query in queries:
        for name in sorted(query.metrics - exported.names):
            found.append(f"{where}: {name} is not a metric flagwarden exports")
        known = set(TARGET_LABELS)
        for name in query.metrics:
            known |= exported.labels.get(name, frozenset())
        for label in sorted(query.labels - known - {"__name__"}):
            found.append(f"{where}: no metric of the expression has the label {label!r}")
    return found


def rule_queries(path: Path) -> Iterator[tuple[str, Query]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            yield f"{path.name}: {name}", parse_promql(rule["expr"])


def dashboard_queries(doc: dict[str, Any]) -> Iterator[tuple[str, Query]]:
    for panel in doc["panels"]:
        for target in panel["targets"]:
            where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
            yield where, parse_promql(target["expr"])
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            yield f"variable {variable['name']}", label_values_query(text)


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ("up", {"up"}, set()),
        (
            'sum by (a) (rate(foo_total{b="c", d=~"x|y"}[5m])) / on (a) group_left bar offset 5m'
            " > bool 0 or vector(1)",
            {"foo_total", "bar"},
            {"a", "b", "d"},
        ),
        (
            "(x unless x offset 1h30m) or increase(y[$__rate_interval]) > 1e3",
            {"x", "y"},
            set(),
        ),
        ('{__name__="z", k!="sum by (q)"} and ignoring (k) time() - w', {"z", "w"}, {"k"}),
        ("max(m) without (pid) > Inf", {"m"}, {"pid"}),
    ],
)
def test_the_promql_reader_finds_every_metric_and_label(
    expr: str, metrics: set[str], labels: set[str]
):
    query = parse_promql(expr)
    assert (query.metrics, query.labels - {"__name__"}) == (metrics, labels)


# -- the Grafana dashboard ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_dashboard_is_an_importable_grafana_dashboard(dashboard: dict[str, Any]):
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard.get("id") is None  # Grafana assigns it on import
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    flag = variables["flag"]
    assert flag["type"] == "query"
    assert flag["query"]["query"] == "label_values(flagwarden_flag_stage_percent, feature_flag_key)"
    assert flag["definition"] == flag["query"]["query"]
    assert flag["includeAll"] and flag["multi"] and flag["allValue"] == ".*"


def test_dashboard_panels_are_well_formed(dashboard: dict[str, Any]):
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel["title"]
        assert title and panel["type"] in {"timeseries", "stat", "bargauge", "table", "gauge"}
        assert panel["datasource"] == datasource, title
        assert panel["targets"], f"{title}: no targets"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), title
            assert target["datasource"] == datasource, title
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells[(x, y)]}"
                cells[(x, y)] = title


def test_dashboard_uses_only_exported_metrics_and_their_labels(
    dashboard: dict[str, Any], exported: Exported
):
    queries = list(dashboard_queries(dashboard))
    assert problems(queries, exported) == []
    used = set().union(*(q.metrics for _, q in queries))
    assert used >= DASHBOARD_METRICS, f"no panel for {sorted(DASHBOARD_METRICS - used)}"


def test_dashboard_filters_by_the_flag_variable(dashboard: dict[str, Any]):
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    filtered = [e for e in exprs if 'feature_flag_key=~"$flag"' in e]
    assert any("feature_flag_evaluations_total" in e for e in filtered)
    assert any("flagwarden_flag_stage_percent" in e for e in filtered)


# -- the alerting rules ---------------------------------------------------------------


@pytest.fixture(scope="module")
def alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_every_alert_is_there_with_for_severity_and_annotations(alerts: dict[str, Any]):
    assert set(alerts) == ALERT_NAMES
    for name, rule in alerts.items():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        for key in ("summary", "description"):
            assert "{{ $labels." in annotations[key], f"{name}: {key} names no label"


def test_rules_use_only_exported_metrics_and_their_labels(exported: Exported):
    assert problems(rule_queries(ALERTS), exported) == []


def test_the_stale_snapshot_alert_uses_the_snapshot_gauge(alerts: dict[str, Any]):
    expr = alerts["FlagwardenStaleSnapshot"]["expr"]
    assert parse_promql(expr).metrics >= {"flagwarden_snapshot_last_write_timestamp_seconds"}


def test_the_name_check_rejects_a_rule_file_with_a_wrong_metric(
    tmp_path: Path, exported: Exported, promtool: str
):
    text = ALERTS.read_text(encoding="utf-8")
    wrong = (
        text.replace("(flagwarden_flag_killed)", "(flagwarden_flag_kiled)")
        # a counter without its `_total`, as the Python code names it
        .replace("increase(flagwarden_guard_breaches_total[", "increase(flagwarden_guard_breaches[")
        .replace('{kind="unregistered"}[', '{kind="unregistered", flag="x"}[')
    )
    assert wrong.count("flagwarden_flag_kiled") == 1
    path = tmp_path / "wrong.yml"
    path.write_text(wrong, encoding="utf-8")
    # promtool cannot know: the file is valid PromQL...
    assert _run(promtool, "check", "rules", str(path)).returncode == 0
    # ...but names no metric flagwarden has.
    found = problems(rule_queries(path), exported)
    assert found == [
        "wrong.yml: FlagwardenFlagKilled: flagwarden_flag_kiled is not a metric flagwarden exports",
        "wrong.yml: FlagwardenFlagKilled: no metric of the expression has the label "
        "'feature_flag_key'",
        "wrong.yml: FlagwardenGuardBreach: flagwarden_guard_breaches is not a metric "
        "flagwarden exports",
        "wrong.yml: FlagwardenUnregisteredFlagExposure: no metric of the expression has the "
        "label 'flag'",
    ]


# -- promtool ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    """Debian's prometheus package provides promtool (.ci/run installs it). An install may be
    under way: wait a little, then fail saying what is missing, never skip."""
    deadline = time.monotonic() + 120
    while True:
        found = shutil.which("promtool") or (
            "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
        )
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(
                "promtool is not installed: install Debian's `prometheus` package "
                "(`apt-get install prometheus`, as .ci/run does) to check the alerting rules"
            )
        time.sleep(2)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_check_rules(promtool: str):
    result = _run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_promtool_test_rules(promtool: str):
    result = _run(promtool, "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_fixtures_fire_and_hold_back_every_alert():
    doc = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert doc["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires == ALERT_NAMES
    assert silent == ALERT_NAMES


def test_a_failing_promtool_test_fails(tmp_path: Path, promtool: str):
    """The promtool run above can fail: a fixture expecting the wrong labels does."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    text = ALERTS_TEST.read_text(encoding="utf-8")
    broken = text.replace("severity: critical", "severity: page", 1)
    assert broken != text
    (tmp_path / "alerts_test.yml").write_text(broken, encoding="utf-8")
    result = _run(promtool, "test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "FlagwardenVendorOutage" in result.stdout + result.stderr


# -- the snapshot gauge the stale-snapshot alert reads ------------------------------------

GAUGE = "flagwarden_snapshot_last_write_timestamp_seconds"


def _last_write(provider: str) -> float | None:
    return REGISTRY.get_sample_value(GAUGE, {"feature_flag_provider_name": provider})


def test_a_snapshot_write_sets_the_last_write_gauge(tmp_path: Path):
    written_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    snapshot = Snapshot("file", "deploy-test", written_at, {"flags": {}})
    store = FileSnapshotStore(tmp_path / "snapshot.json")
    writer = SnapshotWriter(store, lambda: snapshot)
    assert writer.write_now() == snapshot
    assert store.load() == snapshot
    assert _last_write("deploy-test") == written_at.timestamp()


def test_a_failed_snapshot_write_leaves_the_gauge(tmp_path: Path):
    class Broken:
        location = "file:/nowhere"

        def save(self, snapshot: Snapshot) -> None:
            raise OSError("disk full")

        def load(self) -> Snapshot | None:
            return None

    before = _last_write("deploy-broken")
    snapshot = Snapshot("file", "deploy-broken", datetime.now(UTC), {"flags": {}})
    assert SnapshotWriter(Broken(), lambda: snapshot).write_now() is None
    assert before is None
    assert _last_write("deploy-broken") is None


def test_the_running_chain_sets_the_gauge_when_it_writes_its_snapshot(project: Project):
    flags = {"flags": {"f": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}}}
    (project.root / "flags.json").write_text(json.dumps(flags))
    project.profile("deploy-file", {"type": "file", "path": "../flags.json"})
    config = project.config(
        "deploy-file",
        fallback={"snapshot": "file:.flagwarden/snapshot.json", "snapshot_debounce": 0.05},
    )
    started = time.time()
    flagwarden.configure(config)
    runtime = flagwarden.current()
    assert runtime is not None
    writer = runtime.provider.snapshot_writer
    assert writer is not None
    wait_for(lambda: writer.writes >= 1)
    assert project.snapshot_file.exists()
    written = _last_write("deploy-file")
    assert written is not None and started - 1 <= written <= time.time()
