"""The artifact cleanup program."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rlhf_operator.config import OperatorConfig

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_cleanup_deletes_only_a_job_root(tmp_path: Path) -> None:
    from rlhf_operator.cleanup import is_job_root, main

    root = tmp_path / "rlhf-jobs" / "ml" / "tiny" / "u-1"
    (root / "policy").mkdir(parents=True)
    (root / "policy" / "model.safetensors").write_text("weights")
    assert main([str(root)]) == 0 and not root.exists() and (tmp_path / "rlhf-jobs" / "ml").exists()
    assert main([str(tmp_path / "rlhf-jobs")]) == 78
    assert is_job_root("s3://bucket/prefix/rlhf-jobs/ml/tiny/u-1") and not is_job_root(
        "s3://bucket/rlhf-jobs/ml"
    )
