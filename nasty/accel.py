"""The CUDA path in one place: bf16 autocast and channels_last for the networks, pinned copies.

:func:`enabled` decides; the trainer, the attacks and the data path ask it. On the CPU it is off,
so CPU runs keep exact fp32 numerics and the default memory layout (and stay bit-reproducible).
The test suite switches it on for the CPU (``torch.autocast`` has a CPU bf16 mode) to run every
branch of the CUDA path on machines without a GPU.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def enabled(device) -> bool:
    """bf16 autocast and channels_last on this device?"""
    return torch.device(device).type == "cuda"


def autocast(device, *, cache: bool = True):
    """bf16 autocast where :func:`enabled`; a no-op context elsewhere (any device type, even one
    that autocast does not know). Losses are computed in fp32 by the callers (``logits.float()``).
    ``cache=False`` recasts the weights at every use (what CUDA-graph capture needs)."""
    device = torch.device(device)
    if not enabled(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def prepare(module: nn.Module, device) -> nn.Module:
    """Move ``module`` to ``device``, in channels_last where :func:`enabled` (in place, returned)."""
    module.to(device)
    if enabled(device):
        module.to(memory_format=torch.channels_last)
    return module


def layout(x: torch.Tensor, device) -> torch.Tensor:
    """An image batch in the layout the networks on ``device`` expect."""
    return x.contiguous(memory_format=torch.channels_last) if enabled(device) and x.dim() == 4 else x


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """One host-to-device copy; through pinned memory to a GPU, so it runs at full bandwidth."""
    device = torch.device(device)
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


def device_of(module: nn.Module) -> torch.device:
    """Where ``module`` runs: the device of its first parameter (or buffer); the CPU if it has none.
    Whatever feeds a model moves its batches there (a CUDA teacher must never see CPU batches)."""
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return t.device if t is not None else torch.device("cpu")
