"""The local pod executor's translation of a pod's container into a local process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podlocal import environment, expand, field_ref, remap_config_files, remap_strings, unmap_paths

MOUNTS = {
    "/data": "/tmp/pod/data",
    "/data/models": "/tmp/pod/models",
    "/etc/rlhf-operator": "/tmp/pod/config",
}
POD = {
    "metadata": {"name": "tiny-policy-0", "namespace": "ml", "uid": "u-1", "labels": {"stage": "policy"}},
    "spec": {"nodeName": "gpu-0", "serviceAccountName": "rlhf-stages"},
}


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("/data/x.jsonl", "/tmp/pod/data/x.jsonl"),
        ("/data/models/policy", "/tmp/pod/models/policy"),  # the longest mount wins
        ("/data", "/tmp/pod/data"),
        ("/database", "/database"),  # a prefix of a name is not a path under the mount
        ("--out=/data/out", "--out=/tmp/pod/data/out"),
        ("relative/data", "relative/data"),
    ],
)
def test_container_paths_under_a_mount_become_local(value: str, local: str) -> None:
    assert remap_strings(value, MOUNTS) == local


def test_paths_in_nested_config_are_remapped_and_output_maps_back() -> None:
    config = {"stages": [{"output": "/data/out", "steps": 3}], "name": "/etc/rlhf-operator/x.json"}
    local = remap_strings(config, MOUNTS)
    assert local == {
        "stages": [{"output": "/tmp/pod/data/out", "steps": 3}],
        "name": "/tmp/pod/config/x.json",
    }
    assert unmap_paths("wrote /tmp/pod/models/policy and /tmp/pod/data/out", MOUNTS) == (
        "wrote /data/models/policy and /data/out"
    )


def test_expand_follows_kubernetes_rules() -> None:
    env = {"RANK": "1", "HOST": "h"}
    assert expand("--rank=$(RANK) $(HOST):$(MISSING) $$(RANK)", env) == "--rank=1 h:$(MISSING) $(RANK)"


def test_field_refs_read_the_pod() -> None:
    assert field_ref(POD, "metadata.name") == "tiny-policy-0"
    assert field_ref(POD, "metadata.labels['stage']") == "policy"
    assert field_ref(POD, "metadata.annotations['absent']") == ""
    assert field_ref(POD, "spec.serviceAccountName") == "rlhf-stages"
    assert field_ref(POD, "status.podIP") == "127.0.0.1"


def test_environment_resolves_values_field_refs_and_paths(tmp_path: Path) -> None:
    container = {
        "env": [
            {"name": "OUT", "value": "/data/out"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "WHERE", "value": "$(POD) on $(HOSTNAME)"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},  # not resolved
        ]
    }
    env = environment(POD, container, MOUNTS, tmp_path)
    assert env["OUT"] == "/tmp/pod/data/out"
    assert env["POD"] == "tiny-policy-0"
    assert env["WHERE"] == "tiny-policy-0 on tiny-policy-0"
    assert "TOKEN" not in env
    assert env["PATH"].startswith(f"{tmp_path}:")


def test_config_files_are_rewritten_with_local_paths(tmp_path: Path) -> None:
    volumes = tmp_path / "volumes" / "config"
    volumes.mkdir(parents=True)
    (volumes / "stage.json").write_text(json.dumps({"output": "/data/out"}))
    (volumes / "stage.yaml").write_text("output: /data/models/policy\n")
    (volumes / "note.txt").write_text("/data/out stays as written")
    remap_config_files(tmp_path, MOUNTS)
    assert json.loads((volumes / "stage.json").read_text()) == {"output": "/tmp/pod/data/out"}
    assert (volumes / "stage.yaml").read_text() == "output: /tmp/pod/models/policy\n"
    assert (volumes / "note.txt").read_text() == "/data/out stays as written"
