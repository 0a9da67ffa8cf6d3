"""Artifact storage: atomic publishing on a local path and on an object store (fsspec memory://)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_operator.workloads import storage

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kind", ["local", "object-store"])
def test_publish_and_read_back(tmp_path: Path, kind: str) -> None:
    root = str(tmp_path / "root") if kind == "local" else f"memory://bucket-{tmp_path.name}/root"
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    target = storage.join(root, "model")
    assert not storage.is_complete_dir(target)
    storage.publish_dir(src, target, {"step": 1})
    assert storage.is_complete_dir(target)
    assert storage.list_dir(root) == ["model"]
    assert sorted(storage.list_dir(target)) == ["_SUCCESS", "config.json"]
    (src / "config.json").write_text('{"v": 2}')
    storage.publish_dir(src, target)  # replacing a published directory keeps it complete
    assert storage.read_json(storage.join(target, "config.json")) == {"v": 2}
    local = storage.localize_dir(target, cache_root=str(tmp_path / "cache"))
    assert (Path(local) / "config.json").read_text() == '{"v": 2}'
    storage.write_jsonl_atomic(storage.join(root, "a.jsonl"), [{"x": 1}, {"x": 2}])
    assert storage.read_text(storage.join(root, "a.jsonl")).splitlines() == ['{"x": 1}', '{"x": 2}']
    storage.remove(target)
    assert not storage.exists(target)
    if kind == "local":  # no staging leftovers next to the artifacts
        assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["a.jsonl"]
