"""A Hugging Face Hub on 127.0.0.1 for the tests: the part of its HTTP API that `huggingface_hub`
uses to resolve a revision and download a repository (repo info, tree listing, file resolve).

It answers as the Hub does, error headers included, so `huggingface_hub` itself raises its real
errors: 404 + `X-Error-Code: RepoNotFound` for an unknown repository, 401 + RepoNotFound for a
private one asked without a token, 401 "Invalid credentials" for a wrong token, 404 +
RevisionNotFound for an unknown revision. It counts the file downloads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    #: branch or tag -> commit (40 hex digits)
    refs: dict[str, str]
    token: str | None = None  # set: private, readable with this bearer token only

    @classmethod
    def from_dir(cls, folder: Path, token: str | None = None, branch: str = "main") -> Repo:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(json.dumps(sorted(files), sort_keys=True).encode() + b"".join(files.values()))
        return cls(files, {branch: commit.hexdigest()}, token)

    def commit(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.refs.values() else None


@dataclass
class FakeHub:
    #: ("model" | "dataset", "org/name") -> Repo
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    downloads: Counter[str] = field(default_factory=Counter)
    #: The tokens this Hub knows; any other bearer token is refused as invalid.
    tokens: set[str] = field(default_factory=set)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _error(self, status: int, code: str | None = None, message: str = "") -> None:
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        if message:
            self.send_header("X-Error-Message", message)
        payload = json.dumps({"error": message or code or "error"}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _repo(self, kind: str, repo_id: str) -> Repo | None:
        repo = self.state.repos.get((kind, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        given = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if given and given not in self.state.tokens:
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        if repo.token is not None and given != repo.token:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _answer(self, body: bool) -> None:
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        if parts[:1] == ["api"] and len(parts) >= 6:
            kind = parts[1].removesuffix("s")
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            repo = self._repo(kind, repo_id)
            if repo is None:
                return
            commit = repo.commit(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", "Revision not found")
                return
            if action == "revision":
                info = {
                    "id": repo_id,
                    "sha": commit,
                    "private": repo.token is not None,
                    "siblings": [{"rfilename": name} for name in repo.files],
                }
                self._json(info, body)
            elif action == "tree":
                entries = [
                    {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in repo.files.items()
                ]
                self._json(entries, body)
            else:
                self._error(404, None, f"no API {action}")
            return
        kind = "dataset" if parts[:1] == ["datasets"] else "model"
        parts = parts[1:] if kind == "dataset" else parts
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, None, "not found")
            return
        repo = self._repo(kind, f"{parts[0]}/{parts[1]}")
        if repo is None:
            return
        commit, name = repo.commit(parts[3]), "/".join(parts[4:])
        if commit is None or name not in repo.files:
            self._error(404, "RevisionNotFound" if commit is None else "EntryNotFound", "not found")
            return
        data = repo.files[name]
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.state.downloads[f"{kind}:{parts[0]}/{parts[1]}/{name}"] += 1
            self.wfile.write(data)

    def _json(self, value: Any, body: bool) -> None:
        payload = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)
