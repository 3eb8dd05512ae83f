"""Students' training steps replayed as CUDA graphs: the whole step (the audit's GPU default) or each student's forward and backward.

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

:class:`StepGraph` goes further and is the audit's GPU default (``run_cells(graphs="step")``):
the whole training step (the teachers' forward, every student's forward, loss and backward, the
optimizers' steps) as one graph per epoch.
On one H100, KD cells of 3 seeds took 3.1-5.4x less time per student-epoch than the eager loop
for the four zoo students; against ``capture`` (``graphs=True``) 1.4-2.6x less for three of them
and 5% more for resnetc20; the cuda tier checks it against the eager loop (docs/speed.md).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["StepGraph", "capture"]


def _expect_side_stream_gradients() -> None:
    """Capture's warm-up makes the gradient accumulators on its own stream, as intended; torch warns
    about that once per process (an H100 run printed it mid-audit), so say it is expected."""
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet is not None:
        quiet(False)


def capture(module: nn.Module, x: torch.Tensor, *, name: str = "") -> bool:
    """Replace ``module``'s training forward on batches like ``x`` by CUDA graph replays; ``True``
    if captured, ``False`` (with a warning, the module unchanged) if it could not be."""
    _expect_side_stream_gradients()
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


class StepGraph:
    """A whole training step replayed as one CUDA graph: ``step(batches, labels, epoch=, step=)``
    calls ``run(batches, labels)`` (every student's forward, loss and backward, then the optimizer
    steps; it returns the summed loss), or replays it.

    ``batches`` maps a key to ``(x, t)`` (``t`` may be ``None``), ``labels`` a key to ``y`` or
    ``None``. Each epoch's first ``warmup`` steps run eagerly on a side stream (capture needs the
    libraries and autograd warmed up). The next step is captured with its batch cloned into the
    graph's own input tensors, then replayed, as is every later step of the epoch, after its batch
    is copied into those tensors. The graph is captured anew each epoch, since the optimizer's
    learning rate is a constant inside it (and so is ``epoch``, which ``run`` may read). ``run``
    must not sync with the host, nor depend on anything but its arguments and the epoch. A step
    whose batch does not fit the captured one (shape, dtype, a missing tensor) runs eagerly. If
    capture fails, the run goes on eagerly with a one-line warning.

    ``capture=False`` captures nothing: after the warm-up, each step copies its batch into the
    same input tensors and calls ``run`` on them (the path the CPU tests walk).
    """

    def __init__(self, run, *, device, warmup: int = 3, capture: bool = True):
        self.run, self.device, self.warmup = run, torch.device(device), warmup
        self.capture = capture and self.device.type == "cuda"
        self.failed, self.epoch, self.side = False, None, None
        self.graph = self.static = self.out = None

    def __call__(self, batches: dict, labels: dict, *, epoch: int, step: int):
        if epoch != self.epoch:  # a new learning rate: the last epoch's graph is stale
            self._drop()
            self.epoch = epoch
        now = (batches, labels)
        if self.failed or step < self.warmup or (self.static is not None and not _fits(self.static, now)):
            return self._eager(*now)
        if self.static is not None:
            _copy_into(self.static, now)
        else:
            self.static = _cloned(now)
            if self.capture and not self._captured():
                return self._eager(*now)
        if self.graph is None:
            return self.run(*self.static)
        self.graph.replay()
        return self.out

    def _captured(self) -> bool:
        _expect_side_stream_gradients()
        try:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.run(*self.static)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure to capture means: go on eagerly
            self.failed = True
            self._drop()
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            warnings.warn(f"could not capture the training step as a CUDA graph ({type(exc).__name__}: {first}); "
                          f"it runs eagerly", RuntimeWarning, stacklevel=3)
            return False

    def _eager(self, batches, labels):
        if not self.capture or self.failed:  # nothing will be captured: the current stream
            return self.run(batches, labels)
        main = torch.cuda.current_stream(self.device)
        self.side = self.side or torch.cuda.Stream(self.device)
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side):
            out = self.run(batches, labels)
        main.wait_stream(self.side)
        return out

    def _drop(self):
        if self.graph is not None:
            self.graph.reset()
        self.graph = self.static = self.out = None


def _tensors(batch) -> list:
    batches, labels = batch
    return [v for x, t in batches.values() for v in (x, t)] + list(labels.values())


def _sharing(tensors: list) -> list:
    """Which tensors are one object (several sources see one batch; the ensemble then runs it once)."""
    first = {}
    return [None if v is None else first.setdefault(id(v), i) for i, v in enumerate(tensors)]


def _fits(static, batch) -> bool:
    """Does ``batch`` have the keys, shapes and dtypes, the same missing tensors and the same
    tensors shared as ``static``?"""
    if list(static[0]) != list(batch[0]) or list(static[1]) != list(batch[1]):
        return False
    a_all, b_all = _tensors(static), _tensors(batch)
    return _sharing(a_all) == _sharing(b_all) and all(
        a is None or (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device) for a, b in zip(a_all, b_all))


def _cloned(batch):
    """``batch`` with its own copy of every tensor (one copy of a tensor that several keys share)."""
    batches, labels = batch
    copies = {}

    def own(v):
        if v is not None and id(v) not in copies:
            copies[id(v)] = v.detach().clone()
        return None if v is None else copies[id(v)]
    return ({k: (own(x), own(t)) for k, (x, t) in batches.items()}, {k: own(y) for k, y in labels.items()})


def _copy_into(static, batch) -> None:
    done = set()
    for dst, src in zip(_tensors(static), _tensors(batch)):
        if dst is not None and id(dst) not in done:
            done.add(id(dst))
            dst.copy_(src, non_blocking=True)
