"""Loading, sharded checkpoints and publishing on FSDP2, run under torchrun (2 processes, gloo).

    python tests/train/dcp_worker.py ASSETS_DIR WORK_DIR [s3://bucket/prefix]

Every check runs on both processes; rank 0 writes what it found to WORK_DIR/result.json, which the
test asserts on. One launch covers: loading each process's shards straight from safetensors (and
the rank-0 fallback), an asynchronous checkpoint taken while training goes on, resuming it into
freshly built models (identical state and identical next step), the same checkpoint read by one
process alone (another world size), a LoRA checkpoint that holds the adapter only, the published
model (full and LoRA-merged), and a checkpoint whose shards each process uploads to S3.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rlhf_operator.tiny.task import POSITIVE_WORDS, make_prompts
from rlhf_operator.workloads import checkpoint, loading, ppo_models, storage
from rlhf_operator.workloads.distributed import DistInfo, exit_process, init_distributed, shutdown
from rlhf_operator.workloads.judges import keyword_rule
from rlhf_operator.workloads.lora import LoraSettings
from rlhf_operator.workloads.modeling import load_tokenizer
from rlhf_operator.workloads.ppo import PPOSettings, PPOTrainerLite
from rlhf_operator.workloads.sharding import TrainPlan

SETTINGS = PPOSettings(
    steps=4, batch_size=8, mini_batch_size=8, ppo_epochs=1, num_generations=4, response_length=8,
    temperature=1.0, learning_rate=1e-3, kl_coef=0.05, kl_target=0.5, seed=11,
)  # fmt: skip
PLAN = TrainPlan(strategy="fsdp")


def trainer(
    model_dir: str,
    info: DistInfo,
    adapter: LoraSettings | None = None,
    follow: bool = False,
    plan: TrainPlan = PLAN,
) -> Any:
    tokenizer = load_tokenizer(model_dir)
    models = ppo_models.build(
        model_dir, model_dir, tokenizer, "float32", plan=plan, info=info, adapter=adapter,
        trained_weights_follow=follow,
    )  # fmt: skip
    return PPOTrainerLite(
        models.policy, models.ref, tokenizer, keyword_rule(list(POSITIVE_WORDS)), make_prompts(16, seed=5),
        settings=SETTINGS, dist_info=info, plan=models.plan, critic=models.critic,
    )  # fmt: skip


@contextlib.contextmanager
def no_unpickling() -> Iterator[None]:
    """Any unpickling (pickle, torch.load) inside fails: checkpoints are read as safetensors and JSON."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a checkpoint load unpickled something")

    saved = pickle.load, pickle.loads, torch.load
    pickle.load, pickle.loads, torch.load = refuse, refuse, refuse
    try:
        yield
    finally:
        pickle.load, pickle.loads, torch.load = saved


def load(uri: str, t: Any, info: DistInfo) -> dict[str, Any]:
    with no_unpickling():
        return checkpoint.load(uri, t.train_state(), info)


def local_state(t: Any) -> dict[str, torch.Tensor]:
    """This process's shards of every trained tensor and optimizer state, copied."""
    out: dict[str, torch.Tensor] = {}
    for tag, module, optimizer in (("", t.policy, t.optimizer), ("critic:", t.critic, t.critic_optimizer)):
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        out |= {f"p:{tag}{n}": p.to_local().detach().clone() for n, p in params}
        for param, state in optimizer.state.items():
            name = next(n for n, p in params if p is param)
            for key, value in state.items():
                out[f"o:{tag}{name}:{key}"] = (
                    value.to_local() if hasattr(value, "to_local") else value
                ).clone()
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in a if k not in b or not torch.equal(a[k], b[k]))


def loaded_equals_pretrained(t: Any, model_dir: str) -> list[str]:
    """Names of the policy and reference weights that differ from from_pretrained's (gathered)."""
    from transformers import AutoModelForCausalLM

    expected = dict(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).named_parameters())
    bad = [n for n, p in t.policy.lm.named_parameters() if not torch.equal(p.full_tensor(), expected[n])]
    bad += [f"ref:{n}" for n, p in t.ref.named_parameters() if not torch.equal(p.full_tensor(), expected[n])]
    return bad


def resume_check(model_dir: str, root: str, info: DistInfo, out: dict[str, Any]) -> None:
    first = trainer(model_dir, info)
    out["loadedFromShards"] = not loaded_equals_pretrained(first, model_dir)
    out["shardRows"] = first.policy.lm.transformer.wte.weight.to_local().shape[0]
    first.step(1)
    saver = checkpoint.Checkpointer(root, info)
    saver.save(1, first.train_state())
    snapshot, rng = local_state(first), torch.get_rng_state()
    whole = {n: p.full_tensor() for n, p in first.policy.lm.named_parameters()}
    after = first.step(2)  # trains while the checkpoint is written in the background
    out["committed"] = saver.wait()
    out["changedSinceSave"] = bool(same(snapshot, local_state(first)))
    torch.set_rng_state(rng)
    second = trainer(model_dir, info, follow=True)
    saved = load(checkpoint.latest_checkpoint(root)[1], second, info)  # type: ignore[index]
    second.restore_scalars(saved["scalars"])
    out["stateMismatch"] = same(snapshot, local_state(second))
    out["resumedStep"], out["klCoef"] = saved["step"], saved["scalars"]["kl_coef"]
    out["nextStep"] = [after, second.step(2)]
    saver.close()
    publish_check(second, root, info, out, "full")
    if info.is_main:  # another world size: rank 0 alone reads what both processes wrote
        alone_info = DistInfo(0, 1, 0, torch.device("cpu"))
        alone = trainer(model_dir, alone_info, plan=TrainPlan())
        load(checkpoint.latest_checkpoint(root)[1], alone, alone_info)  # type: ignore[index]
        params = alone.policy.lm.named_parameters()
        out["worldSizeChange"] = [n for n, p in params if not torch.equal(p.detach(), whole[n])]


