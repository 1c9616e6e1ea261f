"""Monitoring that scrapes what exists: the PodMonitor reaches the Argo controller as a stock install runs it, and
every metric the Grafana dashboard queries is emitted by a component the project ships."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from stereo_spot.pipelines.compile import WORKFLOW_TEMPLATE_FILE
from tests.test_manifests_validate import MANIFESTS, _find, render

# What Argo's install.yaml runs (manifests/base/workflow-controller/workflow-controller-deployment.yaml, identical
# in v3.7.9 and v4.1.2): pods labelled app=workflow-controller with the container port `metrics` (9090), and no
# Service in front of them (only the quick-start manifests add workflow-controller-metrics).
CONTROLLER_POD_LABELS = {"app": "workflow-controller"}
CONTROLLER_METRICS_PORT = "metrics"

# Argo's Prometheus exporter namespaces every metric, the templates' own included, with `argo_workflows`
# (workflow/controller/controller.go: metrics.New(ctx, `workflows-controller`, `argo_workflows`, ...);
# util/telemetry/exporter_prometheus.go: prometheus.WithNamespace(namespace), WithoutCounterSuffixes(),
# WithoutUnits()): a template metric `x` is scraped as `argo_workflows_x`, a counter gains no `_total`, and a
# histogram is `_bucket`, `_sum`, `_count`.
ARGO_PREFIX = "argo_workflows_"
# The controller's own metrics in both v3.7.9 and v4.1.2 (util/telemetry/builder/values.yaml, names snake-cased
# by util/telemetry/builder/builder.go upperToSnake), with the exporter's prefix added where they are used.
CONTROLLER_COUNTERS_AND_GAUGES = (
    "cronworkflows_concurrencypolicy_triggered", "cronworkflows_triggered_total", "deprecated_feature",
    "error_count", "gauge", "is_leader", "k8s_request_total", "log_messages", "pod_missing", "pod_pending_count",
    "pods_gauge", "pods_total_count", "queue_adds_count", "queue_depth_gauge", "queue_longest_running",
    "queue_retries", "queue_unfinished_work", "total_count", "version", "workers_busy_count", "workflow_condition",
    "workflowtemplate_triggered_total",
)
CONTROLLER_HISTOGRAMS = ("k8s_request_duration", "operation_duration_seconds", "queue_duration", "queue_latency",
                         "workflowtemplate_runtime")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions (followed by `(`),
    keywords, label names (inside `{...}` or a `by (...)` clause), strings or ranges."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)                       # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                                # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                               # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name, rest = match.group(0), text[match.end():]
        if rest.lstrip().startswith("(") or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_reads_promql():
    """The parser itself: functions, label names, strings and ranges are not metric names."""
    expr = ('histogram_quantile(0.9, sum by (le, step) (rate(a_bucket{status="Succeeded", x=~"b|c"}[6h]))) '
            '/ on (step) group_left sum without (pod) (b_total) * 60 + c')
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def _template_metric_series() -> set[str]:
    """The series the WorkflowTemplate's own metrics (Argo custom metrics) become once scraped."""
    template = yaml.safe_load((MANIFESTS / "generated" / WORKFLOW_TEMPLATE_FILE).read_text())
    series = set()
    for step in template["spec"]["templates"]:
        for metric in (step.get("metrics") or {}).get("prometheus", []):
            name = ARGO_PREFIX + metric["name"]
            series |= {name + s for s in HISTOGRAM_SERIES} if "histogram" in metric else {name}
    return series


def _controller_series() -> set[str]:
    return ({ARGO_PREFIX + n for n in CONTROLLER_COUNTERS_AND_GAUGES}
            | {ARGO_PREFIX + n + s for n in CONTROLLER_HISTOGRAMS for s in HISTOGRAM_SERIES})


def _worker_series() -> set[str]:
    pytest.importorskip("prometheus_client")
    from stereo_spot.cluster.metrics import WorkerMetrics

    return {sample.name for family in WorkerMetrics().registry.collect() for sample in family.samples}


@pytest.fixture(scope="module")
def aws_docs() -> list[dict]:
    return render(MANIFESTS / "overlays" / "aws")


def _dashboard(docs: list[dict]) -> dict:
    config = _find(docs, "ConfigMap", "stereo-spot-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config["data"].values()
    return json.loads(text)


def test_the_controller_is_scraped_as_a_stock_install_runs_it(aws_docs):
    """The former ServiceMonitor selected a Service the stock install does not have, over http, while the
    controller serves https with a self-signed certificate since 3.6 (controller.go `GetSecure(true)`,
    exporter_prometheus.go `ListenAndServeTLS` on GenerateX509KeyPairTLSConfig). Catches a selector or port
    that matches nothing Argo ships, a plain-http scrape, or a scrape that would reject the certificate."""
    assert not [d for d in aws_docs if d["kind"] == "ServiceMonitor"]
    monitor = _find(aws_docs, "PodMonitor", "argo-workflow-controller")
    spec = monitor["spec"]
    assert spec["namespaceSelector"]["matchNames"] == ["argo"]
    assert spec["selector"]["matchLabels"].items() <= CONTROLLER_POD_LABELS.items()
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == CONTROLLER_METRICS_PORT and endpoint.get("path", "/metrics") == "/metrics"
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["insecureSkipVerify"] is True


def test_every_dashboard_metric_is_emitted_by_a_shipped_component(aws_docs):
    """Each metric name in the dashboard's PromQL is one the WorkflowTemplate's own metrics become (with Argo's
    prefix), one of the controller's, or one of the SQS worker's registry. Catches an unprefixed template
    metric (`stereo_spot_step_duration_seconds_bucket` is never scraped) or a name nothing emits."""
    template, controller, worker = _template_metric_series(), _controller_series(), _worker_series()
    known = template | controller | worker
    dashboard = _dashboard(aws_docs)
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= known, (panel["title"], names - known)
            used |= names
    assert "argo_workflows_gauge" in used and "argo_workflows_total_count" in used


def test_the_dashboard_shows_the_argo_path_and_says_which_panels_are_the_workers(aws_docs):
    """On the Argo path no SQS worker runs: the pipeline's own metrics must be on the dashboard (every one the
    WorkflowTemplate defines), and a panel fed only by the worker's registry says so in its title. Catches the
    former dashboard, six of whose eight panels showed only worker series without saying so."""
    template, worker = _template_metric_series(), _worker_series()
    dashboard = _dashboard(aws_docs)
    used_template = set()
    for panel in dashboard["panels"]:
        names = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        used_template |= names & template
        if names <= worker:
            assert "SQS worker" in panel["title"], panel["title"]
    template_metrics = {re.sub(r"_(bucket|sum|count)$", "", s) if s.endswith(HISTOGRAM_SERIES) else s
                        for s in template}
    shown = {re.sub(r"_(bucket|sum|count)$", "", s) if s.endswith(HISTOGRAM_SERIES) else s
             for s in used_template}
    assert shown == template_metrics
