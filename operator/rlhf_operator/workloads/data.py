"""Reading prompt, response and ranking files (jsonl, parquet, csv) with errors naming the row."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from typing import Any

from rlhf_operator.workloads import storage
from rlhf_operator.workloads.errors import Defects, StageConfigError

FORMATS = ("jsonl", "parquet", "csv")
#: A row and where it is in its file, as a user finds it: "line 7" (jsonl, csv) or "row 3" (parquet).
LocatedRow = tuple[str, dict[str, Any]]


def _guess_format(source: str, declared: str | None) -> str:
    if declared:
        return declared
    for fmt in FORMATS:
        if source.endswith("." + fmt):
            return fmt
    return "jsonl"


def read_rows(source: str, fmt: str | None = None, what: str = "dataset") -> list[dict[str, Any]]:
    """All rows of a file as dicts; a missing file or malformed rows are a configuration error."""
    return [row for _, row in read_located_rows(source, fmt, what)]


def read_located_rows(
    source: str, fmt: str | None = None, what: str = "dataset", defects: Defects | None = None
) -> list[LocatedRow]:
    """Rows with their true place in the file (blank lines counted), every malformed one reported:
    raised here, or added to `defects` for a caller that goes on to check the rows' content."""
    if not storage.exists(source):
        raise StageConfigError(f"the {what} file {source} does not exist; check the path.", "DatasetNotFound")
    fmt = _guess_format(source, fmt)
    data = storage.read_bytes(source)
    if fmt == "jsonl":
        return _jsonl_rows(data, defects or Defects(f"{what} {source}"), raise_now=defects is None)
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
        # line_num after a record is the file line it ended on (the header is line 1).
        return [(f"line {reader.line_num}", dict(r)) for r in reader]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:
            raise StageConfigError(
                f"{what} {source} is not a parquet file: {exc}", "MalformedDataset"
            ) from exc
        return [(f"row {number}", dict(r)) for number, r in enumerate(table.to_pylist(), start=1)]
    raise StageConfigError(f"dataset format must be one of {FORMATS}, not {fmt!r}.", "InvalidFormat")


def parse_jsonl(data: bytes, what: str) -> list[dict[str, Any]]:
    """The rows of JSON-lines bytes already read (and checked, e.g. against a hash)."""
    return [row for _, row in _jsonl_rows(data, Defects(what), raise_now=True)]


def _jsonl_rows(data: bytes, defects: Defects, raise_now: bool) -> list[LocatedRow]:
    rows: list[LocatedRow] = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            defects.add(f"line {number}", f"not valid JSON: {exc.msg}.", "MalformedRow")
            continue
        if not isinstance(row, dict):
            defects.add(f"line {number}", "must be a JSON object.", "MalformedRow")
            continue
        rows.append((f"line {number}", row))
    if raise_now:
        defects.raise_if_any()
    return rows


def read_prompts(source: str, fmt: str | None, field: str) -> list[str]:
    prompts: list[str] = []
    defects = Defects(f"prompts dataset {source}")
    for where, row in read_located_rows(source, fmt, "prompts dataset", defects):
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            defects.add(
                where,
                f"no non-empty string field {field!r}; fix the row or set dataset.prompts.promptField.",
                "MalformedRow",
            )
            continue
        prompts.append(value)
    defects.raise_if_any()
    if not prompts:
        raise StageConfigError(f"prompts dataset {source} is empty.", "EmptyDataset")
    return prompts


def content_hash(items: list[str]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def split_held_out(prompts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (train, held_out) split: same prompts, fraction and seed give the same split."""
    if not 0.0 <= fraction < 1.0:
        raise StageConfigError(
            f"dataset.heldOut.fraction must be in [0, 1), not {fraction}.", "InvalidHeldOut"
        )
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    count = round(len(prompts) * fraction)
    held = sorted(order[:count])
    held_set = set(held)
    return [p for i, p in enumerate(prompts) if i not in held_set], [prompts[i] for i in held]


def shard(items: list[Any], index: int, count: int) -> list[Any]:
    """Shard `index` of `count`: a contiguous block, so output files concatenate in input order."""
    if not 0 <= index < count:
        raise StageConfigError(
            f"shard index {index} is outside 0..{count - 1}; check JOB_COMPLETION_INDEX "
            "against stages.precompute.shards.",
            "InvalidShard",
        )
    size, extra = divmod(len(items), count)
    start = index * size + min(index, extra)
    return items[start : start + size + (1 if index < extra else 0)]
