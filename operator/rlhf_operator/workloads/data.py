"""Reading prompt, response and ranking data (files, prefixes, globs, Hub datasets: `sources`) with
errors naming the file and row."""

from __future__ import annotations

import hashlib
import random
from typing import Any, TypeVar

from rlhf_operator.workloads import chat_format, sources
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.errors import Defects, StageConfigError

#: A row and where it is in its source, as a user finds it: "line 7" (jsonl, csv), "row 3"
#: (parquet), "item 2" (a JSON array); prefixed with the file's name when the source has several.
LocatedRow = sources.LocatedRow
T = TypeVar("T")


def read_rows(
    source: str, fmt: str | None = None, what: str = "dataset", split: str | None = None
) -> list[dict[str, Any]]:
    """All rows of a source as dicts; a missing source or malformed rows are a configuration error."""
    return [row for _, row in read_located_rows(source, fmt, what, split=split)]


def read_located_rows(
    source: str,
    fmt: str | None = None,
    what: str = "dataset",
    defects: Defects | None = None,
    split: str | None = None,
) -> list[LocatedRow]:
    """Rows of a file, prefix, glob or Hub dataset (`sources`) with their true place (blank lines
    counted), every malformed one reported: raised here, or added to `defects` for a caller that
    goes on to check the rows' content."""
    found = defects or Defects(f"{what} {source}")
    rows = sources.located_rows(source, fmt, what, found, split)
    if defects is None:
        found.raise_if_any()
    return rows


def parse_jsonl(data: bytes, what: str) -> list[dict[str, Any]]:
    """The rows of JSON-lines bytes already read (and checked, e.g. against a hash)."""
    defects = Defects(what)
    rows = sources.json_lines(data.decode("utf-8"), defects, lambda unit, number: f"{unit} {number}")
    defects.raise_if_any()
    return [row for _, row in rows]


def read_prompts(source: str, fmt: str | None, field: str, split: str | None = None) -> list[Prompt]:
    """The prompts of a dataset: each row's chat `messages` when it has them, else its text in
    `field` (`chat_format`); every malformed row is reported with its file and line."""
    prompts: list[Prompt] = []
    defects = Defects(f"prompts dataset {source}")
    for where, row in read_located_rows(source, fmt, "prompts dataset", defects, split):
        try:
            prompts.append(chat_format.prompt_of_row(row, field))
        except chat_format.InvalidPromptError as exc:
            defects.add(where, str(exc), "MalformedRow")
    defects.raise_if_any()
    if not prompts:
        raise StageConfigError(f"prompts dataset {source} is empty.", "EmptyDataset")
    return prompts


def content_hash(items: list[Prompt]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(chat_format.prompt_key(item).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def split_held_out(prompts: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
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
