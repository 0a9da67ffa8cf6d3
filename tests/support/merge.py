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


def example_merged(example: Manifest, patch: Manifest) -> Manifest:
    """An example RLHFJob (or its spec) with `patch` merged in; a patch that changes the policy's
    algorithm away from ppo also drops the example's `ppo` settings (the API allows them only
    with ppo), unless it sets them itself."""
    out = merged(example, patch)
    whole = "spec" in example
    policy = (out.get("spec", {}) if whole else out).get("stages", {}).get("policy", {})
    asked = (patch.get("spec", {}) if whole else patch).get("stages", {}).get("policy", {})
    if policy.get("algorithm", "ppo") != "ppo" and "ppo" not in asked:
        policy.pop("ppo", None)
    return out
