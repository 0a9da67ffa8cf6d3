"""The GPU bench's HBM bound: the issue's figure for the 0.886B model on an H200 (~2,700 steps/s)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_hbm_bound_of_the_1b_bench_on_an_h200() -> None:
    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    from bench_gpu import hbm_bound, sizes

    s = sizes(False)
    bound = hbm_bound(s, params=886_000_000, prompt_len=16, device="NVIDIA H200")
    assert bound is not None
    assert 2_650 < bound["stepsPerS"] < 2_750  # 4.8 TB/s over 1.77 GB of bf16 weights
    assert bound["stepsPerSWithKvCache"] < bound["stepsPerS"]
    assert bound["tokensPerS"] == pytest.approx(bound["stepsPerS"] * 32, rel=1e-3)
    assert hbm_bound(s, 886_000_000, 16, "cpu") is None
