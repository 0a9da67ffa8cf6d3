"""Rollout throughput: the policy's own engine under 2-process FSDP2 against plain HF generate.

    .venv/bin/python bench/bench_rollout.py [--json FILE] [--sizes tiny,100m] [--repeats 2]

For each model size, 2 processes (gloo, CPU, one thread each) hold the policy sharded with FSDP2
as PPO trains it and generate the same rollout (the PPO trainer's `_generate`: left-padded batch,
Gumbel-max sampling, KV cache), side by side in one run:

- `per-block`: today's path before issue 21, every decode step all-gathers every block;
- `gathered`: the hf engine's default, the policy gathered once per rollout (`rollout_engine`);
- `plain`: HF generate on an unwrapped copy of the same weights in each process (the bound).

`fsdp_rollout_vs_plain_generate` is gathered / plain tokens/s (target >= 0.8), `..._before` the
same for per-block. `vllm_tokens_per_s` is vLLM (the vllm engine, in its own environment:
hack/install-vllm-env.sh) generating the same number of rows and tokens on the tiny model in one
process; null with the reason when that environment is not built.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from bench.results import finish_results, start_results  # noqa: E402

#: Rollout shapes: prompts x generations rows, `response` new tokens (the tiny model has 64 positions).
SHAPES = {
    "tiny": {"prompts": 32, "generations": 4, "response": 16},
    "100m": {"prompts": 8, "generations": 4, "response": 32},
}
#: ~100M parameters, Llama layout, written with random weights (no download).
M100 = {"hidden": 768, "layers": 8, "heads": 12, "kv_heads": 4, "intermediate": 2048, "vocab": 32_000}
MODES = ("per-block", "gathered", "plain")


def model_dir(size: str, workdir: Path) -> Path:
    if size == "tiny":
        from rlhf_operator.tiny.assets import make_tiny_assets

        return Path(make_tiny_assets(workdir / "assets")["model"])
    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    from bench_gpu import build_model

    out = workdir / "m100"
    if not (out / "config.json").exists():
        build_model(out, {**M100}, "cpu")
    return out


def bench_prompts(size: str, count: int) -> list[str]:
    if size == "tiny":
        from rlhf_operator.tiny.task import make_prompts

        return make_prompts(count, seed=5)
    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    from bench_gpu import prompts

    made: list[str] = prompts(count)
    return made


# ------------------------------------------------------------------------------------ the workers


def build(
    model_dir: str, shape: dict[str, int], prompts: list[str], dtype: str, info: Any
) -> tuple[Any, Any]:
    """The PPO trainer on the sharded policy (as run_ppo builds it) and an unwrapped copy of the LM."""
    from rlhf_operator.workloads import ppo_models
    from rlhf_operator.workloads.judges import keyword_rule
    from rlhf_operator.workloads.modeling import load_causal_lm, load_tokenizer
    from rlhf_operator.workloads.ppo import PPOSettings, PPOTrainerLite
    from rlhf_operator.workloads.sharding import TrainPlan

    tokenizer = load_tokenizer(model_dir)
    models = ppo_models.build(
        model_dir, model_dir, tokenizer, dtype, plan=TrainPlan(strategy="fsdp"), info=info
    )
    rows = shape["prompts"] * shape["generations"]
    settings = PPOSettings(
        steps=1,
        batch_size=rows,
        mini_batch_size=rows,
        ppo_epochs=1,
        num_generations=shape["generations"],
        response_length=shape["response"],
        temperature=1.0,
        learning_rate=1e-5,
        kl_coef=0.05,
        kl_target=None,
        seed=0,
    )
    trainer = PPOTrainerLite(
        models.policy,
        models.ref,
        tokenizer,
        keyword_rule(["good"]),
        prompts,
        settings=settings,
        dist_info=info,
        plan=models.plan,
        critic=models.critic,
    )
    plain = load_causal_lm(model_dir, None, dtype, tokenizer).to(info.device)  # the unwrapped copy
    plain.eval()
    return trainer, plain


def time_modes(trainer: Any, plain: Any, repeats: int, info: Any) -> dict[str, Any]:
    """Best seconds and tokens/s of one rollout's generation per mode, over every process.

    Round-robin over the modes, so the machine's drifting load weighs on each alike; the first round
    warms caches, allocators (and on CUDA the compiled decoding step) and is not counted."""
    import torch

    from rlhf_operator.workloads.distributed import all_reduce_max, all_reduce_sum, barrier

    indexed = trainer.prompts_for_step(1)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    tokens = 0.0
    for _ in range(repeats + 1):
        for mode in MODES:
            barrier(info)
            if info.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            generated, _, prompt_len = _generate(trainer, plain, mode, indexed)
            if info.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = all_reduce_max(torch.tensor(time.perf_counter() - started, device=info.device), info)
            seconds[mode].append(float(elapsed))
            count = torch.tensor(float(generated[:, prompt_len:].numel()), device=info.device)
            tokens = float(all_reduce_sum(count, info))
    out: dict[str, Any] = {}
    for mode, times in seconds.items():
        best = min(times[1:])
        out[mode] = {"seconds": round(best, 4), "tokens": tokens, "tokens_per_s": round(tokens / best, 1)}
    return out


def worker(args: argparse.Namespace) -> None:
    """One of the 2 processes: the sharded policy as PPO trains it, each mode timed."""
    import torch

    from rlhf_operator.workloads.distributed import init_distributed, shutdown

    torch.set_num_threads(1)
    info = init_distributed()
    shape = SHAPES[args.size]
    trainer, plain = build(args.model_dir, shape, bench_prompts(args.size, shape["prompts"]), "float32", info)
    out = time_modes(trainer, plain, args.repeats, info)
    if info.is_main:
        Path(args.out).write_text(json.dumps(out))
    shutdown(info)


def _generate(trainer: Any, plain: Any, mode: str, indexed: list[tuple[int, str]]) -> Any:
    """One rollout's generation in `mode`; rows and sampling as the PPO trainer draws them."""
    from rlhf_operator.workloads.rollout_engine import Decision

    if mode == "plain":
        lm = trainer.policy.lm
        trainer.policy.lm = plain
        try:
            trainer.generation_mode = Decision("whole", "bench")
            return trainer._generate(1, indexed)
        finally:
            trainer.policy.lm = lm
    trainer.generation_mode = Decision(mode, "bench")
    return trainer._generate(1, indexed)


