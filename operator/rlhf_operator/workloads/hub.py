"""`hf://[datasets/]org/name[@revision]` sources: fetched from the Hub once per storage, read from there.

Every stage process keeps HF_HUB_OFFLINE=1, so nothing else reaches for the Hub. A fetch runs
`huggingface_hub` in a child process of its own (`python -m rlhf_operator.workloads.hub`) with the
Hub enabled, the token of RLHF_HUB_TOKEN (the pod gets it from `spec.hub.tokenSecret`) and the
endpoint of `spec.hub.endpoint` (else HF_ENDPOINT, else huggingface.co). A revision is resolved to
its commit first; the files land in the job's storage under
`rlhf-jobs/<namespace>/.hub/<models|datasets>/<org>/<name>/<commit>/` (complete once `_SUCCESS` is
written), so every later stage, pod and job of the namespace on that storage reads them from there:
one download per volume (under a file lock on the volume, where the filesystem honours one across
nodes) or, with S3 storage, one per node (under a lock in the node's cache) and one upload to the
prefix.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from rlhf_operator.api import artifacts
from rlhf_operator.api.stage_io import EX_CONFIG
from rlhf_operator.api.v1alpha1 import HF_SCHEME, RLHFJobSpec
from rlhf_operator.api.v1alpha1.hub import DEFAULT_ENDPOINT, HUB_TOKEN_ENV
from rlhf_operator.workloads import storage
from rlhf_operator.workloads.errors import StageConfigError

COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9][-A-Za-z0-9_.]*$")


def is_hub(source: str) -> bool:
    return source.startswith(HF_SCHEME)


@dataclass(frozen=True)
class HubRef:
    repo_type: str  # "model" or "dataset"
    repo_id: str
    revision: str

    @property
    def uri(self) -> str:
        kind = "datasets/" if self.repo_type == "dataset" else ""
        return f"{HF_SCHEME}{kind}{self.repo_id}@{self.revision}"


def parse(source: str, revision: str | None = None) -> HubRef:
    """`hf://org/name@rev`, `hf://datasets/org/name@rev`; `revision` applies when the URI names none."""
    body = source[len(HF_SCHEME) :]
    repo_type = "dataset" if body.startswith("datasets/") else "model"
    body = body.removeprefix("datasets/").removeprefix("models/")
    repo_id, _, pinned = body.partition("@")
    if not _REPO_ID.match(repo_id):
        raise StageConfigError(
            f"{source} is not a Hub id: write hf://org/name[@revision] (hf://datasets/org/name for a dataset).",
            "InvalidSource",
        )
    return HubRef(repo_type, repo_id, pinned or revision or "main")


@dataclass
class HubSettings:
    #: Storage URI under which fetched repositories are kept; None: this node's cache only.
    cache: str | None = None
    endpoint: str | None = None


_settings = HubSettings()


def configure(cache: str | None, endpoint: str | None) -> None:
    _settings.cache, _settings.endpoint = cache, endpoint
    resolve_commit.cache_clear()


def configure_for(spec: RLHFJobSpec, namespace: str) -> None:
    """The job's storage and hub settings; the stage entry point calls it before any model loads."""
    configure(artifacts.hub_cache(spec.storage, namespace), spec.hub.endpoint if spec.hub else None)


def endpoint() -> str:
    return _settings.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


@functools.cache
def resolve_commit(ref: HubRef) -> str:
    """The commit `ref.revision` names now (a branch moves; a commit does not, and is not asked for)."""
    if COMMIT.match(ref.revision):
        return ref.revision
    return _child(["resolve", *_ref_args(ref)])["commit"]


def localize(source: str, revision: str | None = None) -> str:
    """A local directory with the files of an hf:// source at its resolved commit."""
    ref = parse(source, revision)
    commit = resolve_commit(ref)
    relative = f"{ref.repo_type}s/{ref.repo_id}/{commit}"
    if _settings.cache is not None and not storage.is_remote(_settings.cache):
        return download(ref, commit, Path(storage.local_path(artifacts.join(_settings.cache, relative))))
    if _settings.cache is not None:
        shared = artifacts.join(_settings.cache, relative)
        if storage.is_complete_dir(shared):
            return storage.localize_dir(shared)
    node = Path(os.environ.get("RLHF_CACHE_DIR") or tempfile.gettempdir()) / "rlhf-cache" / "hub" / relative
    local = download(ref, commit, node)
    if _settings.cache is not None:
        storage.publish_dir(local, artifacts.join(_settings.cache, relative), _marker(ref, commit))
    return local


def _marker(ref: HubRef, commit: str) -> dict[str, str]:
    return {"source": ref.uri, "commit": commit, "endpoint": endpoint()}


