"""Artifact storage over fsspec, so a local path (a mounted FSx/EFS volume) and s3:// behave alike.

Every artifact is published atomically: files go to a temporary name and are renamed; directories
are staged under `name.tmp-<random>` and renamed, and a `_SUCCESS` marker is written last. A reader
treats a directory without the marker as absent, so a killed pod never leaves output that looks
complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Final

import fsspec

SUCCESS_MARKER: Final = "_SUCCESS"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def fs_of(uri: str) -> tuple[Any, str]:
    """fsspec's filesystem of a URI and the path in it."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


_fs = fs_of


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return os.path.exists(local_path(uri))
    fs, path = _fs(uri)
    return bool(fs.exists(path))


def read_bytes(uri: str) -> bytes:
    if not is_remote(uri):
        return Path(local_path(uri)).read_bytes()
    fs, path = _fs(uri)
    data: bytes = fs.cat_file(path)
    return data


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_bytes_atomic(uri: str, data: bytes) -> None:
    if is_remote(uri):
        # An object PUT is atomic in S3: readers see the old object or the whole new one.
        fs, path = _fs(uri)
        fs.pipe_file(path, data)
        return
    target = Path(local_path(uri))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def write_text_atomic(uri: str, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def write_json_atomic(uri: str, payload: Any) -> None:
    write_text_atomic(uri, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl_atomic(uri: str, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(uri, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def is_complete_dir(uri: str) -> bool:
    return exists(join(uri, SUCCESS_MARKER))


def publish_dir(src_dir: str | Path, uri: str, marker: dict[str, Any] | None = None) -> None:
    """Publish a local directory as a complete artifact at `uri` (replacing an older one)."""
    src = Path(src_dir)
    marker_text = json.dumps(marker or {}, sort_keys=True, default=str)
    if is_remote(uri):
        fs, path = _fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.put(str(src) + "/", path, recursive=True)
        # Object stores have no directory rename: the marker, written last, is the commit point.
        fs.pipe_file(f"{path}/{SUCCESS_MARKER}", marker_text.encode())
        return
    target = Path(local_path(uri))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.copytree(src, staging)
    commit_local_dir(staging, target, marker)


def commit_local_dir(staging: str | Path, target: str | Path, marker: dict[str, Any] | None = None) -> None:
    """Writes the marker into `staging` and renames it to `target` (replacing an older one)."""
    staging, target = Path(staging), Path(target)
    (staging / SUCCESS_MARKER).write_text(json.dumps(marker or {}, sort_keys=True, default=str))
    if target.exists():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def upload_files(src_dir: str | Path, uri: str) -> None:
    """Puts the files of a local directory under an s3:// prefix, beside what is there already:
    the processes of a multi-node stage each add their own part of one artifact this way, and the
    one that commits it writes the marker last (`write_marker`)."""
    fs, path = _fs(uri)
    for name in sorted(os.listdir(src_dir)):
        local = os.path.join(src_dir, name)
        if os.path.isdir(local):
            fs.put(local + "/", f"{path}/{name}", recursive=True)
        else:
            fs.put_file(local, f"{path}/{name}")


def write_marker(uri: str, marker: dict[str, Any] | None = None) -> None:
    """Commits a directory whose parts are in place: its `_SUCCESS` marker."""
    write_text_atomic(join(uri, SUCCESS_MARKER), json.dumps(marker or {}, sort_keys=True, default=str))


def remove(uri: str) -> None:
    if is_remote(uri):
        fs, path = _fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        return
    target = Path(local_path(uri))
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    elif target.exists():
        target.unlink()


def list_dir(uri: str) -> list[str]:
    """Base names of the entries directly under `uri` (empty when it does not exist)."""
    if not is_remote(uri):
        folder = Path(local_path(uri))
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def localize_dir(uri: str, cache_root: str | None = None) -> str:
    """A local directory holding the artifact: the path itself, or a download of an s3:// prefix.

    One download per node: the processes of a node (torchrun's local ranks) share the cache
    directory, the first to take the lock downloads, and the others wait for it and reuse it.
    """
    if not is_remote(uri):
        return local_path(uri)
    root = Path(cache_root or os.environ.get("RLHF_CACHE_DIR") or tempfile.gettempdir()) / "rlhf-cache"
    dest = root / uri.replace("://", "/").strip("/")
    if _is_localized(dest):
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{dest}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if _is_localized(dest):
            return str(dest)
        fs, path = _fs(uri)
        staging = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        fs.get(path.rstrip("/") + "/", str(staging), recursive=True)
        os.replace(staging, dest)
        print(f"downloaded {uri} to {dest}", flush=True)
    return str(dest)


def _is_localized(dest: Path) -> bool:
    return (dest / SUCCESS_MARKER).exists() or (dest / "config.json").exists()
