"""The generated CRD: committed file up to date, structural, bounded, documented, rules in sync."""

from __future__ import annotations

from typing import Any

import pytest

from rlhf_operator.api import crdgen
from rlhf_operator.api import v1alpha1 as api
from rlhf_operator.api.base import ApiModel


def _schema() -> dict[str, Any]:
    version: dict[str, Any] = crdgen.crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += _nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += _nodes(node[key], f"{path}[]")
    return found


def test_committed_crd_is_up_to_date() -> None:
    committed = crdgen.CRD_PATH.read_text(encoding="utf-8") if crdgen.CRD_PATH.exists() else ""
    assert committed == crdgen.render(), (
        f"{crdgen.CRD_PATH.name} differs from the models: run `rlhf-operator crd --write` and commit the result"
    )


def test_check_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check"]) == 0
    assert crdgen.main([]) == 0
    assert capsys.readouterr().out == crdgen.render()


def test_names() -> None:
    crd = crdgen.crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "rlhfjobs.rlhf-operator.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert (names["kind"], names["plural"], names["singular"]) == ("RLHFJob", "rlhfjobs", "rlhfjob")
    assert names["shortNames"] == ["rlhf"] and names["categories"] == ["rlhf"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in crdgen.crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    normal = [n for n, c in columns.items() if c.get("priority", 0) == 0]
    wide = [n for n, c in columns.items() if c.get("priority") == 1]
    assert normal == ["Stage", "Status", "Reward", "KL", "Win-Rate", "GPU-Hours", "Age"]
    assert wide == ["Algorithm", "Step", "RM-Acc", "Entropy", "Truncated", "Cost", "Message"]


def test_schema_is_structural() -> None:
    for path, node in _nodes(_schema()):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const"} & set(node), path
        # Untyped only where Kubernetes allows it: a value of any JSON the API server keeps as given.
        untyped = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert untyped or node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        assert not isinstance(node.get("additionalProperties"), bool), path


def test_schema_is_bounded_and_documented() -> None:
    props = _schema()["properties"]
    assert crdgen.lint(props["spec"], "spec") == []
    assert crdgen.lint(props["status"], "status") == []


def test_lint_finds_problems() -> None:
    bad = {
        "type": "object",
        "properties": {"x": {"type": "string"}, "n": {"type": "integer", "description": "n"}},
    }
    assert crdgen.lint(bad, "spec") == [
        "spec: no description",
        "spec.x: no description",
        "spec.x: string without maxLength",
        "spec.n: number without minimum and maximum",
    ]


def _models() -> set[type[ApiModel]]:
    seen: set[type[ApiModel]] = set()
    todo: list[type[ApiModel]] = [api.RLHFJobSpec]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            for arg in _type_args(field.annotation):
                if isinstance(arg, type) and issubclass(arg, ApiModel):
                    todo.append(arg)
    return seen


def _type_args(annotation: Any) -> list[Any]:
    args = [annotation]
    for sub in getattr(annotation, "__args__", ()):
        args += _type_args(sub)
    return args


def test_every_python_rule_is_in_the_crd() -> None:
    crd_rules = {
        (v["rule"], v["message"])
        for _, node in _nodes(_schema())
        for v in node.get("x-kubernetes-validations", [])
    }
    models = _models()
    assert api.GpuResources in models and api.HeldOut in models
    for model in models:
        for rule in model.cel_rules:
            assert (rule.cel, rule.message) in crd_rules, f"{model.__name__}: {rule.message}"
    assert all("must" in message for _, message in crd_rules)


def test_immutability_rules() -> None:
    spec = _schema()["properties"]["spec"]
    for name in ("baseModel", "dataset", "storage", "stages"):
        rules = spec["properties"][name]["x-kubernetes-validations"]
        assert {
            "rule": "self == oldSelf",
            "message": f"`{name}` must not change: it is immutable after creation; create a new RLHFJob instead",
        } in rules
    assert "x-kubernetes-validations" not in spec["properties"]["suspend"]
    assert any("oldSelf.queueName" in r["rule"] for r in spec["x-kubernetes-validations"])


def test_defaults_match_the_models() -> None:
    spec = _schema()["properties"]["spec"]
    stages = spec["properties"]["stages"]
    assert api.Stages.model_validate(stages["default"]) == api.Stages()
    policy = stages["properties"]["policy"]["properties"]
    assert policy["algorithm"]["default"] == "ppo" and "default" not in policy["klCoef"]
    assert policy["pod"]["properties"]["resources"]["properties"]["gpus"]["default"] == 1
    precompute_gpus = stages["properties"]["precompute"]["properties"]["pod"]["properties"]["resources"][
        "properties"
    ]
    assert precompute_gpus["gpus"]["default"] == 0
    assert spec["properties"]["dataset"]["properties"]["heldOut"]["default"]["fraction"] == 0.2
    assert "default" not in spec["properties"]["dataset"]["properties"]["heldOut"]["properties"]["fraction"]


def test_list_types() -> None:
    status = _schema()["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert status["stages"]["x-kubernetes-list-map-keys"] == ["name"]
    for path, node in _nodes(_schema()):
        if node.get("type") == "array":
            assert node.get("x-kubernetes-list-type") in {"atomic", "map"}, path
