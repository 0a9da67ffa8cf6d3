"""`rlhf-operator estimate MANIFEST`: each training stage's GPU and host memory per process, term by
term, against its node group's capacity, with what to change when it does not fit.

The numbers are the operator's fit check's (`pipeline/fit.py`, the same code). The model's shape
comes from its config.json when this machine can read it (a local directory, or s3:// with the
environment's AWS credentials), else from `baseModel.shape` or `sizeBillions`; the output says which.
The capacity comes from the operator's settings in the environment (RLHF_OPERATOR_GPU_MEMORY_GIB,
RLHF_OPERATOR_NODE_GROUP_INSTANCE_TYPES, as the chart sets them) and the options below.

Exit status: 0 every stage fits (or its capacity is unknown), 1 a stage does not fit, 2 the manifest
or the model's config cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

import yaml
from pydantic import ValidationError

from rlhf_operator.api.v1alpha1 import RLHFJob
from rlhf_operator.config import OperatorConfig
from rlhf_operator.memory_estimate import GIB, HEADROOM, INSTANCES
from rlhf_operator.model_shape import ModelShape
from rlhf_operator.model_sources import lookup, sources
from rlhf_operator.pipeline.fit import FitReport, StageFit, does_not_fit_message, fit_report, rollout_gather


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        group, sep, setting = value.partition("=")
        if not sep or not group or not setting:
            raise SystemExit(f"{what} must be GROUP=VALUE, not {value!r}")
        out[group] = setting
    return out


def _config(args: argparse.Namespace) -> OperatorConfig:
    base = OperatorConfig.from_env(os.environ)
    gpus = {
        **base.gpu_memory_gib,
        **{g: float(v) for g, v in _pairs(args.gpu_memory_gib, "--gpu-memory-gib").items()},
    }
    types = {**base.node_group_instance_types, **_pairs(args.instance_type, "--instance-type")}
    for group, kind in types.items():
        if kind in INSTANCES and group not in gpus and INSTANCES[kind].gpus:
            gpus[group] = INSTANCES[kind].gpu_gib
    return base.model_copy(update={"gpu_memory_gib": gpus, "node_group_instance_types": types})


def describe_shape(shape: ModelShape) -> str:
    return (
        f"{shape.params / 1e9:.2f}B parameters: hidden {shape.hidden}, {shape.layers} layers, {shape.heads} "
        f"heads, key/value width {shape.kv_dim}, vocabulary {shape.vocab}, MLP {shape.intermediate}, "
        f"{'tied' if shape.tied else 'untied'} embeddings"
    )


def _verdict(fits: bool | None) -> str:
    return "unknown capacity" if fits is None else "fits" if fits else "DOES NOT FIT"


def _print_stage(fit: StageFit, out: TextIO) -> None:
    s, est = fit.setup, fit.estimate
    how = f"{s.strategy}{' (hybrid shard)' if s.hybrid_shard else ''} over {s.gpus} GPU(s), {s.gpus_per_node} per pod"
    out.write(f"\nStage {fit.section}: {s.algorithm}, {how}, micro-batch {s.micro_batch}"
              f"{f', generation batch {s.generation_batch}' if s.algorithm not in ('reward', 'dpo') else ''}\n")  # fmt: skip
    reward = fit.models.get("rewardModel")
    if reward is not None and reward.origin != fit.models["policy"].origin:
        out.write(f"  reward model (and critic) shape from {reward.origin}\n")
    out.write(f"  GPU per process (peak in {est.peak_phase}):\n")
    for name, value in est.parts.items():
        out.write(f"    {name:<48} {value / GIB:8.2f} GiB\n")
    capacity = (
        f"of {fit.gpu_gib:g} GiB (node group {fit.group}; {HEADROOM:.0%} usable)"
        if fit.gpu_gib
        else "(no GPU size known)"
    )
    out.write(f"    {'total':<48} {est.gib:8.2f} GiB {capacity}: {_verdict(fit.gpu_fits)}\n")
    phases = ", ".join(f"{name} {sum(terms.values()) / GIB:.2f}" for name, terms in est.phases.items())
    out.write(f"  phases (GiB, besides what is held): {phases}\n")
    out.write("  Host per process (rank 0):\n")
    for name, value in est.host.items():
        out.write(f"    {name:<48} {value / GIB:8.2f} GiB\n")
    limit = (
        f"of {fit.host_bytes / GIB:.0f} GiB ({fit.host_from})" if fit.host_bytes else "(no pod memory known)"
    )
    out.write(f"  Host per pod: {est.host_per_node / GIB:.1f} GiB {limit}: {_verdict(fit.host_fits)}\n")
    gather = rollout_gather(fit)
    if gather is not None:
        out.write(f"  Rollouts (hf engine): {gather}\n")
    if not fit.fits:
        out.write(f"  {does_not_fit_message(fit)}\n")


def print_report(report: FitReport, out: TextIO) -> int:
    if report.problem is not None:
        out.write(f"cannot estimate: {report.problem.message}\n")
        return 2
    if report.shape is None:
        out.write(
            "cannot estimate: the model's config.json could not be read here and the spec gives neither "
            "baseModel.shape nor baseModel.sizeBillions (nor a size in the model's name).\n"
        )
        return 2
    out.write(f"Model shape from {report.shape.origin}\n  {describe_shape(report.shape)}\n")
    for fit in report.stages:
        _print_stage(fit, out)
    return 0 if all(f.fits for f in report.stages) else 1


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-operator estimate", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="an RLHFJob manifest (YAML or JSON)")
    parser.add_argument("--gpu-memory-gib", action="append", default=[], metavar="GROUP=GIB")
    parser.add_argument("--instance-type", action="append", default=[], metavar="GROUP=TYPE")
    args = parser.parse_args(argv)
    try:
        with open(args.manifest, encoding="utf-8") as handle:
            job = RLHFJob.model_validate(yaml.safe_load(handle))
    except (OSError, yaml.YAMLError, ValidationError) as err:
        out.write(f"cannot read {args.manifest}: {err}\n")
        return 2
    found = {s: f for s in sources(job.spec) if (f := lookup(s, remote=True)) is not None}
    return print_report(fit_report(job.spec, _config(args), found), out)
