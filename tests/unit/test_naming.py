"""Deterministic child names."""

from __future__ import annotations

from datetime import UTC, datetime

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.config import OperatorConfig
from rlhf_operator.naming import MAX_CHILD_NAME, child_name

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_child_names_are_deterministic_and_short() -> None:
    assert child_name("tiny", StageName.REWARD_MODEL) == "tiny-reward-model"
    long_name = "a" * 200
    name = child_name(long_name, StageName.EVALUATION)
    assert len(name) <= MAX_CHILD_NAME and name == child_name(long_name, StageName.EVALUATION)
    assert name != child_name("a" * 199, StageName.EVALUATION)
