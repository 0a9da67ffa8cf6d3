"""Command line: `rlhf-operator <command>` (also `python -m rlhf_operator`)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each command lives in its own module and is imported only when used, so the operator image does
# not need the training stack and the stage images do not need the controller.
COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("rlhf_operator.operator_main", "run the controller (Kopf)"),
    "run-local": ("rlhf_operator.local_runner", "run every stage of an RLHFJob on this machine"),
    "crd": ("rlhf_operator.api.crdgen", "print or write the CRD generated from the API models"),
    "cleanup-artifacts": ("rlhf_operator.cleanup", "delete one job's artifacts (run by the operator)"),
    "estimate": (
        "rlhf_operator.estimate_cli",
        "GPU and host memory per process of a manifest's training stages",
    ),
    "stage": (
        "rlhf_operator.staging",
        "copy a model or dataset (hf://, s3://, a path) onto the job's storage",
    ),
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rlhf-operator", description=__doc__)
    parser.add_argument(
        "command",
        choices=sorted(COMMANDS),
        help="; ".join(f"{name}: {help_}" for name, (_, help_) in sorted(COMMANDS.items())),
    )
    if not args or args[0] in {"-h", "--help"}:
        parser.print_help()
        return 0 if args else 2
    command = parser.parse_args(args[:1]).command
    module = importlib.import_module(COMMANDS[command][0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
