"""Training checkpoints with torch.distributed.checkpoint: sharded, each process writes and reads its
own part, in the background while training goes on; resume from the newest complete one.

What is saved is a `TrainState`: named modules (their parameters that require grad: the whole model
in a full fine-tune, the adapter only under LoRA, so the frozen base is never gathered or written),
named optimizers (their states) and a small JSON of the trainer's scalars. `policy/checkpoints/
step-NNNNNNN/` holds:

    shard-000RR-model-00001-of-00001.safetensors  process R-1's shards of every saved tensor
                                                  (DCP's HuggingFaceStorageWriter: offsets in the header)
    rng-rank-RRRRR.json                           each process's random states
    trainer_state.json                            step, world size, module names, the scalars
    _SUCCESS                                      written last; a directory without it is ignored

Loading reads safetensors and JSON only: nothing is unpickled (DCP's default format pickles its
metadata, so it is not used). DCP reshards on load, so a checkpoint also loads on another world
size (the step then differs from an uninterrupted run: the prompts split over the processes
differently). On a volume every process writes into one staging directory that is renamed when
complete; under s3:// each process writes to local scratch and uploads its own files, so every
node's shards reach S3, and global rank 0 writes the marker once all have.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_operator.workloads import layout, storage
from rlhf_operator.workloads.distributed import DistInfo, all_reduce_sum, barrier
from rlhf_operator.workloads.errors import StageConfigError

STATE_FILE = "trainer_state.json"
FORMAT = 2  # 1 was trainer_state.pt (pickled) beside a gathered model
_STEP = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """What a trainer checkpoints: `modules` by name (what of each requires grad), `optimizers` by
    name with the module whose parameters each steps, and JSON-serialisable `scalars`."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]]
    scalars: dict[str, Any] = field(default_factory=dict)


def trained_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of `module` that require grad (sharded ones as their DTensors), by name;
    detached (the same storage, so a load fills them, without their gradients)."""
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def _tensors(state: TrainState) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The state as DCP's nested dict of tensors, and each optimizer's whole state dict (to set it
    back after a load: its param_groups are not saved, they come from the spec)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    optimizers = {name: get_optimizer_state_dict(root, opt) for name, (root, opt) in state.optimizers.items()}
    tensors = {
        "modules": {name: trained_tensors(m) for name, m in state.modules.items()},
        "optimizers": {name: {"state": sd["state"]} for name, sd in optimizers.items()},
    }
    return tensors, optimizers


def rng_state() -> dict[str, Any]:
    """This process's random states as JSON (no pickle)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state().tolist()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _rng_file(rank: int) -> str:
    return f"rng-rank-{rank:05d}.json"


def complete_steps(root: str) -> list[int]:
    """Steps of the checkpoints whose _SUCCESS marker exists (half-written ones are ignored)."""
    steps = []
    for name in storage.list_dir(layout.checkpoints_dir(root)):
        match = _STEP.match(name)
        if match and storage.is_complete_dir(layout.checkpoint_dir(root, int(match.group(1)))):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_checkpoint(root: str) -> tuple[int, str] | None:
    """(step, URI) of the newest complete checkpoint."""
    steps = complete_steps(root)
    return (steps[-1], layout.checkpoint_dir(root, steps[-1])) if steps else None


def load(uri: str, state: TrainState, info: DistInfo) -> dict[str, Any]:
    """Fills `state`'s modules and optimizers from the checkpoint at `uri` and sets this process's
    random states; returns what trainer_state.json holds (step, scalars). A collective."""
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    local = _localize(uri)
    state_path = os.path.join(local, STATE_FILE)
    if not os.path.exists(state_path):
        raise StageConfigError(
            f"the checkpoint {uri} has no {STATE_FILE}: it was written by an older version of the "
            "stage programs; delete it (or its checkpoints directory) to train from the start.",
            "IncompatibleCheckpoint",
        )
    saved = storage.read_json(state_path)
    tensors, optimizers = _tensors(state)
    dcp_load(tensors, storage_reader=HuggingFaceStorageReader(local), no_dist=info.world_size == 1)
    for name, (root, opt) in state.optimizers.items():
        whole = {
            "state": tensors["optimizers"][name]["state"],
            "param_groups": optimizers[name]["param_groups"],
        }
        set_optimizer_state_dict(root, opt, whole)
    rng = os.path.join(local, _rng_file(info.rank))
    # Another world size: the processes beyond the saved ones take rank 0's states.
    set_rng_state(storage.read_json(rng if os.path.exists(rng) else os.path.join(local, _rng_file(0))))
    return dict(saved)


def _localize(uri: str) -> str:
    """The checkpoint as a local directory: itself on a volume; under s3:// one download per node,
    cached under the save's own id, so a checkpoint written again at the same URI is not read stale."""
    if not storage.is_remote(uri):
        return storage.local_path(uri)
    save_id = str(storage.read_json(storage.join(uri, storage.SUCCESS_MARKER)).get("saveId", "unknown"))
    cache = os.environ.get("RLHF_CACHE_DIR") or tempfile.gettempdir()
    return storage.localize_dir(uri, os.path.join(cache, "rlhf-checkpoints", save_id))


