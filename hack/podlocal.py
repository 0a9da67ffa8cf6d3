"""A pod's container as a local process: what the pod executor (`podexecutor`) translates.

Pure functions of the pod's manifest, plus the few file writes that stand in for mounts: container
paths under a mount become local directories (in the command, the environment and config files)
and back again in what the process reports; `$(VAR)` expansion and fieldRefs as the kubelet does
them; logs in the CRI format `kubectl logs` reads.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def remap_path(value: str, mounts: dict[str, str]) -> str:
    """`value` with a leading container mount path replaced by its local directory."""
    for container_path in sorted(mounts, key=len, reverse=True):
        local = mounts[container_path]
        if value == container_path or value.startswith(container_path.rstrip("/") + "/"):
            return local.rstrip("/") + value[len(container_path.rstrip("/")) :]
    return value


def unmap_paths(text: str, mounts: dict[str, str]) -> str:
    """Local directories in a program's output back to the container paths the pod sees."""
    for container_path, local in sorted(mounts.items(), key=lambda item: len(item[1]), reverse=True):
        text = text.replace(local.rstrip("/"), container_path.rstrip("/"))
    return text


def remap_strings(value: Any, mounts: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: remap_strings(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [remap_strings(v, mounts) for v in value]
    if isinstance(value, str):
        # Inside a string (e.g. `--flag=/data/x`) only the part after the last `=` may be a path.
        head, sep, tail = value.rpartition("=")
        return head + sep + remap_path(tail, mounts) if sep else remap_path(value, mounts)
    return value


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in commands and env values; `$$` escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m.group(0) == "$$" else env.get(
        m.group(1), m.group(0)), value)  # fmt: skip


def field_ref(pod: Manifest, path: str) -> str:
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(annotations|labels)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    return str(simple.get(path) or "")


def remap_config_files(pod_dir: Path, mounts: dict[str, str]) -> None:
    """The JSON and YAML files of the pod's ConfigMaps and Secrets, with container paths made local."""
    for path in (pod_dir / "volumes").rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text()
        try:
            data = json.loads(text)
            path.write_text(json.dumps(remap_strings(data, mounts), indent=2))
        except json.JSONDecodeError:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                continue
            if isinstance(data, dict | list):
                path.write_text(yaml.safe_dump(remap_strings(data, mounts)))


def environment(pod: Manifest, container: Manifest, mounts: dict[str, str], bin_dir: Path) -> dict[str, str]:
    """The container's environment as the process gets it: values, fieldRefs, `$(VAR)`, local paths."""
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOSTNAME": pod["metadata"]["name"],
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
    }
    for var in container.get("env") or []:
        if "value" in var:
            value = expand(var.get("value") or "", env)
        elif "fieldRef" in (var.get("valueFrom") or {}):
            value = field_ref(pod, var["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            continue
        env[var["name"]] = remap_strings(value, mounts)
    return env


def write_files(target: Path, data: dict[str, str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        (target / key).write_text(value)


def copy_to_cri_log(stream: Any, name: str, log_file: Path) -> None:
    """Copies a process stream into the log file in CRI format (what kubelet's log readers expect)."""
    with log_file.open("a", buffering=1) as out:
        for raw in iter(stream.readline, b""):
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            out.write(f"{stamp} {name} F {raw.decode(errors='replace').rstrip(chr(10))}\n")


def cri_text(line: str) -> str:
    parts = line.split(" ", 3)
    return parts[3] if len(parts) == 4 else line
