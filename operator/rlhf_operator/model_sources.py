"""Reading a model source's config.json for the memory estimate (I/O; the estimate itself is pure).

The operator reads only directories it can see on its own filesystem (`remote=False`): its pod
mounts no volume and usually holds no S3 credentials, so for an s3:// model or a path on the jobs'
volume it finds nothing and the estimate falls back to `baseModel.shape` or `sizeBillions`, and says
so. `rlhf-operator estimate`, run where the user's credentials are, also reads s3:// (fsspec).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from rlhf_operator.api.v1alpha1 import RLHFJobSpec
from rlhf_operator.pipeline.fit import ConfigLookup

#: How long a lookup is reused: a model directory rarely changes, a missing one may appear.
FOUND_TTL_SECONDS = 3600.0
MISSING_TTL_SECONDS = 60.0
_MARKERS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.json")


def sources(spec: RLHFJobSpec) -> list[str]:
    """The model sources the memory estimate reads: the base model and the reward model's own."""
    out = [spec.base_model.source]
    reward = spec.stages.reward_model
    if own := reward.pretrained or reward.model:
        out.append(own)
    return out


def _parse(text: str, where: str) -> ConfigLookup:
    try:
        config = json.loads(text)
    except ValueError as err:
        return ConfigLookup(
            where, problem=f"its config.json is not JSON ({err}); write it with save_pretrained()."
        )
    if not isinstance(config, dict):
        return ConfigLookup(where, problem="its config.json is not a JSON object.")
    return ConfigLookup(where, config=config)


def _missing(source: str) -> ConfigLookup:
    return ConfigLookup(
        source,
        problem="the directory has no config.json; point it at a directory written by save_pretrained().",
    )


def read_local(source: str) -> ConfigLookup | None:
    """A local directory's config.json; None when the path is not a directory here."""
    path = source.removeprefix("file://")
    if not os.path.isdir(path):
        return None
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return _missing(source)
    with open(config, encoding="utf-8") as handle:
        return _parse(handle.read(), source)


def read_remote(source: str) -> ConfigLookup | None:
    """An s3:// (any fsspec URL) directory's config.json; None when it cannot be reached."""
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(source)
        if fs.exists(f"{path}/config.json"):
            return _parse(fs.cat_file(f"{path}/config.json").decode("utf-8"), source)
        listing = [str(p).rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.exists(path) else []
    except Exception:
        return None
    return _missing(source) if any(m in listing for m in _MARKERS) else None


def lookup(source: str, *, remote: bool) -> ConfigLookup | None:
    if "://" in source and not source.startswith("file://"):
        return read_remote(source) if remote else None
    return read_local(source)


class LookupCache:
    """The operator's lookups, reused for a while so a resync does not reread every model."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, ConfigLookup | None]] = {}
        self._lock = threading.Lock()

    def lookups(self, spec: RLHFJobSpec) -> dict[str, ConfigLookup]:
        out = {}
        for source in sources(spec):
            found = self._get(source)
            if found is not None:
                out[source] = found
        return out

    def _get(self, source: str) -> ConfigLookup | None:
        now = self._clock()
        with self._lock:
            cached = self._entries.get(source)
        if cached is not None and now < cached[0]:
            return cached[1]
        found = lookup(source, remote=False)
        ttl = FOUND_TTL_SECONDS if found is not None and found.config is not None else MISSING_TTL_SECONDS
        with self._lock:
            self._entries[source] = (now + ttl, found)
        return found