def download(ref: HubRef, commit: str, dest: Path) -> str:
    """The files into `dest` once: the first process to take the lock downloads, the others reuse.

    A filesystem that refuses flock (Lustre mounted without `flock`) leaves the processes unlocked:
    each downloads into a staging directory of its own and the first complete one is renamed into
    place; the others see it there and drop theirs."""
    if (dest / storage.SUCCESS_MARKER).exists():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{dest}.lock", "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        except OSError as exc:
            print(f"no file lock on {dest.parent} ({exc.strerror}): downloading without one", flush=True)
        if (dest / storage.SUCCESS_MARKER).exists():
            return str(dest)
        staging = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            _child(
                ["download", *_ref_args(HubRef(ref.repo_type, ref.repo_id, commit)), "--dest", str(staging)]
            )
            # huggingface_hub's own bookkeeping: not part of the model.
            shutil.rmtree(staging / ".cache", ignore_errors=True)
            (staging / storage.SUCCESS_MARKER).write_text(json.dumps(_marker(ref, commit), sort_keys=True))
            _move_into_place(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"fetched {ref.uri} (commit {commit}) from {endpoint()} to {dest}", flush=True)
    return str(dest)


def _move_into_place(staging: Path, dest: Path) -> None:
    try:
        os.replace(staging, dest)
    except OSError:
        if not (dest / storage.SUCCESS_MARKER).exists():  # not a complete copy of another process
            raise


def _ref_args(ref: HubRef) -> list[str]:
    return ["--repo-type", ref.repo_type, "--repo-id", ref.repo_id, "--revision", ref.revision]


def _child(args: list[str]) -> dict[str, str]:
    """Runs this module as a process that may reach the Hub; its one JSON line is the answer."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_operator.workloads.hub", *args, "--endpoint", endpoint()],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    answer: dict[str, str] = json.loads(lines[-1]) if lines else {}
    if proc.returncode == 0 and answer:
        return answer
    message = answer.get("error") or f"the Hub fetch exited {proc.returncode}: {proc.stderr[-2000:]}"
    if proc.returncode == EX_CONFIG:
        raise StageConfigError(message, answer.get("reason", "HubSourceNotFound"))
    raise RuntimeError(message)  # unreachable or failing Hub: the stage is retried


# --- the child process: the only place that talks to the Hub ----------------------------------------


def _explain(exc: Exception, ref: HubRef, url: str) -> tuple[str, str] | None:
    """(message, reason) of an error that retrying cannot fix, else None."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{HF_SCHEME}{'datasets/' if ref.repo_type == 'dataset' else ''}{ref.repo_id}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    token = " with the token of spec.hub.tokenSecret" if os.environ.get(HUB_TOKEN_ENV) else " without a token"
    if isinstance(exc, GatedRepoError):
        return (
            f"{where} is gated on {url}: accept its terms with the account of the token in spec.hub.tokenSecret.",
            "HubSourceGated",
        )
    if isinstance(exc, RevisionNotFoundError):
        return (
            f"{where} has no revision {ref.revision!r} on {url}; check the part after @.",
            "HubRevisionNotFound",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"{where} was not found on {url} (HTTP {status}, asked{token}): check the id, or set "
            "spec.hub.tokenSecret to a token that may read it if it is private.",
            "HubSourceNotFound",
        )
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return (
            f"{url} refused the request for {where} (HTTP {status}){token}; check the token.",
            "HubUnauthorized",
        )
    return None


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_operator.workloads.hub")
    parser.add_argument("action", choices=["resolve", "download"])
    parser.add_argument("--repo-type", required=True)
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--dest")
    args = parser.parse_args(argv)
    from huggingface_hub import HfApi, snapshot_download

    ref = HubRef(args.repo_type, args.repo_id, args.revision)
    token: str | bool = os.environ.get(HUB_TOKEN_ENV) or False  # never a token stored on the machine
    try:
        if args.action == "resolve":
            info = HfApi(endpoint=args.endpoint, token=token).repo_info(
                ref.repo_id, repo_type=ref.repo_type, revision=ref.revision
            )
            answer = {"commit": str(info.sha)}
        else:
            snapshot_download(
                ref.repo_id,
                repo_type=ref.repo_type,
                revision=ref.revision,
                local_dir=args.dest,
                endpoint=args.endpoint,
                token=token,
            )
            answer = {"commit": ref.revision}
    except Exception as exc:
        known = _explain(exc, ref, args.endpoint)
        if known is None:
            print(json.dumps({"error": f"fetching {ref.uri} from {args.endpoint} failed: {exc}"}), flush=True)
            return 1
        print(json.dumps({"error": known[0], "reason": known[1]}), flush=True)
        return EX_CONFIG
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
