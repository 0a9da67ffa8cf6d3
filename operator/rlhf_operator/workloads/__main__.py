"""`python -m rlhf_operator.workloads <stage> --config FILE`: run one stage, report, exit with a code.

Exit 0 on success, 78 (EX_CONFIG) when the configuration or input is wrong (the operator fails
the stage at once), 1 for anything else (Kubernetes may retry). The result or the error goes to
the termination message so the operator reads it without log scraping.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from rlhf_operator.api.stage_io import EX_CONFIG, EX_OK, EX_RETRYABLE, StageResult
from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.stages import BY_COMMAND
from rlhf_operator.workloads.config import StageContext, load_config
from rlhf_operator.workloads.distributed import exit_process, launched_by_torchrun
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.result import failure, write_termination_message
from rlhf_operator.workloads.runtime import quiet_libraries


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf_operator.workloads", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    for stage in BY_COMMAND:
        p = sub.add_parser(stage)
        p.add_argument("--config", required=True, help="StageConfig file (JSON or YAML)")
        if BY_COMMAND[stage].name is StageName.REWARD_SERVER:
            p.add_argument("--host", default="0.0.0.0")
            p.add_argument("--port", type=int, default=None)
            p.add_argument(
                "--insecure-no-auth",
                action="store_true",
                help="serve without a bearer token (local experiments only)",
            )
            p.add_argument("--no-batching", action="store_true", help="one forward pass per request")
            p.add_argument("--max-batch", type=int, default=256, help="texts per batch, at most")
            p.add_argument(
                "--max-batch-tokens", type=int, default=16_384, help="tokens per batch and per forward"
            )
            p.add_argument("--max-wait-ms", type=float, default=5.0)
    tiny = sub.add_parser("make-tiny-assets", help="write the tiny model and the synthetic dataset")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--prompts", type=int, default=96)
    tiny.add_argument("--judge", action="store_true", help="also train the tiny AI judge (seconds)")
    return parser


def _record_lineage(ctx: StageContext) -> None:
    """The lineage manifest next to a finished stage's artifact (precompute writes its own)."""
    from rlhf_operator.workloads import lineage

    stage = ctx.config.stage if ctx.config is not None else None
    if stage in lineage.UPSTREAM:
        lineage.record_stage(ctx, stage)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_libraries()
    if args.stage == "make-tiny-assets":
        from rlhf_operator.tiny import make_tiny_assets

        print(make_tiny_assets(args.out, args.prompts, judge=args.judge))
        return EX_OK
    try:
        ctx = load_config(args.config, stage=args.stage)
        from rlhf_operator.workloads import hub

        hub.configure_for(ctx.typed_spec, str(ctx.job.get("namespace", "default")))
        module = importlib.import_module(str(BY_COMMAND[args.stage].module))
        serves = BY_COMMAND[args.stage].name is StageName.REWARD_SERVER
        payload = module.run(ctx, args) if serves else module.run(ctx)
        if isinstance(payload, StageResult) and os.environ.get("RANK", "0") == "0":
            _record_lineage(ctx)
    except StageConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        write_termination_message(failure(exc.message, exc.reason, exc.artifacts))
        return EX_CONFIG
    except KeyboardInterrupt:
        write_termination_message(failure("the stage was interrupted.", "Interrupted"))
        return EX_RETRYABLE
    except Exception as exc:
        traceback.print_exc()
        write_termination_message(
            failure(f"{type(exc).__name__}: {exc}; the stage will be retried.", "StageError")
        )
        return EX_RETRYABLE
    # Under torchrun every process returns the stage's payload; the pod's termination message is
    # one file, and only global rank 0 knows the stage's result (the others' metrics may be nan).
    if payload is not None and os.environ.get("RANK", "0") == "0":
        write_termination_message(payload)
    return EX_OK


if __name__ == "__main__":
    code = main()
    if launched_by_torchrun():
        exit_process(code)
    sys.exit(code)