@dataclass
class _Pending:
    step: int
    uri: str
    staging: str
    scalars: dict[str, Any]
    modules: list[str]
    write: concurrent.futures.Future[None]


class Checkpointer:
    """Saves a TrainState every few steps without stopping training for the write.

    `save` snapshots this process's shards (DCP's staging copies them to CPU memory) and writes
    them in a background thread (DCP's `async_save`, with a gloo group of its own for its
    collectives); `poll`, called once per step by every process, commits the checkpoint when every
    process has written (one all-reduce of a flag while a save is in flight); `wait` blocks until
    then. One save is in flight at a time.
    """

    def __init__(self, root: str, info: DistInfo, *, keep: int = 2, asynchronous: bool = True) -> None:
        self.root = root
        self.info = info
        self.keep = keep
        self.asynchronous = asynchronous
        self.remote = storage.is_remote(root)
        self.pending: _Pending | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._group: Any = None

    def _staging(self, step: int) -> str:
        """Where this process writes: the shared staging directory on a volume, its own scratch
        directory under s3:// (the processes of a node share one scratch disk)."""
        if not self.remote:
            return storage.local_path(layout.checkpoint_dir(self.root, step)) + ".partial"
        scratch = os.environ.get("RLHF_SCRATCH_DIR", tempfile.gettempdir())
        return os.path.join(scratch, "rlhf-checkpoints", f"step-{step:07d}", f"rank-{self.info.rank:05d}")

    def _background_group(self) -> Any:
        if self._group is None and self.info.world_size > 1:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo")
        return self._group

    def save(self, step: int, state: TrainState) -> None:
        """Starts checkpoint `step` (a collective: every process calls it at the same step)."""
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
        from torch.distributed.checkpoint.state_dict_saver import async_save, save

        self.wait()
        uri, staging = layout.checkpoint_dir(self.root, step), self._staging(step)
        if self.remote or self.info.is_main:  # a leftover of a killed attempt
            shutil.rmtree(staging, ignore_errors=True)
            if self.remote and self.info.is_main:
                storage.remove(uri)
        barrier(self.info)
        os.makedirs(staging, exist_ok=True)
        storage.write_json_atomic(os.path.join(staging, _rng_file(self.info.rank)), rng_state())
        tensors, _ = _tensors(state)
        writer = HuggingFaceStorageWriter(staging, save_distributed=True)
        no_dist = self.info.world_size == 1
        if self.asynchronous:
            saving = async_save(
                tensors, storage_writer=writer, process_group=self._background_group(), no_dist=no_dist
            )
        else:
            save(tensors, storage_writer=writer, no_dist=no_dist)
            saving = None
        write = self._pool.submit(self._finish_write, saving, staging, uri)
        self.pending = _Pending(step, uri, staging, {**state.scalars}, sorted(state.modules), write)

    def _finish_write(self, saving: Any, staging: str, uri: str) -> None:
        if saving is not None:
            saving.result()
        if self.remote:
            storage.upload_files(staging, uri)

    def poll(self) -> str | None:
        """Commits the checkpoint in flight once every process has written it; its URI then."""
        if self.pending is None:
            return None
        done = torch.tensor([1.0 if self.pending.write.done() else 0.0], device=self.info.device)
        if float(all_reduce_sum(done, self.info)) < self.info.world_size:
            return None
        return self._commit()

    def wait(self) -> str | None:
        """Blocks until the checkpoint in flight is written everywhere, and commits it."""
        if self.pending is None:
            return None
        self.pending.write.result()
        return self._commit()

    def _commit(self) -> str:
        pending = self.pending
        assert pending is not None
        self.pending = None
        pending.write.result()  # raises what the write raised
        barrier(self.info)
        if self.info.is_main:
            saved = {
                "format": FORMAT,
                "step": pending.step,
                "worldSize": self.info.world_size,
                "modules": pending.modules,
                "scalars": pending.scalars,
            }
            if self.remote:
                storage.write_json_atomic(storage.join(pending.uri, STATE_FILE), saved)
                storage.write_marker(pending.uri, {"step": pending.step, "saveId": uuid.uuid4().hex})
                shutil.rmtree(pending.staging, ignore_errors=True)
            else:
                storage.write_json_atomic(os.path.join(pending.staging, STATE_FILE), saved)
                storage.commit_local_dir(
                    pending.staging, storage.local_path(pending.uri), {"step": pending.step}
                )
            for old in complete_steps(self.root)[: -self.keep]:
                storage.remove(layout.checkpoint_dir(self.root, old))
        elif self.remote:
            shutil.rmtree(pending.staging, ignore_errors=True)
        if self.info.is_main:
            print(f"checkpoint step {pending.step} -> {pending.uri}", flush=True)
        return pending.uri

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()
