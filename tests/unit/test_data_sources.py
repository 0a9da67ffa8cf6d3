"""Data sources: a file, a prefix, a glob or a Hub dataset, each file by its extension, every row
named by its file and row (workloads/sources.py, through `datasets`' pattern resolution)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_operator.workloads import hub
from rlhf_operator.workloads.data import read_located_rows, read_prompts
from rlhf_operator.workloads.errors import StageConfigError
from tests.support.hub_server import FakeHub, Repo

pytestmark = pytest.mark.unit
CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "w01 w02 "}]


def _parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture()
def prefix(tmp_path: Path) -> Path:
    """A prefix as a data pipeline leaves it: parts in several formats, a marker, a hidden file."""
    folder = tmp_path / "prompts"
    _parquet(
        folder / "part-00000.parquet",
        [{"prompt": "a ", "messages": CHAT}, {"prompt": "b ", "messages": CHAT}],
    )
    (folder / "part-00001.jsonl").write_text('{"prompt": "c "}\n\n{"prompt": "d "}\n')
    (folder / "nested").mkdir()
    (folder / "nested" / "part-00002.csv").write_text("prompt,id\ne ,1\n")
    (folder / "nested" / "part-00003.json").write_text(json.dumps([{"prompt": "f "}]))
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00004.jsonl.crc").write_text("x")
    return folder


def test_a_prefix_reads_every_data_file_in_order_by_extension(prefix: Path) -> None:
    rows = read_located_rows(str(prefix) + "/", what="prompts dataset")
    assert [(where, row["prompt"]) for where, row in rows] == [
        ("nested/part-00002.csv line 2", "e "),
        ("nested/part-00003.json item 1", "f "),
        ("part-00000.parquet row 1", "a "),
        ("part-00000.parquet row 2", "b "),
        ("part-00001.jsonl line 1", "c "),
        ("part-00001.jsonl line 3", "d "),
    ]
    # Chat rows come through whole: the chat layer above reads `messages` (issue 20).
    assert rows[2][1]["messages"] == CHAT
    # Without the trailing slash, and as a glob, the same directory names the same files.
    assert [w for w, _ in read_located_rows(str(prefix))] == [w for w, _ in rows]
    assert [w for w, _ in read_located_rows(f"{prefix}/**/*.parquet")] == [
        "part-00000.parquet row 1",
        "part-00000.parquet row 2",
    ]


def test_a_parquet_file_needs_no_format(tmp_path: Path) -> None:
    _parquet(tmp_path / "prompts.parquet", [{"question": "q1 "}, {"question": "q2 "}])
    assert read_prompts(str(tmp_path / "prompts.parquet"), None, "question") == ["q1 ", "q2 "]


def test_defects_name_the_file_and_row_in_source_order(prefix: Path) -> None:
    (prefix / "part-00001.jsonl").write_text('{"prompt": "c "}\n{"prompt": \n{"text": "x"}\n')
    (prefix / "part-00005.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(StageConfigError) as bad:
        read_prompts(str(prefix), None, "prompt")
    assert bad.value.reason == "MalformedRow"
    assert bad.value.message.startswith(
        f"prompts dataset {prefix} has 3 defects: part-00001.jsonl line 2: not valid JSON"
    )
    assert "| part-00001.jsonl line 3: no non-empty string field 'prompt'" in bad.value.message
    assert bad.value.message.index("part-00001.jsonl line 3") < bad.value.message.index(
        "part-00005.jsonl line 1"
    )


def test_a_prefix_or_glob_with_no_data_files_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_text("")
    for source in (f"{tmp_path}/empty/", f"{tmp_path}/empty/*.parquet", f"{tmp_path}/nowhere/*.jsonl"):
        with pytest.raises(StageConfigError) as empty:
            read_prompts(source, None, "prompt")
        assert empty.value.reason == "DatasetNotFound"
        assert f"the prompts dataset {source} names no data files" in empty.value.message
    with pytest.raises(StageConfigError, match=r"file .*missing\.jsonl does not exist"):
        read_prompts(f"{tmp_path}/missing.jsonl", None, "prompt")


def test_a_split_needs_a_hub_dataset(prefix: Path) -> None:
    with pytest.raises(StageConfigError, match="has no splits"):
        read_prompts(str(prefix), None, "prompt", split="test")


@pytest.fixture()
def dataset_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    repo = tmp_path / "repo"
    _parquet(repo / "data" / "train-00000-of-00001.parquet", [{"prompt": "t1 "}, {"prompt": "t2 "}])
    (repo / "data" / "test-00000-of-00001.jsonl").write_text('{"prompt": "e1 "}\n')
    (repo / "README.md").write_text("# a dataset card\n")
    server = FakeHub()
    server.repos[("dataset", "org/prompts")] = Repo.from_dir(repo)
    server.start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    hub.configure(str(tmp_path / "storage" / ".hub"), None)
    try:
        yield server
    finally:
        server.stop()
        hub.configure(None, None)


def test_a_hub_dataset_reads_its_split(dataset_hub: FakeHub, tmp_path: Path) -> None:
    assert read_prompts("hf://datasets/org/prompts", None, "prompt") == ["t1 ", "t2 "]
    assert read_prompts("hf://datasets/org/prompts", None, "prompt", split="test") == ["e1 "]
    assert any((tmp_path / "storage" / ".hub" / "datasets" / "org" / "prompts").iterdir())
    with pytest.raises(StageConfigError) as unknown:
        read_prompts("hf://datasets/org/prompts", None, "prompt", split="validation")
    assert unknown.value.reason == "InvalidSplit" and "it has test, train" in unknown.value.message
    with pytest.raises(StageConfigError) as missing:
        read_prompts("hf://datasets/org/nothing", None, "prompt")
    assert (
        missing.value.reason == "HubSourceNotFound" and "hf://datasets/org/nothing" in missing.value.message
    )
