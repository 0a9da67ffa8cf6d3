"""`rlhf-operator stage SOURCE DEST`: put a model or a dataset on the job's storage, as the stages expect it.

SOURCE is anything a job's model or dataset field takes: `hf://org/name[@revision]` or
`hf://datasets/org/name[@revision]` (fetched with `huggingface_hub`, the token from HF_TOKEN or
RLHF_HUB_TOKEN), an `s3://` prefix or object, or a local file or directory. DEST is a directory on
the volume (`/data/models/x`) or an `s3://` prefix. The copy is published atomically with a
`_SUCCESS` marker naming the source and, for the Hub, the commit; an existing complete copy of the
same source and commit is left as it is. Run it where the storage is mounted: on a laptop for S3, or
in a pod with the volume (examples/staging/stage-model-and-data-job.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from rlhf_operator.api.stage_io import EX_CONFIG
from rlhf_operator.api.v1alpha1.hub import HUB_TOKEN_ENV
from rlhf_operator.workloads import hub, storage
from rlhf_operator.workloads.errors import StageConfigError


def _existing(dest: str) -> dict[str, Any] | None:
    marker = storage.join(dest, storage.SUCCESS_MARKER)
    if not storage.exists(marker):
        return None
    try:
        found: dict[str, Any] = storage.read_json(marker)
    except (ValueError, OSError):
        return None
    return found


def _fetch(source: str, work: Path) -> tuple[str, dict[str, Any]]:
    """A local directory (or file) holding the source, and what the marker records about it."""
    if hub.is_hub(source):
        ref = hub.parse(source)
        commit = hub.resolve_commit(ref)
        local = hub.download(ref, commit, work / "hub")
        return local, {"source": ref.uri, "commit": commit, "endpoint": hub.endpoint()}
    if storage.is_remote(source):
        if not storage.exists(source):
            raise StageConfigError(f"{source} does not exist; check the URI.", "SourceNotFound")
        fs, path = storage.fs_of(source)
        target = work / Path(path.rstrip("/")).name
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(target), recursive=True)
        else:
            fs.get(path, str(target))
        return str(target), {"source": source}
    if not os.path.exists(source):
        raise StageConfigError(f"{source} does not exist; check the path.", "SourceNotFound")
    return source, {"source": os.path.abspath(source)}


def stage(source: str, dest: str) -> dict[str, Any]:
    """Copies `source` to `dest` unless a complete copy of the same source (and commit) is there."""
    if hub.is_hub(source):
        ref = hub.parse(source)
        wanted: dict[str, Any] = {"source": ref.uri, "commit": hub.resolve_commit(ref)}
    else:
        wanted = {"source": source if storage.is_remote(source) else os.path.abspath(source)}
    found = _existing(dest)
    if found is not None and all(found.get(k) == v for k, v in wanted.items()):
        print(f"{dest} already holds {source} ({found.get('commit', 'complete')}); nothing to do", flush=True)
        return found
    with tempfile.TemporaryDirectory(prefix="rlhf-stage-") as scratch:
        local, marker = _fetch(source, Path(scratch))
        if os.path.isfile(local):
            folder = Path(scratch) / "file"
            folder.mkdir()
            shutil.copy2(local, folder / os.path.basename(local))
            local = str(folder)
        leftover = Path(local) / storage.SUCCESS_MARKER
        if local.startswith(scratch) and leftover.exists():
            leftover.unlink()  # publish_dir writes the marker, last
        storage.publish_dir(local, dest, marker)
    print(f"staged {source} at {dest}: {json.dumps(marker, sort_keys=True)}", flush=True)
    return marker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-operator stage", description=__doc__)
    parser.add_argument("source", help="hf://[datasets/]org/name[@revision], s3://..., or a local path")
    parser.add_argument("dest", help="a directory on the volume, or an s3:// prefix")
    parser.add_argument("--endpoint", help="the Hub's URL (default: HF_ENDPOINT, else huggingface.co)")
    args = parser.parse_args(argv)
    os.environ.setdefault(HUB_TOKEN_ENV, os.environ.get("HF_TOKEN", ""))
    hub.configure(None, args.endpoint)
    try:
        stage(args.source, args.dest)
    except StageConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
