"""`rlhf-operator cleanup-artifacts ROOT`: deletes one RLHFJob's artifacts (local path or s3:// URI).

The operator runs it in a Job when an RLHFJob with `artifactRetention: Delete` is deleted.
"""

from __future__ import annotations

import argparse
import sys

from rlhf_operator.api.artifacts import JOBS_DIR


def is_job_root(root: str) -> bool:
    """Only `.../rlhf-jobs/<namespace>/<name>/<uid>` is ever deleted, never a parent of it."""
    parts = [p for p in root.split("://", 1)[-1].split("/") if p]
    return len(parts) >= 4 and parts[-4] == JOBS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-operator cleanup-artifacts", description=__doc__)
    parser.add_argument("root", help="the job's artifact root")
    args = parser.parse_args(argv)
    if not is_job_root(args.root):
        print(
            f"error: {args.root} is not a job's artifact root (…/{JOBS_DIR}/<ns>/<name>/<uid>); refusing",
            file=sys.stderr,
        )
        return 78
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(args.root)
    if filesystem.exists(path):
        filesystem.rm(path, recursive=True)
        print(f"deleted {args.root}")
    else:
        print(f"{args.root} does not exist; nothing to delete")
    return 0