# ------------------------------------------------------------------------------------- the parent


def run_size(size: str, workdir: Path, repeats: int) -> dict[str, Any]:
    from tests.support.ports import free_port

    directory = model_dir(size, workdir)
    out = workdir / f"{size}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        __file__,
        "--worker",
        "--size",
        size,
        "--model-dir",
        str(directory),
        "--out",
        str(out),
        "--repeats",
        str(repeats),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{size}: the workers failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    modes: dict[str, Any] = json.loads(out.read_text())
    plain = modes["plain"]["tokens_per_s"]
    gathered = modes["gathered"]
    return {
        "params": _params(directory),
        **SHAPES[size],
        "modes": modes,
        "fsdp_rollout_vs_plain_generate": round(gathered["tokens_per_s"] / plain, 3),
        "fsdp_rollout_vs_plain_generate_before": round(modes["per-block"]["tokens_per_s"] / plain, 3),
    }


def _params(directory: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in directory.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(f.get_slice(key).get_shape())
    return total


def vllm_tokens_per_s(workdir: Path) -> dict[str, Any]:
    """vLLM on the tiny model, the same rows x tokens as the tiny rollout, in its own environment."""
    from rlhf_operator.workloads.vllm_engine import vllm_python

    python = vllm_python()
    if python is None:
        return {"tokens_per_s": None, "reason": "the vLLM environment is not built (make vllm-env)"}
    shape = SHAPES["tiny"]
    directory = model_dir("tiny", workdir)
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [python, str(REPO / "bench" / "vllm_rollout.py"), str(directory), json.dumps(shape)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"tokens_per_s": None, "reason": (proc.stdout + proc.stderr)[-1500:]}
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", default=None, help="write the results here too")
    parser.add_argument("--sizes", default="tiny,100m")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    results = start_results(command=" ".join(["bench/bench_rollout.py", *sys.argv[1:]]))
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        workdir = Path(tmp)
        for size in args.sizes.split(","):
            results[size] = run_size(size, workdir, args.repeats)
            print(json.dumps({size: results[size]}), flush=True)
        tiny = results.get("tiny", {})
        results["fsdp_rollout_vs_plain_generate"] = tiny.get("fsdp_rollout_vs_plain_generate")
        results["fsdp_rollout_vs_plain_generate_before"] = tiny.get("fsdp_rollout_vs_plain_generate_before")
        if not args.no_vllm:
            vllm = vllm_tokens_per_s(workdir)
            results["vllm"] = vllm
            results["vllm_tokens_per_s"] = vllm.get("tokens_per_s")
    return finish_results(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
