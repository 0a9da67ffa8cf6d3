"""The operator's configuration from the environment."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rlhf_operator.config import OperatorConfig

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_operator_config_from_environment_refuses_unknown_settings() -> None:
    config = OperatorConfig.from_env(
        {"RLHF_OPERATOR_NAMESPACES": "a, b", "RLHF_OPERATOR_NODE_GROUP_POLICY": "p5"}
    )
    assert config.namespaces == ("a", "b") and config.node_group_policy == "p5"
    with pytest.raises(ValueError, match=r"unknown setting.*RLHF_OPERATOR_NODEGROUP"):
        OperatorConfig.from_env({"RLHF_OPERATOR_NODEGROUP": "x"})
