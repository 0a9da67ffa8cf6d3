"""torch.distributed setup for multi-process / multi-node policy training (gloo on CPU, nccl on GPU).

torchrun (or `accelerate launch`) starts the processes and sets RANK/LOCAL_RANK/WORLD_SIZE; a
single process without them runs undistributed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "RANK" in os.environ


def init_distributed(timeout_seconds: int | None = None) -> DistInfo:
    """`timeout_seconds`: how long a collective waits for the others (`distributed.timeoutSeconds`)."""
    cuda = torch.cuda.is_available()
    if not launched_by_torchrun():
        return DistInfo(0, 1, 0, torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_seconds) if timeout_seconds else None
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def local_processes() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE), which share its memory."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def wait_for_all() -> None:
    """A barrier over every process when torch.distributed runs (the TRL trainers' processes)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def exit_process(code: int) -> NoReturn:
    """Ends a torchrun process with `code` once its work is done and its process group destroyed.

    After that the interpreter's own teardown can still abort the process (SIGABRT, "terminate
    called without an active exception": a C++ thread of the distributed runtime destroyed while
    joinable), seen once in about 16 two-process runs of tests/train/rollout_worker.py, after main
    had returned and the results were written. The Job must see the code the program returned, so
    the process flushes what it wrote and leaves without that teardown. Not with vLLM loaded: its
    CPU build unlinks its tensor parallel groups' shared memory (/dev/shm) in that teardown."""
    if "vllm" in sys.modules:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def shutdown(info: DistInfo, before_destroy: Callable[[], None] | None = None) -> None:
    """Every rank done, then `before_destroy` (what still uses the process group: a vLLM engine
    that joined it shuts down here, and destroys the groups itself), then the process group."""
    several = info.world_size > 1 and dist.is_initialized()
    if several:
        # Every rank reaches here before any tears down: a rank that destroys its process group
        # while a peer is still writing (rank 0 writes the results) can make gloo abort the peer
        # ("terminate called without an active exception", seen on a loaded machine).
        dist.barrier()
    if before_destroy is not None:
        before_destroy()
    if several and dist.is_initialized():
        dist.destroy_process_group()
