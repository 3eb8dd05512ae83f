"""Students of one architecture trained as one batched ensemble (``torch.func``).

Their parameters and buffers are stacked along a new first dimension
(:func:`torch.func.stack_module_state`) and one ``vmap`` of :func:`torch.func.functional_call`
runs all of them: one kernel launch per layer for the ensemble instead of one per student, which
is what small students at a small batch need on a GPU (they are bound by launches, not FLOPs).
BatchNorm statistics are stacked too, so every member updates its own; dropout draws different
masks per member. SGD (momentum, weight decay) works element by element, so an optimizer over
the stacked tensors gives each member the update it would get alone.

The member modules stay the record: :meth:`Ensemble.write_back` copies the stacked state into
them (for evaluation, checkpoints, and attacks that look at a student), :meth:`Ensemble.read` copies
it back (after a resume), and :func:`momentum_to_members` / :func:`momentum_from_members` do the
same for the optimizer's momentum, so a checkpoint has one format whether or not its students
were trained as an ensemble.
"""

from __future__ import annotations

import copy
import functools
import warnings

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["Ensemble", "momentum_from_members", "momentum_to_members"]


class Ensemble:
    """``members`` (same architecture, distinct weights) behind one vmapped forward: ``(M, B, C)``."""

    def __init__(self, members: list[nn.Module]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        params, buffers = stack_module_state(self.members)
        # in the default memory layout, strides and all (the input too, below): vmap cannot ask a
        # tensor whether it is channels_last (its batch norm on CUDA does for an fp32 input; seen on
        # an H100), and a 1x1 kernel stacked from channels_last members claims to be contiguous with
        # channels_last strides (which a convolution follows). An input whose only odd stride is that
        # of a size-1 dimension is left as it is: the eager loop sees it so, and so do the members.
        self.params = {k: _canonical(v).detach().requires_grad_(v.requires_grad) for k, v in params.items()}
        self.buffers = {k: _canonical(v) for k, v in buffers.items()}
        base = copy.deepcopy(self.members[0]).to("meta")  # the structure only; the weights come from the stacks
        for m in base.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.forward = functools.partial(_norm_in_fp32, type(m).forward, m)
        self.structure = base

        def one(p, b, x):
            return functional_call(base, (p, b), (x,))

        self._shared = vmap(one, in_dims=(0, 0, None), randomness="different")  # the same batch for every member
        self._own = vmap(one, in_dims=(0, 0, 0), randomness="different")  # x[m] for member m

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def __call__(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Logits ``(M, B, C)``: of one batch ``x`` for every member, or of ``x[m]`` for member ``m``."""
        with warnings.catch_warnings():  # an op without a batching rule (adaptive pooling) runs per member
            warnings.filterwarnings("ignore", message="There is a performance drop")
            if isinstance(x, torch.Tensor):
                return self._shared(self.params, self.buffers, x.contiguous())
            return self._own(self.params, self.buffers, torch.stack(x).contiguous())

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked parameters and buffers into the member modules."""
        for i, m in enumerate(self.members):
            for name, t in (*m.named_parameters(), *m.named_buffers()):
                t.copy_((self.params if name in self.params else self.buffers)[name][i])

    @torch.no_grad()
    def read(self) -> None:
        """Copy the member modules' parameters and buffers into the stacks (the inverse of :meth:`write_back`)."""
        for i, m in enumerate(self.members):
            for name, t in (*m.named_parameters(), *m.named_buffers()):
                (self.params if name in self.params else self.buffers)[name][i].copy_(t)

    def pairs(self):
        """``(stacked parameter, [the members' parameters])`` for every parameter name."""
        named = [dict(m.named_parameters()) for m in self.members]
        return [(stacked, [n[name] for n in named]) for name, stacked in self.params.items()]


def _canonical(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of a fresh tensor of its shape (a copy only where they differ)."""
    if t.stride() == torch.empty(t.shape, device="meta").stride():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _norm_in_fp32(forward, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A BatchNorm layer of the vmapped structure, run in fp32 under autocast (a bf16 input upcast,
    the output cast back). Autocast leaves batch norm alone, so it would see a bf16 input with fp32
    running statistics: a plain forward and backward accept that, but vmap's batch-norm backward on
    CUDA does not ("Expected running_mean to have type BFloat16 but got Float", pytorch#184890)."""
    if x.dtype not in (torch.bfloat16, torch.float16):
        return forward(module, x)
    with torch.autocast(x.device.type, enabled=False):
        return forward(module, x.float()).to(x.dtype)


def momentum_to_members(ensembles: list[Ensemble], batched: torch.optim.Optimizer,
                        members: list[torch.optim.Optimizer]) -> None:
    """Give ``members`` (optimizers over the member modules' parameters, together holding every
    member of ``ensembles``) the momentum and learning rate of ``batched`` (the same optimizer over
    the stacks), so that their ``state_dict`` is the checkpoint."""
    owner = {p: opt for opt in members for group in opt.param_groups for p in group["params"]}
    for opt in members:
        for group, bgroup in zip(opt.param_groups, batched.param_groups):
            group["lr"] = bgroup["lr"]
    for e in ensembles:
        for stacked, params in e.pairs():
            buf = batched.state.get(stacked, {}).get("momentum_buffer")
            for i, p in enumerate(params):
                if buf is None:
                    owner[p].state.pop(p, None)
                else:
                    owner[p].state[p] = {"momentum_buffer": buf[i].clone()}


def momentum_from_members(ensembles: list[Ensemble], members: list[torch.optim.Optimizer],
                          batched: torch.optim.Optimizer) -> None:
    """The inverse of :func:`momentum_to_members` (after ``members`` loaded a checkpoint)."""
    state = {p: s for opt in members for p, s in opt.state.items()}
    for group, bgroup in zip(members[0].param_groups, batched.param_groups):
        bgroup["lr"] = group["lr"]
    for e in ensembles:
        for stacked, params in e.pairs():
            bufs = [state.get(p, {}).get("momentum_buffer") for p in params]
            if all(b is not None for b in bufs):
                batched.state[stacked] = {"momentum_buffer": _canonical(torch.stack(bufs).to(stacked.dtype))}
            else:
                batched.state.pop(stacked, None)
