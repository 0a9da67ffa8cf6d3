"""GPU check of real model sizes: PPO (full bf16 on FSDP2, and LoRA) and GRPO with LoRA (TRL).

Builds a ~0.9B Llama-shaped model from a config (random weights, no download) and a word-level
tokenizer made here, runs a few steps of each scenario in its own process, and prints peak GPU
memory, bytes per parameter, seconds per step and generation tokens/s next to the project's memory
estimate (`rlhf_operator.memory_estimate`). `--tiny --device cpu` is the smoke test of the script.

    python bench/gpu/bench_gpu.py [--tiny] [--device cuda|cpu] [--steps 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))

SCENARIOS = ("ppo-full-fsdp", "ppo-lora", "grpo-lora", "rollout")
#: Peak HBM bandwidth (bytes/s) by device name: the bound of a memory-bound decode step.
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "A10G": 0.6e12, "L4": 0.3e12}
KEYWORDS = ["good", "great", "nice", "happy"]

#: ~0.9B parameters: Llama layout (GQA, SwiGLU), untied embeddings, a 32k vocabulary.
FULL = {"hidden": 2048, "layers": 16, "heads": 16, "kv_heads": 8, "intermediate": 5632, "vocab": 32_000}
TINY = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 1000}


#: ~150M parameters: the CPU check of the estimate's per-parameter terms at a less tiny size.
M150 = {"hidden": 768, "layers": 16, "heads": 12, "kv_heads": 4, "intermediate": 2048, "vocab": 32_000}
SMALL_RUN = {"batch": 8, "generations": 4, "response": 8, "micro": 4}


def sizes(tiny: bool, preset: str = "1b") -> dict[str, int]:
    if tiny or preset == "tiny":
        return {**TINY, **SMALL_RUN}
    if preset == "150m":
        return {**M150, **SMALL_RUN}
    return {**FULL, "batch": 32, "generations": 4, "response": 128, "micro": 8}


def build_tokenizer(vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", *KEYWORDS]
    words += [f"w{i:05d}" for i in range(vocab - len(words))]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>", bos_token="<eos>"
    )


def build_model(directory: Path, s: dict[str, int], device: str) -> int:
    """Writes a random-init bf16 Llama and its tokenizer to `directory`; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(s["vocab"])
    config = LlamaConfig(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = LlamaForCausalLM(config)
        model.to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def prompts(count: int) -> list[str]:
    import random

    rng = random.Random(0)
    return [
        " ".join(f"w{rng.randrange(0, 900):05d}" for _ in range(rng.randint(8, 16))) + " "
        for _ in range(count)
    ]


def memory_estimate(scenario: str, s: dict[str, int], prompt_len: int) -> tuple[float, float]:
    """(whole estimate, its parameter/gradient/optimizer/reference part) in GiB."""
    from rlhf_operator.memory_estimate import GIB, ModelShape, Setup, estimate

    shape = ModelShape.llama(
        s["hidden"], s["layers"], s["vocab"], s["intermediate"], s["kv_heads"], s["heads"]
    )
    setup = Setup(
        algorithm="grpo" if scenario.startswith("grpo") else "ppo",
        strategy="fsdp" if "fsdp" in scenario else "ddp",
        gpus=1,
        lora_rank=16 if "lora" in scenario else None,
        lora_targets_per_layer=2,
        micro_batch=s["micro"],
        prompt_length=prompt_len,
        response_length=s["response"],
        generation_batch=s["batch"],
        kl=False,
    )
    est = estimate(shape, setup)  # no critic: this PPO trains a value head on the policy
    transient = {"gathered blocks", "root unit (gathered)", *est.phases.get(est.peak_phase, {})}
    state = sum(v for k, v in est.parts.items() if k not in transient)
    # The bf16 autocast weight copy is transient (it lives during forward passes), not held state.
    state -= est.parts.get("policy compute-dtype weight copy", 0)
    return est.gib, state / GIB


# ------------------------------------------------------------------------------------------ scenarios


def run_ppo(model_dir: str, scenario: str, s: dict[str, int], steps: int) -> dict[str, Any]:
    import torch

    from rlhf_operator.workloads import ppo_models
    from rlhf_operator.workloads.distributed import init_distributed, shutdown
    from rlhf_operator.workloads.judges import keyword_rule
    from rlhf_operator.workloads.lora import LoraSettings
    from rlhf_operator.workloads.modeling import load_tokenizer
    from rlhf_operator.workloads.ppo import PPOSettings, PPOTrainerLite
    from rlhf_operator.workloads.sharding import TrainPlan, local_bytes, optimizer_bytes

    info = init_distributed()
    tokenizer = load_tokenizer(model_dir)
    plan = TrainPlan(strategy="fsdp" if "fsdp" in scenario else "ddp")
    adapter = LoraSettings(rank=16, alpha=32) if "lora" in scenario else None
    models = ppo_models.build(
        model_dir, model_dir, tokenizer, "bfloat16", plan=plan, info=info, adapter=adapter
    )
    settings = PPOSettings(
        steps=steps,
        batch_size=s["batch"],
        mini_batch_size=s["batch"],
        ppo_epochs=1,
        num_generations=s["generations"],
        response_length=s["response"],
        temperature=1.0,
        learning_rate=1e-6,
        kl_coef=0.05,
        kl_target=None,
        seed=0,
        micro_batch_size=s["micro"],
    )
    trainer = PPOTrainerLite(
        models.policy,
        models.ref,
        tokenizer,
        keyword_rule(KEYWORDS),
        prompts(64),
        settings=settings,
        dist_info=info,
        plan=models.plan,
        critic=models.critic,
    )
    per_step = [trainer.step(step) for step in range(1, steps + 1)]
    grads = local_bytes(p.grad for p in models.policy.parameters() if p.grad is not None)
    states = [
        v for st in trainer.optimizer.state.values() for v in st.values() if torch.is_tensor(v) and v.dim()
    ]
    out = {
        "optimizerStateDtypes": sorted({str(v.dtype) for v in states}),
        "optimizerBytes": optimizer_bytes(trainer.optimizer),
        "gradientBytes": grads,
        "parameterBytes": local_bytes(models.policy.parameters())
        + local_bytes((models.ref or models.policy).parameters()) * (models.ref is not None),
        "steps": per_step,
    }
    shutdown(info)
    return out


def run_rollout(model_dir: str, s: dict[str, int]) -> dict[str, Any]:
    """The PPO rollout's generation, as bench/bench_rollout.py times it on CPU: per-block (before
    issue 21), gathered once (the hf engine's default; static cache + compiled step on CUDA), and
    plain generate on an unwrapped bf16 copy."""
    sys.path.insert(0, str(REPO / "bench"))
    from bench_rollout import build, time_modes
    from rlhf_operator.workloads.distributed import init_distributed, shutdown

    info = init_distributed()
    shape = {
        "prompts": s["batch"] // s["generations"],
        "generations": s["generations"],
        "response": s["response"],
    }
    trainer, plain = build(model_dir, shape, prompts(64), "bfloat16", info)
    modes = time_modes(trainer, plain, 2, info)
    shutdown(info)
    return {"modes": modes, "rows": s["batch"], "steps": []}


def hbm_bound(s: dict[str, int], params: int, prompt_len: int, device: str) -> dict[str, float] | None:
    """Decode steps/s the device's HBM allows: every step reads the bf16 weights (the issue's
    figure) and, more precisely, the KV cache of every row too (at the mean sequence length)."""
    bandwidth = next((bw for name, bw in HBM_BYTES_PER_S.items() if name in device), None)
    if bandwidth is None:
        return None
    kv_dim = s["hidden"] * s["kv_heads"] // s["heads"]
    seq = prompt_len + s["response"] / 2
    weights = 2 * params
    kv = 2 * s["layers"] * kv_dim * s["batch"] * seq * 2
    return {
        "bandwidthBytesPerS": bandwidth,
        "stepsPerS": round(bandwidth / weights, 1),
        "stepsPerSWithKvCache": round(bandwidth / (weights + kv), 1),
        "tokensPerS": round(bandwidth / weights * s["batch"], 1),
    }


def rollout_row(
    raw: dict[str, Any], s: dict[str, int], params: int, prompt_len: int, device: str
) -> dict[str, Any]:
    modes = raw["modes"]
    row: dict[str, Any] = {"scenario": "rollout", "modes": modes}
    plain = modes["plain"]["tokens_per_s"]
    row["gatheredVsPlain"] = round(modes["gathered"]["tokens_per_s"] / plain, 3)
    row["perBlockVsPlain"] = round(modes["per-block"]["tokens_per_s"] / plain, 3)
    bound = hbm_bound(s, params, prompt_len, device)
    if bound is not None:
        row["hbmBound"] = bound
        steps = modes["gathered"]["tokens_per_s"] / raw["rows"]
        row["gatheredFractionOfHbmBound"] = round(steps / bound["stepsPerS"], 4)
    return row


def run_grpo(model_dir: str, s: dict[str, int], steps: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset, fingerprint
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer  # type: ignore[attr-defined]

    from rlhf_operator.workloads.judges import keyword_rule
    from rlhf_operator.workloads.modeling import load_tokenizer

    # datasets fingerprints objects with dill; on Python 3.12 pickling pyarrow's MonthDayNano (its
    # __module__ is "builtins") raises. A fingerprint only names cache files: fall back to a random one.
    strict_hash = fingerprint.Hasher.hash.__func__

    def tolerant_hash(cls: Any, value: Any) -> str:
        try:
            return str(strict_hash(cls, value))
        except Exception:
            return str(fingerprint.generate_random_fingerprint())

    fingerprint.Hasher.hash = classmethod(tolerant_hash)

    tokenizer = load_tokenizer(model_dir)
    score = keyword_rule(KEYWORDS)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times[-1] = time.perf_counter() - times[-1]

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-grpo-"),
        max_steps=steps,
        learning_rate=1e-6,
        # As the operator runs TRL (workloads/trainer_args.py): micro-batches of `micro` completions,
        # accumulated to the batch; TRL still generates the whole batch at once.
        per_device_train_batch_size=s["micro"],
        gradient_accumulation_steps=s["batch"] // s["micro"],
        num_generations=s["generations"],
        max_completion_length=s["response"],
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cuda,
        gradient_checkpointing=False,  # TRL's own field (transformers >= 5.20 also says activation_checkpointing)
        use_cpu=not cuda,
        disable_tqdm=True,
    )

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return list(score(prompts, completions))

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts(64)]),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM"),
        callbacks=[Timer()],
    )
    trainer.train()
    trained: Any = trainer.model
    trainable = sum(int(p.numel()) for p in trained.parameters() if p.requires_grad)
    tokens = s["batch"] * s["response"]
    return {"steps": [{"seconds": t, "generatedTokens": tokens} for t in times], "trainable": trainable}