def publish_check(t: Any, root: str, info: DistInfo, out: dict[str, Any], tag: str) -> None:
    """The published model, read back by transformers, gives the trained model's logits (and with
    LoRA, how far the adapter moves them: the merge must carry that much)."""
    from transformers import AutoModelForCausalLM

    target = Path(root) / f"published-{tag}"
    if info.is_main:
        target.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    ppo_models.save_plain(t.policy, torch.bfloat16, t.tokenizer, str(target), info)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        logits = t.policy.lm(input_ids=ids).logits.float()
        adapter_off = logits
        if t.ref is None:
            with t.policy.lm.disable_adapter():
                adapter_off = t.policy.lm(input_ids=ids).logits.float()
    if info.is_main:
        plain = AutoModelForCausalLM.from_pretrained(str(target))
        with torch.no_grad():
            again = plain(input_ids=ids).logits.float()
        out[f"published-{tag}"] = {
            "dtype": str(next(plain.parameters()).dtype),
            "maxLogitDiff": float((again - logits).abs().max()),
            "adapterEffect": float((adapter_off - logits).abs().max()),
            "files": sorted(p.name for p in target.iterdir()),
        }


def lora_check(model_dir: str, root: str, info: DistInfo, out: dict[str, Any]) -> None:
    from safetensors import safe_open

    t = trainer(model_dir, info, adapter=LoraSettings(rank=4, alpha=8))
    t.step(1)
    saver = checkpoint.Checkpointer(root, info)
    saver.save(1, t.train_state())
    uri = saver.wait()
    assert uri is not None
    names: set[str] = set()
    for path in Path(uri).glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            names.update(handle.keys())
    out["loraCheckpointNames"] = sorted(
        {n.split(".")[0] + ":" + ("lora" if "lora_" in n else n) for n in names}
    )
    saver.close()
    with torch.no_grad():  # an adapter far from zero, so a merge that drops it cannot pass
        for name, p in t.policy.lm.named_parameters():
            if "lora_B" in name:
                p.to_local().normal_(std=0.5)
    publish_check(t, root, info, out, "lora")


def rank0_fallback_check(model_dir: str, info: DistInfo, out: dict[str, Any]) -> None:
    """The fallback (rank 0 from_pretrained, broadcast) fills the same shards."""
    from transformers import AutoModelForCausalLM

    t = trainer(model_dir, info)
    expected = {n: p.to_local().clone() for n, p in t.ref.named_parameters()}
    for p in t.ref.parameters():
        p.to_local().zero_()
    wanted = loading.loadable(t.ref, lambda n: False)
    loading._broadcast_from_rank0(
        t.ref, wanted, lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), info
    )
    out["fallbackMismatch"] = [
        n for n, p in t.ref.named_parameters() if not torch.equal(p.to_local(), expected[n])
    ]


def hsdp_check(model_dir: str, info: DistInfo, out: dict[str, Any]) -> None:
    """hybridShard with 2 "nodes" of 1 process: a 2-D mesh, replicated across nodes, sharded within."""
    t = trainer(model_dir, info, plan=TrainPlan(strategy="fsdp", hybrid_shard=True, nodes=2))
    t.step(1)
    weight = t.policy.lm.transformer.wte.weight
    out["hsdp"] = {
        "mesh": list(weight.device_mesh.shape),
        "placements": [type(p).__name__ for p in weight.placements],
        "rows": weight.to_local().shape[0],
    }


def s3_check(model_dir: str, uri: str, info: DistInfo, out: dict[str, Any]) -> None:
    t = trainer(model_dir, info)
    t.step(1)
    saver = checkpoint.Checkpointer(uri, info)
    saver.save(1, t.train_state())
    committed = saver.wait()
    assert committed is not None
    out["s3Files"] = storage.list_dir(committed)
    again = trainer(model_dir, info, follow=True)
    load(committed, again, info)
    out["s3Mismatch"] = same(local_state(t), local_state(again))
    saver.close()


def main() -> None:
    assets, work = Path(sys.argv[1]), Path(sys.argv[2])
    s3_root = sys.argv[3] if len(sys.argv) > 3 else None
    torch.manual_seed(0)
    info = init_distributed()
    model_dir = str(assets / "models" / "tiny-gpt2")
    out: dict[str, Any] = {"worldSize": info.world_size}
    resume_check(model_dir, str(work / "full"), info, out)
    lora_check(model_dir, str(work / "lora"), info, out)
    rank0_fallback_check(model_dir, info, out)
    hsdp_check(model_dir, info, out)
    if s3_root:
        s3_check(model_dir, s3_root, info, out)
    mine = {
        k: v for k, v in out.items() if k in ("stateMismatch", "fallbackMismatch", "s3Mismatch", "shardRows")
    }
    ranks: list[Any] = [None] * info.world_size
    dist.all_gather_object(ranks, mine)
    if info.is_main:
        out["ranks"] = ranks
        (work / "result.json").write_text(json.dumps(out, indent=1, default=str))
    shutdown(info)


if __name__ == "__main__":
    main()
    exit_process(0)  # as the stage program does: the interpreter's teardown may abort (distributed.py)
