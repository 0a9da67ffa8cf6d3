"""The RLHFJob fields the chart's ValidatingAdmissionPolicy checks, as data for its template.

`make crd` writes `admission_json()` to `charts/rlhf-operator/files/admission/rlhfjob-fields.json`
(a unit test checks it is current): the template then writes one set of rules per pod settings
field and one rule per Secret reference, so a new stage or a new Secret field of the API reaches
the admission policy without editing the template.
"""

from __future__ import annotations

import json

from rlhf_operator.api.secret_references import SECRET_REFERENCES
from rlhf_operator.api.v1alpha1 import PodSettings, Stages

ADMISSION_FIELDS_FILE = "files/admission/rlhfjob-fields.json"


def pod_settings_paths() -> list[str]:
    """`stages.<stage>.pod` for every stage whose spec has pod settings (under `object.spec`)."""
    paths = []
    for name, field in Stages.model_fields.items():
        stage = field.annotation
        assert isinstance(stage, type), name
        pod = stage.model_fields.get("pod")
        if pod is not None and isinstance(pod.annotation, type) and issubclass(pod.annotation, PodSettings):
            paths.append(f"stages.{field.alias or name}.pod")
    return paths


def admission_json() -> str:
    fields = {
        "podSettings": pod_settings_paths(),
        "secretReferences": [{"path": ref.path, "cel": ref.cel} for ref in SECRET_REFERENCES],
    }
    return json.dumps(fields, indent=2) + "\n"
