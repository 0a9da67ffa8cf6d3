"""`kubectl rlhf` (the `kubectl-rlhf` executable): status, logs, pull, compare and wait for RLHFJobs.

JOB is a name in the current namespace (`-n` to choose) or NAMESPACE/NAME.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from rlhf_operator.kubectl_rlhf.kubectl import Kubectl, PluginError


def parser() -> argparse.ArgumentParser:
    # kubectl's flags go before or after the command (`kubectl rlhf status tiny -n ml`); SUPPRESS
    # keeps a command's parser from resetting what the root's took.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace of the RLHFJob(s)")
    common.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context")
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file")
    root = argparse.ArgumentParser(
        prog="kubectl rlhf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser(
        "status", parents=[common], help="stages with progress bars, metrics, conditions, GPU-hours"
    )
    status.add_argument("job", metavar="JOB")

    logs = commands.add_parser("logs", parents=[common], help="a stage's pod logs, by rank")
    logs.add_argument("job", metavar="JOB")
    logs.add_argument(
        "--stage", required=True, help="precompute, ranking, reward-model, reward-server, policy, evaluation"
    )
    which = logs.add_mutually_exclusive_group()
    which.add_argument(
        "--rank", type=int, help="the pod of this rank (the Job's completion index; default 0)"
    )
    which.add_argument("--all", action="store_true", help="every rank's newest pod, lines prefixed [rank N]")
    logs.add_argument("--tail", type=int, help="the last N lines of each pod")

    pull = commands.add_parser(
        "pull", parents=[common], help="artifacts from the job's volume or S3 into DIR"
    )
    pull.add_argument("job", metavar="JOB")
    pull.add_argument("dir", metavar="DIR", type=Path)
    pull.add_argument("--stage", help="one stage's artifacts and TensorBoard files (default: everything)")

    compare = commands.add_parser(
        "compare", parents=[common], help="jobs side by side: a table and a PNG of their curves"
    )
    compare.add_argument("jobs", metavar="JOB", nargs="+")
    compare.add_argument(
        "--tag",
        action="append",
        help="TensorBoard scalar tag to plot (repeat; default train/reward and train/kl)",
    )
    compare.add_argument(
        "--out", type=Path, default=Path("rlhf-compare.png"), help="the PNG (default rlhf-compare.png)"
    )

    wait = commands.add_parser(
        "wait", parents=[common], help="until a condition is True; fails when the job ends without it"
    )
    wait.add_argument("job", metavar="JOB")
    wait.add_argument(
        "--for",
        dest="condition",
        default="Succeeded",
        help="condition type, e.g. Promoted (default Succeeded)",
    )
    wait.add_argument("--timeout", type=float, default=3600, help="seconds (default 3600)")
    return root


def run(args: argparse.Namespace, kube: Kubectl) -> str | None:
    if args.command == "status":
        from rlhf_operator.kubectl_rlhf.status_view import render_status

        return render_status(kube.rlhfjob(args.job), datetime.now(UTC))
    if args.command == "logs":
        from rlhf_operator.kubectl_rlhf.logs import show_logs

        show_logs(kube, args.job, args.stage, rank=args.rank, every=args.all, tail=args.tail)
        return None
    if args.command == "pull":
        from rlhf_operator.kubectl_rlhf.logs import stage_named
        from rlhf_operator.kubectl_rlhf.pull import pull, relative_paths

        stage = stage_named(args.stage) if args.stage else None
        written = pull(kube, kube.rlhfjob(args.job), relative_paths(stage), args.dir)
        return f"{len(written)} files into {args.dir}"
    if args.command == "compare":
        from rlhf_operator.kubectl_rlhf.compare import DEFAULT_TAGS, compare

        return compare(kube, args.jobs, args.tag or list(DEFAULT_TAGS), args.out)
    from rlhf_operator.kubectl_rlhf.wait import wait_for

    return wait_for(lambda: kube.rlhfjob(args.job), args.condition, args.timeout)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    kube = Kubectl(
        namespace=getattr(args, "namespace", None),
        context=getattr(args, "context", None),
        kubeconfig=getattr(args, "kubeconfig", None),
    )
    try:
        output = run(args, kube)
    except PluginError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
