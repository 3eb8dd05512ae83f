"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

    torchrun --nproc_per_node=4 -m nasty harden --teacher runs/normal --out runs/nasty

Nothing to configure: ``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` and
:func:`setup` joins the group (NCCL on CUDA, gloo on the CPU). Every rank draws the same global
batch (same seed, same order and augmentation) and trains on its slice ``rank::world``; DDP
averages the gradients, so a step is the single-process step on the same ``--batch-size`` (up to
BatchNorm statistics, which are per rank). The adversary is replicated on every rank in
``eval()``. Rank 0 evaluates, logs and writes checkpoints; a resumed run loads on every rank.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import NastyError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place, from torchrun's environment (one process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group if launched by torchrun; return the world and this rank's device."""
    w = world()
    if not w.active:
        return w, device
    device = rank_device(device, w)
    if not dist.is_initialized():
        # torch.distributed.nn.functional binds ``group=group.WORLD`` as default arguments when it is
        # first imported, which DDP does lazily: imported after the group exists, it would keep the
        # group alive past destroy_process_group, and gloo's threads would then run into interpreter
        # shutdown (a rare SIGABRT, 'terminate called without an active exception'). Import it first.
        import torch.distributed.nn.functional  # noqa: F401

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return w, device


def rank_device(device: torch.device, w: World) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` where ``device`` is a GPU, else ``device``."""
    if not w.active or device.type != "cuda":
        return device
    if w.local_rank >= torch.cuda.device_count():
        raise NastyError(f"LOCAL_RANK {w.local_rank}: only {torch.cuda.device_count()} CUDA device(s) here; "
                         f"start at most that many processes per machine (torchrun's nproc-per-node)")
    device = torch.device("cuda", w.local_rank)
    torch.cuda.set_device(device)
    return device


def check_batch(batch_size: int, w: World) -> None:
    if w.active and batch_size % w.size:
        raise NastyError(f"`batch_size` {batch_size} does not split over {w.size} processes; "
                         f"use a multiple of {w.size}")


def wrap(model: torch.nn.Module, device: torch.device, w: World) -> torch.nn.Module:
    if not w.active:
        return model
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # a weight with a size-1 dimension (a 1-channel input conv) has two valid stride layouts; DDP
    # warns that they differ, which costs nothing here
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(w: World) -> None:
    if w.active:
        dist.barrier()


def share(obj, w: World):
    """Rank 0's ``obj`` on every rank (e.g. the epoch's metrics, so every rank stops alike)."""
    if not w.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(values: dict[str, torch.Tensor], w: World, device: torch.device) -> dict[str, torch.Tensor]:
    """Average a dict of scalar tensors over the ranks (training-loss logs)."""
    if not w.active or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[k]).detach().to(device, torch.float64) for k in keys])
    dist.all_reduce(stacked)
    return {k: v / w.size for k, v in zip(keys, stacked)}


def finish(w: World, *, wait: bool = True) -> None:
    """Leave the process group: after a barrier when every rank got here (the end of a run),
    without one on an error (another rank may never come)."""
    if w.active and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def joined(device: torch.device):
    """``with joined(device) as (world, device):`` one rank's run, whose group is left however the
    run ends, so no gloo/NCCL thread outlives it into interpreter shutdown."""
    w, device = setup(device)
    try:
        yield w, device
    except BaseException:
        finish(w, wait=False)
        raise
    finish(w)
