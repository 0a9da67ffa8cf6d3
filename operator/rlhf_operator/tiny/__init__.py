"""A tiny GPT-2 and a synthetic preference task, built locally (no model hub) for tests and demos."""

from rlhf_operator.tiny.assets import make_tiny_assets
from rlhf_operator.tiny.task import POSITIVE_WORDS, count_positive, make_prompts

__all__ = ["POSITIVE_WORDS", "count_positive", "make_prompts", "make_tiny_assets"]