def child(args: argparse.Namespace) -> None:
    import torch

    s = sizes(args.tiny, args.preset)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if args.scenario.startswith("ppo"):
        out = run_ppo(args.model_dir, args.scenario, s, args.steps)
    elif args.scenario == "rollout":
        out = run_rollout(args.model_dir, s)
    else:
        out = run_grpo(args.model_dir, s, args.steps)
    out["wallSeconds"] = time.perf_counter() - started
    out["peakBytes"] = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    out["peakKind"] = "cuda max_memory_allocated" if cuda else "process max RSS"
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summarise(
    scenario: str, raw: dict[str, Any], params: int, s: dict[str, int], prompt_len: int
) -> dict[str, Any]:
    steps = raw["steps"][1:] or raw["steps"]  # the first step warms up kernels and allocators
    seconds = sum(st["seconds"] for st in steps) / len(steps)
    gen_tokens = sum(st["generatedTokens"] for st in steps)
    gen_seconds = sum(st.get("generationSeconds", st["seconds"]) for st in steps)
    est, state_est = memory_estimate(scenario, s, prompt_len)
    peak = raw["peakBytes"] / 1024**3
    state = raw.get("parameterBytes", 0) + raw.get("optimizerBytes", 0) + raw.get("gradientBytes", 0)
    return {
        "scenario": scenario,
        "params": params,
        "peakGiB": round(peak, 3),
        "peakKind": raw["peakKind"],
        "bytesPerParam": round(raw["peakBytes"] / params, 2),
        "estimateGiB": round(est, 3),
        "measuredOverEstimate": round(peak / est, 3) if est else None,
        "secondsPerStep": round(seconds, 3),
        "generationTokensPerSecond": round(gen_tokens / gen_seconds, 1) if gen_seconds else None,
        "generationTimed": "generate() only" if "generationSeconds" in steps[0] else "whole step",
        "optimizerStateDtypes": raw.get("optimizerStateDtypes"),
        "stateGiB": round(state / 1024**3, 4) if state else None,
        "stateEstimateGiB": round(state_est, 4) if state else None,
        "stateBytesPerParam": round(state / params, 2) if state else None,
        "trainableParams": raw.get("trainable"),
        "meanReward": [round(st["meanReward"], 4) for st in raw["steps"] if "meanReward" in st],
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | peak GiB | bytes/param | estimate GiB | peak/estimate | held state GiB (params+grads+adam) "
        "| its estimate GiB | s/step | gen tokens/s |"
    )
    lines = [head, "|---" * 9 + "|"]
    for r in rows:
        if r["scenario"] == "rollout" and "modes" in r:
            tokens = ", ".join(f"{mode} {m['tokens_per_s']}" for mode, m in r["modes"].items())
            bound = r.get("hbmBound")
            hbm = (
                f"; HBM bound {bound['stepsPerS']} decode steps/s ({bound['stepsPerSWithKvCache']} with the KV "
                f"cache), gathered at {r['gatheredFractionOfHbmBound']:.2%} of it"
                if bound
                else "; HBM bound: unknown device"
            )
            lines.append(
                f"| rollout | tokens/s: {tokens}; gathered/plain {r['gatheredVsPlain']}{hbm} |" + " |" * 7
            )
            continue
        if "skipped" in r:
            lines.append(f"| {r['scenario']} | skipped: {r['skipped']} |" + " |" * 7)
            continue
        lines.append(
            f"| {r['scenario']} | {r['peakGiB']} | {r['bytesPerParam']} | {r['estimateGiB']} | "
            f"{r['measuredOverEstimate']} | {r['stateGiB']} | {r['stateEstimateGiB']} | {r['secondsPerStep']} | "
            f"{r['generationTokensPerSecond']} |"
        )
    return "\n".join(lines)


