"""Peak host memory of loading PPO's models on 2 FSDP processes (gloo, CPU), before and after issue 22.

    python bench/bench_loading.py [--preset 150m|tiny] [--out results.json]

Writes a random ~150M Llama in bf16 safetensors (bench/gpu's 150M preset), then launches torchrun
twice, 2 processes each, to build the policy (full fine-tune: fp32 master weights) and the reference
with strategy fsdp:

- before: the loading of the stage programs before issue 22, reproduced here: every process
  `from_pretrained`s the whole model, upcasts the policy to fp32, loads a whole reference, then shards;
- after: `ppo_models.build` (meta device, each process reads its own shards of the safetensors).

Each process reports its resident memory before loading, its peak (ru_maxrss), and the bytes of
its own shards (which a GPU would hold; on CPU they are in the same resident memory). The overhead
of loading = peak - before - own shards, in units of the bf16 model's bytes.
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
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "gpu"))


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="utf-8") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def anon_bytes() -> int:
    """Anonymous resident memory (RssAnon): what the process allocated, without the pages of files
    it maps (safetensors are memory-mapped: those pages are the page cache's, reclaimable)."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        line = next(ln for ln in handle if ln.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


class AnonPeak:
    """The highest RssAnon seen, sampled every millisecond in a thread while the block runs."""

    def __init__(self) -> None:
        self.peak = anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, anon_bytes())

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_bytes())


def build_before(model_dir: str, info: Any) -> tuple[Any, Any]:
    """What ppo_models.build did before: whole models on every process, then sharded."""
    import torch

    from rlhf_operator.workloads import sharding
    from rlhf_operator.workloads.modeling import load_causal_lm

    plan = sharding.TrainPlan(strategy="fsdp", compute_dtype=torch.bfloat16)
    policy: Any = load_causal_lm(model_dir, dtype="bfloat16")
    ref: Any = load_causal_lm(model_dir, dtype="bfloat16")
    ref.eval().requires_grad_(False)
    sharding.shard(ref, plan, None)
    policy.float()
    sharding.shard(policy, plan, plan.compute_dtype)
    return policy, ref


def build_after(model_dir: str, info: Any) -> tuple[Any, Any]:
    from rlhf_operator.workloads import ppo_models
    from rlhf_operator.workloads.modeling import load_tokenizer
    from rlhf_operator.workloads.sharding import TrainPlan

    tokenizer = load_tokenizer(model_dir)
    models = ppo_models.build(
        model_dir, model_dir, tokenizer, "bfloat16", plan=TrainPlan(strategy="fsdp"), info=info
    )
    return models.policy.lm, models.ref


def warm_up() -> None:
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch.distributed.checkpoint.hf_storage
    import torch.distributed.checkpoint.state_dict
    import torch.distributed.fsdp  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def worker(mode: str, model_dir: str, out: str) -> None:
    import torch.distributed as dist

    from rlhf_operator.workloads.distributed import init_distributed, shutdown
    from rlhf_operator.workloads.sharding import local_bytes

    info = init_distributed()
    warm_up()  # the libraries both paths import: their code is not what is measured
    before, anon_before = rss_bytes(), anon_bytes()
    with AnonPeak() as anon:
        policy, ref = (build_before if mode == "before" else build_after)(model_dir, info)
    mine = {
        "rank": info.rank,
        "rssBeforeLoading": before,
        "peakRss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "anonBeforeLoading": anon_before,
        "peakAnon": anon.peak,
        "ownShards": local_bytes(policy.parameters()) + local_bytes(ref.parameters()),
    }
    ranks: list[Any] = [None] * info.world_size
    dist.all_gather_object(ranks, mine)
    if info.is_main:
        Path(out).write_text(json.dumps(ranks))
    shutdown(info)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(mode: str, model_dir: str, work: Path) -> list[dict[str, Any]]:
    out = work / f"{mode}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
               f"--master-port={free_port()}", __file__, "--worker", mode, model_dir, str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "operator")}
    subprocess.run(command, check=True, env=env, cwd=REPO)
    ranks: list[dict[str, Any]] = json.loads(out.read_text())
    return ranks


def measure(preset: str) -> dict[str, Any]:
    from bench_gpu import build_model, sizes

    with tempfile.TemporaryDirectory(prefix="bench-loading-") as tmp:
        model_dir = Path(tmp) / "model"
        params = build_model(model_dir, sizes(False, preset), "cpu")
        bf16 = 2 * params
        out: dict[str, Any] = {"parameters": params, "bf16ModelBytes": bf16}
        for mode in ("before", "after"):
            ranks = launch(mode, str(model_dir), Path(tmp))
            for rank in ranks:
                rank["overhead"] = rank["peakRss"] - rank["rssBeforeLoading"] - rank["ownShards"]
                rank["anonOverhead"] = rank["peakAnon"] - rank["anonBeforeLoading"] - rank["ownShards"]
                rank["anonOverheadPerBf16Model"] = round(rank["anonOverhead"] / bf16, 3)
            out[mode] = ranks
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
        return 0

    from results import finish_results, start_results

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", nargs="+", default=["tiny", "150m"], choices=("150m", "tiny"))
    parser.add_argument("--out")
    args = parser.parse_args()
    results = start_results(presets=args.preset, processes=2)
    for preset in args.preset:
        results[preset] = measure(preset)
    return int(finish_results(results, args.out))


if __name__ == "__main__":
    sys.exit(main())
