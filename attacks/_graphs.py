"""A student's training forward and backward replayed as CUDA graphs (the audit's GPU default).

Small students at batch 128 are bound by kernel launches on a GPU, not by FLOPs (issue 16). One
graph replay launches a whole forward, one more the whole backward:
``torch.cuda.make_graphed_callables`` captures both on the first batch, and every later batch of
that shape replays them. Measured on one H100 (``bench/student_step_variants.py``), a member-step
took 2.8-4.0x less time than the eager loop for cnn, resnetc20, resnetc32 and resnet18, and less
than in the vmapped ensemble (:mod:`attacks._ensemble`) for the three ResNets (cnn: within 5%).

The module stays the record: the graphs read and write its own parameters, gradients and
BatchNorm statistics. Only a training-mode call with grad enabled on a batch like the captured one
(shape, dtype, device, ``requires_grad``) replays; any other call (evaluation, a smaller batch)
runs the eager forward. Capture runs the forward and backward a few times on the sample batch; its
BatchNorm statistics are put back afterwards, and the gradients it computes are not accumulated.
A module that cannot be captured (data-dependent control flow, host syncs) is trained eagerly,
with a warning.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["capture"]


def capture(module: nn.Module, x: torch.Tensor, *, name: str = "") -> bool:
    """Replace ``module``'s training forward on batches like ``x`` by CUDA graph replays; ``True``
    if captured, ``False`` (with a warning, the module unchanged) if it could not be."""
    # capture's warm-up makes the gradient accumulators on its own stream, as intended; torch warns
    # about that once per process (an H100 run printed it mid-audit), so say it is expected
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet is not None:
        quiet(False)
    eager = module.forward
    saved = [b.detach().clone() for b in module.buffers()]
    sample = x.detach().clone().requires_grad_(x.requires_grad)
    try:
        # the caller's autocast, its weight cache off while capturing (make_graphed_callables' rule)
        with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"),
                            cache_enabled=False):
            torch.cuda.make_graphed_callables(module, (sample,))
    except Exception as exc:  # noqa: BLE001 - any failure to capture means: train this one eagerly
        if module.forward != eager:  # bound methods: equal, never identical
            module.forward = eager
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        warnings.warn(f"could not capture {name or type(module).__name__} as CUDA graphs "
                      f"({type(exc).__name__}: {first}); it trains eagerly", RuntimeWarning, stacklevel=2)
        return False
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)
    graphed = module.forward
    like = (sample.shape, sample.dtype, sample.device, sample.requires_grad)

    def forward(*args, **kwargs):
        if (module.training and torch.is_grad_enabled() and len(args) == 1 and not kwargs
                and torch.is_tensor(args[0])
                and (args[0].shape, args[0].dtype, args[0].device, args[0].requires_grad) == like):
            return graphed(args[0])
        return eager(*args, **kwargs)

    module.forward = forward
    return True
