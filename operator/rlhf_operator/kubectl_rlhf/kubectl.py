"""The plugin's way to the cluster: the kubectl binary, with the user's global flags."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]


class PluginError(Exception):
    """What went wrong, said for the user; the plugin prints it and exits 1."""


@dataclass(frozen=True)
class Kubectl:
    namespace: str | None = None
    context: str | None = None
    kubeconfig: str | None = None
    #: kubectl sets KUBECTL_PLUGINS_CALLER to itself when it runs a plugin.
    binary: str = field(default_factory=lambda: os.environ.get("KUBECTL_PLUGINS_CALLER", "kubectl"))

    def command(self, *args: str, namespace: str | None = None) -> list[str]:
        flags = []
        if self.kubeconfig:
            flags += ["--kubeconfig", self.kubeconfig]
        if self.context:
            flags += ["--context", self.context]
        if namespace or self.namespace:
            flags += ["--namespace", str(namespace or self.namespace)]
        return [self.binary, *flags, *args]

    def run(self, *args: str, namespace: str | None = None, input: str | None = None) -> str:
        try:
            result = subprocess.run(
                self.command(*args, namespace=namespace),
                input=input,
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError as err:
            raise PluginError(f"kubectl not found ({self.binary}); install it or put it on PATH") from err
        if result.returncode != 0:
            raise PluginError(
                result.stderr.strip() or f"kubectl {' '.join(args)} failed ({result.returncode})"
            )
        return result.stdout

    def get(self, *args: str, namespace: str | None = None) -> Manifest:
        data: Manifest = json.loads(self.run("get", *args, "-o", "json", namespace=namespace))
        return data

    def items(self, *args: str, namespace: str | None = None) -> list[Manifest]:
        items: list[Manifest] = self.get(*args, namespace=namespace).get("items", [])
        return items

    def rlhfjob(self, ref: str) -> Manifest:
        """`NAME` in the current namespace, or `NAMESPACE/NAME`."""
        namespace, _, name = ref.rpartition("/")
        return self.get("rlhfjobs.rlhf-operator.dev", name, namespace=namespace or None)
