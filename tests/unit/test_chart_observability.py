"""The chart's operating pieces: alerts and a dashboard that read series the operator really serves,
JSON logs, `global.imageRegistry`, `kubeVersion`."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from rlhf_operator.job_metrics import job_series
from tests.chart_support import (
    CHART,
    chart_yaml,
    fail_message,
    helm,
    one,
    operator_container,
    operator_env,
    render,
)
from tests.unit.test_job_metrics import RUNNING, TRIPPED

#: Every series name the operator serves for a job (a running one and a failed one together).
SERVED = {sample.name for family in job_series([RUNNING, TRIPPED]) for sample in family.samples} | {
    f"rlhf_job_{name}" for name in ("win_rate", "reward_model_accuracy")
}
OBSERVABILITY = {"metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}


def series_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(rlhf_job_[a-z_]+)", expr))


def test_alerts_read_series_the_operator_serves() -> None:
    rule = one(render(OBSERVABILITY), "PrometheusRule")
    rules = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(rules) == {"RLHFJobGuardrailTripped", "RLHFJobFailed", "RLHFJobStuckWaiting"}
    for alert in rules.values():
        assert series_in(alert["expr"]) and series_in(alert["expr"]) <= SERVED, alert["expr"]
        assert "{{ $labels.rlhfjob }}" in alert["annotations"]["summary"]
    assert rules["RLHFJobStuckWaiting"]["for"] == "30m"
    waiting = render({"metrics": {"prometheusRule": {"enabled": True, "waitingMinutes": 90}}})
    assert one(waiting, "PrometheusRule")["spec"]["groups"][0]["rules"][2]["for"] == "90m"
    assert "needs metrics.port > 0" in fail_message(
        {"metrics": {"port": 0, "prometheusRule": {"enabled": True}}}
    )


def test_dashboard_panels_read_series_the_operator_serves() -> None:
    config = one(render(OBSERVABILITY), "ConfigMap", "r-rlhf-operator-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard: dict[str, Any] = json.loads(config["data"]["rlhf-jobs.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 6
    for expr in exprs:
        assert series_in(expr) and series_in(expr) <= SERVED, expr
    assert {"rlhf_job_mean_reward", "rlhf_job_kl", "rlhf_job_gpu_seconds_total"} <= set().union(
        *map(series_in, exprs)
    )
    assert not [d for d in render() if d["kind"] in ("PrometheusRule", "ConfigMap")]


def test_json_logs_are_a_value() -> None:
    assert operator_env(render())["RLHF_OPERATOR_LOG_FORMAT"] == "text"
    assert operator_env(render({"logFormat": "json"}))["RLHF_OPERATOR_LOG_FORMAT"] == "json"


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ("ghcr.io/rlhf-operator/operator", "mirror.example:5000/ecr/rlhf-operator/operator:0.1.0"),
        ("rlhf-operator/operator", "mirror.example:5000/ecr/rlhf-operator/operator:0.1.0"),
        ("localhost/operator", "mirror.example:5000/ecr/operator:0.1.0"),
    ],
)
def test_global_image_registry_replaces_every_images_registry(repository: str, expected: str) -> None:
    values = {
        "global": {"imageRegistry": "mirror.example:5000/ecr"},
        "images": {"operator": {"repository": repository}},
    }
    docs = render(values)
    assert operator_container(docs)["image"] == expected
    assert one(docs, "Pod")["spec"]["containers"][0]["image"] == expected  # the helm test hook
    env = operator_env(docs)
    assert env["RLHF_OPERATOR_IMAGE_WORKER"] == "mirror.example:5000/ecr/rlhf-operator/worker:0.1.0"
    assert env["RLHF_OPERATOR_IMAGE_TRAINER"] == "mirror.example:5000/ecr/rlhf-operator/trainer:0.1.0"
    assert (
        env["RLHF_OPERATOR_IMAGE_TRAINER_VLLM"] == "mirror.example:5000/ecr/rlhf-operator/trainer-vllm:0.1.0"
    )


def test_kube_version_is_declared_and_enforced() -> None:
    assert chart_yaml()["kubeVersion"] == ">=1.31.0-0"
    result = helm("template", "r", str(CHART), "--kube-version", "1.30.4", check=False)
    assert result.returncode != 0 and "incompatible with Kubernetes v1.30.4" in result.stderr
    assert helm("template", "r", str(CHART), "--kube-version", "1.31.2-eks-1a2b3c4").returncode == 0
