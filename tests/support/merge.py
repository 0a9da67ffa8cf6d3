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
