"""Reading prompt, response and ranking files (jsonl, parquet, csv) with errors naming the row."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from typing import Any

from rlhf_operator.workloads import storage
from rlhf_operator.workloads.errors import StageConfigError

FORMATS = ("jsonl", "parquet", "csv")


def _guess_format(source: str, declared: str | None) -> str:
    if declared:
        return declared
    for fmt in FORMATS:
        if source.endswith("." + fmt):
            return fmt
    return "jsonl"


def read_rows(source: str, fmt: str | None = None, what: str = "dataset") -> list[dict[str, Any]]:
    """All rows of a file as dicts; a missing file or a malformed row is a configuration error."""
    if not storage.exists(source):
        raise StageConfigError(f"the {what} file {source} does not exist; check the path.", "DatasetNotFound")
    fmt = _guess_format(source, fmt)
    data = storage.read_bytes(source)
    if fmt == "jsonl":
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageConfigError(
                    f"{what} {source} line {number} is not valid JSON: {exc.msg}.", "MalformedRow"
                ) from exc
            if not isinstance(row, dict):
                raise StageConfigError(
                    f"{what} {source} line {number} must be a JSON object.", "MalformedRow"
                )
            rows.append(row)
        return rows
    if fmt == "csv":
        return [dict(r) for r in csv.DictReader(io.StringIO(data.decode("utf-8")))]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:
            raise StageConfigError(
                f"{what} {source} is not a parquet file: {exc}", "MalformedDataset"
            ) from exc
        return [dict(r) for r in table.to_pylist()]
    raise StageConfigError(f"dataset format must be one of {FORMATS}, not {fmt!r}.", "InvalidFormat")


def read_prompts(source: str, fmt: str | None, field: str) -> list[str]:
    prompts: list[str] = []
    for number, row in enumerate(read_rows(source, fmt, "prompts dataset"), start=1):
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise StageConfigError(
                f"prompts dataset {source} row {number} has no non-empty string field {field!r}; "
                "fix the row or set dataset.prompts.promptField.",
                "MalformedRow",
            )
        prompts.append(value)
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
