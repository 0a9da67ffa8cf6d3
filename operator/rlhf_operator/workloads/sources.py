"""Data sources: what files a dataset source names, and their rows with where each row is.

A source is a file, a prefix (a directory, or an s3:// prefix), a glob (`*`, `**`, `?`, `[...]`),
local or s3://, or a Hub dataset `hf://datasets/org/name[@revision]` with a split. `datasets` finds
the files: its `resolve_pattern` (fsspec, hidden and `_`-files left out) for prefixes and globs, and
its split conventions (`train-*`, `data/test/...`; `get_data_patterns`) in a Hub dataset, which is
fetched once into the job's storage like a model (`hub`). Each file is read by its extension
(.jsonl, .json, .csv, .parquet) unless a format is declared, row by row, so that every defect names
its file and row: "line 7" in a one-file source, "part-2.jsonl line 7" in a prefix.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from rlhf_operator.workloads import hub, storage
from rlhf_operator.workloads.errors import Defects, StageConfigError, Where

FORMATS = ("jsonl", "json", "csv", "parquet")
EXTENSIONS = tuple(f".{fmt}" for fmt in FORMATS)
_GLOB = set("*?[")
#: A row and where it is, as a user finds it (a `Where`: it also orders defects across files).
LocatedRow = tuple[str, dict[str, Any]]


def _is_dir(source: str) -> bool:
    if not storage.is_remote(source):
        return os.path.isdir(storage.local_path(source))
    fs, path = storage.fs_of(source)
    return bool(fs.isdir(path))


def data_files(
    source: str, fmt: str | None, what: str, split: str | None = None
) -> tuple[list[str], str | None]:
    """(files, base): the files `source` names in order, and the base their names are shown
    relative to (None when the source is one file)."""
    from datasets.data_files import resolve_pattern

    allowed = None if fmt else list(EXTENSIONS)
    if hub.is_hub(source):
        return _split_files(source, split or "train", allowed, what), None
    if split is not None:
        raise StageConfigError(
            f"the {what} {source} has no splits: `split` is for hf://datasets/ sources.", "InvalidSplit"
        )
    magic = bool(_GLOB & set(source))
    if not magic and not _is_dir(source):
        if not storage.exists(source):
            raise StageConfigError(
                f"the {what} file {source} does not exist; check the path.", "DatasetNotFound"
            )
        return [source], None
    pattern = source if magic else storage.join(source, "**")
    try:
        found = resolve_pattern(pattern, "", allowed_extensions=allowed)
    except FileNotFoundError:
        found = []
    files = sorted(f for f in found if not os.path.basename(f).startswith(("_", ".")))
    if not files:
        kinds = f"{fmt} files" if fmt else "data files (.jsonl, .json, .csv or .parquet)"
        raise StageConfigError(
            f"the {what} {source} names no {kinds}; put them there or fix the path.", "DatasetNotFound"
        )
    base = source.split("*", maxsplit=1)[0].rsplit("/", 1)[0] if magic else source.rstrip("/")
    return files, base


def _split_files(source: str, split: str, allowed: list[str] | None, what: str) -> list[str]:
    """The files of one split of a Hub dataset, found by `datasets`' conventions."""
    from datasets.data_files import get_data_patterns, resolve_pattern

    ref = hub.parse(source)
    if ref.repo_type != "dataset":
        raise StageConfigError(
            f"the {what} {source} is a model id; a Hub dataset is hf://datasets/org/name.", "InvalidSource"
        )
    local = hub.localize(source)
    patterns = {str(name): value for name, value in get_data_patterns(local).items()}
    if split not in patterns:
        raise StageConfigError(
            f"the {what} {source} has no split {split!r}; it has {', '.join(sorted(patterns))}.",
            "InvalidSplit",
        )
    files = sorted(
        {f for p in patterns[split] for f in resolve_pattern(p, local, allowed_extensions=allowed)}
    )
    if not files:
        raise StageConfigError(f"the {what} {source} split {split!r} has no data files.", "DatasetNotFound")
    return files


def format_of(path: str, declared: str | None) -> str:
    if declared:
        return declared
    for fmt in FORMATS:
        if path.endswith("." + fmt):
            return fmt
    return "jsonl"  # artifacts the stages write themselves


def located_rows(
    source: str, fmt: str | None, what: str, defects: Defects, split: str | None = None
) -> list[LocatedRow]:
    """Every row of every file of `source`, in order; unreadable rows go to `defects`."""
    files, base = data_files(source, fmt, what, split)
    rows: list[LocatedRow] = []
    for index, path in enumerate(files):
        name = None if base is None else path[len(base) :].lstrip("/") or path
        rows += _file_rows(path, format_of(path, fmt), defects, (index, name), what)
    return rows


def _file_rows(
    path: str, fmt: str, defects: Defects, place: tuple[int, str | None], what: str
) -> list[LocatedRow]:
    """The rows of one file; `place` is its index in the source and the name rows are shown under."""
    index, name = place

    def where(unit: str, number: int) -> Where:
        return Where(f"{unit} {number}" if name is None else f"{name} {unit} {number}", (index, number))

    data = storage.read_bytes(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:
            raise StageConfigError(f"{what} {path} is not a parquet file: {exc}", "MalformedDataset") from exc
        return [(where("row", n), dict(r)) for n, r in enumerate(table.to_pylist(), start=1)]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StageConfigError(
            f"{what} {path} is not UTF-8 text ({exc.reason}); is it {fmt}? Set the source's `format`.",
            "MalformedDataset",
        ) from exc
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        # line_num after a record is the file line it ended on (the header is line 1).
        return [(where("line", reader.line_num), dict(r)) for r in reader]
    if fmt == "json" and text.lstrip().startswith("["):
        return _json_array(text, defects, where)
    if fmt in ("json", "jsonl"):
        return json_lines(text, defects, where)
    raise StageConfigError(f"dataset format must be one of {FORMATS}, not {fmt!r}.", "InvalidFormat")


def _json_array(text: str, defects: Defects, where: Any) -> list[LocatedRow]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        defects.add(where("line", exc.lineno), f"not valid JSON: {exc.msg}.", "MalformedRow")
        return []
    rows: list[LocatedRow] = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict):
            rows.append((where("item", number), item))
        else:
            defects.add(where("item", number), "must be a JSON object.", "MalformedRow")
    return rows


def json_lines(text: str, defects: Defects, where: Any) -> list[LocatedRow]:
    rows: list[LocatedRow] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            defects.add(where("line", number), f"not valid JSON: {exc.msg}.", "MalformedRow")
            continue
        if not isinstance(row, dict):
            defects.add(where("line", number), "must be a JSON object.", "MalformedRow")
            continue
        rows.append((where("line", number), row))
    return rows