def run_scenario(scenario: str, args: argparse.Namespace, model_dir: str) -> dict[str, Any] | str:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    if scenario in ("ppo-full-fsdp", "rollout"):  # a one-process group, so fully_shard has a mesh
        env.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--scenario",
        scenario,
        "--model-dir",
        model_dir,
        "--device",
        args.device,
        "--steps",
        str(args.steps),
        "--preset",
        args.preset,
    ] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=args.scenario_timeout, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-12:]
    print(f"--- {scenario} failed (rc {proc.returncode}):\n" + "\n".join(tail), flush=True)
    reason = next(
        (ln for ln in reversed(tail) if "Error" in ln or "error" in ln), tail[-1] if tail else "no output"
    )
    return reason.strip()[:300]


def parent(args: argparse.Namespace) -> int:
    s = sizes(args.tiny, args.preset)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-model-") as model_dir:
        started = time.perf_counter()
        params = build_model(Path(model_dir), s, args.device)
        print(
            f"model: {params / 1e9:.3f}B parameters, built in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        tok = build_tokenizer(s["vocab"])
        prompt_len = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts(64))
        device = _device_name(args.device)
        for scenario in args.scenarios.split(","):
            raw = run_scenario(scenario, args, model_dir)
            if isinstance(raw, str):
                row: dict[str, Any] = {"scenario": scenario, "skipped": raw}
            elif scenario == "rollout":
                row = rollout_row(raw, s, params, prompt_len, device)
            else:
                row = summarise(scenario, raw, params, s, prompt_len)
            rows.append(row)
            print(json.dumps(row), flush=True)
    import torch

    md = f"device: {device}; torch {torch.__version__}; model {params / 1e9:.3f}B; sizes {s}\n\n" + table(
        rows
    )
    print(md, flush=True)
    out = os.environ.get("OUT") or args.out
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "bench-gpu.json").write_text(
            json.dumps({"device": device, "sizes": s, "rows": rows}, indent=2)
        )
        Path(out, "bench-gpu.md").write_text(md + "\n")
    return 0 if all("skipped" not in r for r in rows) else 1


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a tiny model (the CPU smoke test)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--preset", default="1b", choices=["1b", "150m", "tiny"], help="model size")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--scenario-timeout", type=int, default=240)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        try:
            child(args)
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
