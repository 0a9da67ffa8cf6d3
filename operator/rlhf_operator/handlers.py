"""Kopf wiring: watches feed the controller's store, and every event of an RLHFJob or of one of
its children reconciles that RLHFJob. The controller lives in Kopf's `memo` (set by operator_main)."""

from __future__ import annotations

from typing import Any

import kopf

from rlhf_operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from rlhf_operator.controller import Controller
from rlhf_operator.naming import LABEL_MANAGED_BY, MANAGED_BY

MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}


def controller_of(memo: kopf.Memo) -> Controller:
    controller = getattr(memo, "controller", None)
    assert isinstance(controller, Controller), "operator_main puts the controller in Kopf's memo"
    return controller


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def on_rlhfjob(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    controller = controller_of(memo)
    body = event["object"]
    if event["type"] == "DELETED":
        controller.store.drop_job((body["metadata"]["namespace"], body["metadata"]["name"]))
        return
    controller.reconcile(controller.store.put_job(body))


def _on_child(kind: str, event: dict[str, Any], memo: kopf.Memo) -> None:
    controller = controller_of(memo)
    uid = controller.store.put_child(kind, event["object"], deleted=event["type"] == "DELETED")
    key = controller.store.key_of_uid(uid) if uid else None
    if key is not None:
        controller.reconcile(key)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)  # type: ignore[arg-type]
def on_job(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _on_child("Job", event, memo)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)  # type: ignore[arg-type]
def on_deployment(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _on_child("Deployment", event, memo)


@kopf.on.event("v1", "pods", labels=MANAGED)  # type: ignore[arg-type]
def on_pod(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _on_child("Pod", event, memo)


@kopf.on.event("v1", "services", labels=MANAGED)  # type: ignore[arg-type]
def on_service(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _on_child("Service", event, memo)


@kopf.on.event("v1", "configmaps", labels=MANAGED)  # type: ignore[arg-type]
def on_config_map(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _on_child("ConfigMap", event, memo)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)  # type: ignore[arg-type]
def on_network_policy(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _on_child("NetworkPolicy", event, memo)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)  # type: ignore[arg-type]
def on_disruption_budget(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _on_child("PodDisruptionBudget", event, memo)
