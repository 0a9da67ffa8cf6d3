"""Process-level setup shared by the stages: quiet libraries, seeds, threads, job environment."""

from __future__ import annotations

import os
import random
import sys


def quiet_libraries() -> None:
    # Progress bars and hub lookups are noise in pod logs (and the hub may be unreachable). The
    # libraries read these variables when imported, so a stage that needs neither (a precompute
    # that reuses earlier responses) does not pay for importing them here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "transformers" in sys.modules:  # already imported: the variables came too late
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def completion_index() -> int:
    """The pod's index in an Indexed Job (shard for precompute, node rank for policy)."""
    return int(os.environ.get("JOB_COMPLETION_INDEX", "0") or 0)
