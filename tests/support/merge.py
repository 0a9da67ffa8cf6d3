"""The one deep merge of the tests: a JSON merge patch (RFC 7386)."""

from __future__ import annotations

import copy
from typing import Any

Manifest = dict[str, Any]


def merged(base: Manifest, patch: Manifest) -> Manifest:
    """Maps merge recursively, None deletes, anything else replaces; `base` is not changed."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def without_foreign_ppo(spec: Manifest, keep: bool = False) -> Manifest:
    """`spec` without its policy's `ppo` section when the policy's algorithm is not ppo (the API
    allows it only with ppo): a tiny ppo job turned into another algorithm. `keep`: leave it."""
    policy = spec.get("stages", {}).get("policy", {})
    if keep or policy.get("algorithm", "ppo") == "ppo" or "ppo" not in policy:
        return spec
    trimmed = {k: v for k, v in policy.items() if k != "ppo"}
    return {**spec, "stages": {**spec["stages"], "policy": trimmed}}


def example_merged(example: Manifest, patch: Manifest) -> Manifest:
    """An example RLHFJob (or its spec) with `patch` merged in; a patch that changes the policy's
    algorithm away from ppo also drops the example's `ppo` settings, unless it sets them itself."""
    out = merged(example, patch)
    if "spec" not in example:
        return without_foreign_ppo(out, keep="ppo" in patch.get("stages", {}).get("policy", {}))
    asked = patch.get("spec", {}).get("stages", {}).get("policy", {})
    return {**out, "spec": without_foreign_ppo(out["spec"], keep="ppo" in asked)}
