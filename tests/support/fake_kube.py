"""An in-memory stand-in for `kube.Kube` (the controller's `KubeApi` protocol) that records every
request, for unit tests of the controller. Integration tests use the real API server."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from rlhf_operator.api.secret_references import SECRET_OPT_IN_LABEL
from rlhf_operator.plan import Event, RequestRefusedError

Manifest = dict[str, Any]


@dataclass
class FakeKube:
    #: (kind, namespace, name) -> object
    objects: dict[tuple[str, str, str], Manifest] = field(default_factory=dict)
    #: Every request as (verb, kind, name), in order.
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    absent: tuple[str, ...] = ()
    logs: dict[str, str] = field(default_factory=dict)
    #: Secret name -> its labels; a Secret not listed has opted in to RLHFJobs.
    secret_label_sets: dict[str, dict[str, str]] = field(default_factory=dict)
    #: kind -> (code, reason): creating an object of that kind is refused as the API server would.
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)

    def add_rlhfjob(self, body: Manifest) -> None:
        meta = body["metadata"]
        self.objects[("RLHFJob", meta["namespace"], meta["name"])] = copy.deepcopy(body)

    def count(self, verb: str, kind: str | None = None) -> int:
        return sum(1 for v, k, _ in self.requests if v == verb and kind in (None, k))

    def create(self, manifest: Manifest) -> bool:
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        self.requests.append(("create", manifest["kind"], meta["name"]))
        if manifest["kind"] in self.refuse:
            raise RequestRefusedError(
                "create", manifest["kind"], meta["name"], *self.refuse[manifest["kind"]]
            )
        if key in self.objects:
            return False
        self.objects[key] = copy.deepcopy(manifest)
        return True

    def patch(self, kind: str, namespace: str, name: str, body: Manifest) -> None:
        self.requests.append(("patch", kind, name))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.requests.append(("delete", kind, name))
        self.objects.pop((kind, namespace, name), None)

    def _update_job(self, namespace: str, name: str, **changes: Any) -> Manifest:
        body = self.objects[("RLHFJob", namespace, name)]
        version = int(body["metadata"].get("resourceVersion") or 0) + 1
        body["metadata"]["resourceVersion"] = str(version)
        for key, value in changes.items():
            if key == "finalizers":
                body["metadata"]["finalizers"] = value
            else:
                body[key] = copy.deepcopy(value)
        return copy.deepcopy(body)

    def patch_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        self.requests.append(("patch_status", "RLHFJob", name))
        return self._update_job(namespace, name, status=status)

    def set_finalizers(self, namespace: str, name: str, finalizers: list[str]) -> Manifest | None:
        self.requests.append(("set_finalizers", "RLHFJob", name))
        return self._update_job(namespace, name, finalizers=finalizers)

    def post_event(self, namespace: str, name: str, uid: str, event: Event) -> None:
        self.events.append(event)

    def missing(self, namespace: str, needed: list[tuple[str, str]]) -> tuple[str, ...]:
        self.requests.append(("get", "dependencies", namespace))
        return self.absent

    def secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        self.requests.append(("get", "Secret", name))
        return self.secret_label_sets.get(name, {SECRET_OPT_IN_LABEL: "true"})

    def log_tail(self, namespace: str, pod: str, lines: int = 50) -> str | None:
        self.requests.append(("log", "Pod", pod))
        return self.logs.get(pod)
