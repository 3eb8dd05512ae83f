"""Ways to train M small students of one architecture, timed per member-step on one device.

    python bench/student_step_variants.py --device cuda --json out.json [--archs cnn,resnetc20]

The audit's students are launch-bound on a GPU (issue 16). This measures, for M students (three
seeds x two teachers) at batch 128 on CIFAR-shaped data with KD from fixed teacher logits:

- ``loop``: each student's forward, loss and backward in turn, one SGD step over all (the audit's
  ``--ensemble off``);
- ``graphed``: the same loop with each student's forward and backward captured as CUDA graphs
  (``torch.cuda.make_graphed_callables``);
- ``ensemble``: one vmapped forward of all students (``attacks._ensemble.Ensemble``, the audit's
  GPU default), bf16 autocast and channels_last as the trainer runs it;
- ``ensemble_nchw``, ``ensemble_fp32``: the same in the default memory layout, and without autocast;
- ``compiled``: the loop with each student ``torch.compile``-d (default mode; its compile time is
  reported apart);
- ``wholestep``: the loop's whole step (every student's forward, KD loss and backward, then the SGD
  step) captured as one CUDA graph with ``torch.cuda.graph`` after a warm-up on a side stream
  (PyTorch's whole-network capture); a step copies its batch into the graph's inputs and replays
  it, one launch for all M students. What ``run_cells(graphs="step")`` does (the audit's GPU
  default since an H100 run of 2026-11-27);
- ``ensemble_wholestep``: the ensemble's whole step (one vmapped forward of all students, the
  loss, the backward and the SGD step) captured the same way, in the default layout (NCHW);
- ``loop_fused``, ``wholestep_fused``: the loop and its captured whole step with the fused SGD
  kernel (``torch.optim.SGD(fused=True)``: one kernel for every parameter's update, where the
  default on CUDA is the ``foreach`` kernels);
- ``wholestep_nchw``: the captured whole step in the default layout, against ``wholestep``'s
  channels_last.

A larger batch is ``--batch-size`` (512 against the recipe's 128): the figures stay per member-step,
so what a student-epoch takes scales by 128 / batch times the ratio; the recipe's accuracy at that
batch (with the learning rate scaled with it) is a separate question this does not answer.

``--teachers resnet18,resnetc20`` also times one frozen teacher forward of the seeds' batches
joined (``members / 2`` x batch), eager and replayed as a CUDA graph (``teacher_ms``): what the
audit's teacher forward could gain.

Each figure is milliseconds per member-step (one student's step), the median of ``--repeats``
timed runs of ``--steps`` steps after a warm-up. The teacher's forward is left out: every variant
shares it. The JSON is rewritten after each variant, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from attacks import create_attack
from attacks._ensemble import Ensemble
from nasty.models import create_model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _students(arch, m, device, *, channels_last):
    torch.manual_seed(0)
    models = [create_model(arch, num_classes=10, in_chans=3).to(device).train() for _ in range(m)]
    if channels_last:
        for model in models:
            model.to(memory_format=torch.channels_last)
    return models


def _batches(m, batch_size, device, *, channels_last, count=4):
    """``count`` steps of data: per step, one batch per seed (members of a seed share it), teacher
    logits per member, labels per member."""
    g = torch.Generator(device="cpu").manual_seed(1)
    steps = []
    for _ in range(count):
        per_seed = [torch.randn(batch_size, 3, 32, 32, generator=g) for _ in range(m // 2)]
        xs = [x.to(device) for x in per_seed for _ in range(2)]
        if channels_last:
            xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
        ts = [torch.randn(batch_size, 10, generator=g).to(device) for _ in range(m)]
        ys = [torch.randint(0, 10, (batch_size,), generator=g).to(device) for _ in range(m)]
        steps.append((xs, ts, ys))
    return steps


def loop_step(models, *, autocast, fused=False):
    kd = create_attack("kd")
    params = [p for model in models for p in model.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, fused=True if fused else None)

    def step(xs, ts, ys):
        opt.zero_grad(set_to_none=True)
        for model, x, t, y in zip(models, xs, ts, ys):
            with autocast():
                z = model(x)
            kd.loss(z.float(), t, y)[0].backward()
        opt.step()
    return step


def graphed_loop(models, sample, *, autocast):
    xs = sample[0]
    with autocast():
        graphed = list(torch.cuda.make_graphed_callables(tuple(models), tuple((x,) for x in xs)))
    return loop_step(graphed, autocast=autocast), models


def _captured(run, sample):
    """``run(*sample)`` captured as one CUDA graph on its own copies of ``sample`` (lists of
    tensors), after three warm-up calls on a side stream (their effects, such as optimizer steps,
    stay); returns ``replay(*args)``, which copies ``args`` (shaped as ``sample``) into the graph's
    inputs, replays it and returns its output."""
    static = [[t.clone() for t in part] for part in sample]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(*static)

    def replay(*args):
        for dst, src in zip(static, args):
            for d, s in zip(dst, src):
                d.copy_(s, non_blocking=True)
        graph.replay()
        return out
    return replay


def teacher_ms(arch, device, *, batch_size, steps, repeats, autocast, graphed) -> float:
    """Milliseconds of one frozen teacher forward of ``batch_size`` images (bf16, channels_last as
    the audit runs it), eager or replayed as a CUDA graph."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=3).to(device).eval().requires_grad_(False)
    model.to(memory_format=torch.channels_last)
    xs = [torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
          for _ in range(2)]

    def forward(x):
        with torch.no_grad(), autocast():
            return model(x)

    run = _captured(lambda x: forward(x[0]), [[xs[0]]]) if graphed else None
    step = (lambda x: run([x]).clone()) if graphed else forward  # the graph's output is overwritten by the next replay
    return timed_ms(step, [(x,) for x in xs], device, steps=steps, repeats=repeats)


def ensemble_step(models, *, autocast):
    kd = create_attack("kd")
    e = Ensemble(models)
    opt = torch.optim.SGD(e.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step(xs, ts, ys):
        opt.zero_grad(set_to_none=True)
        with autocast():
            z = e(xs).float()
        (len(xs) * kd.loss(z.flatten(0, 1), torch.cat(ts), torch.cat(ys))[0]).backward()
        opt.step()
    return step


def timed_ms(step, data, device, *, steps, repeats, warmup=5) -> float:
    for i in range(warmup):
        step(*data[i % len(data)])
    _sync(device)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            step(*data[i % len(data)])
        _sync(device)
        runs.append((time.perf_counter() - t0) / steps * 1000)
    return statistics.median(runs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--archs", default="cnn,resnetc20,resnetc32,resnet18")
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="loop,graphed,ensemble,ensemble_nchw,ensemble_fp32,compiled")
    ap.add_argument("--teachers", default="", help="Also time these teachers' forward, eager and graphed.")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    bf16 = (lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)) if gpu else nullcontext
    fp32 = nullcontext
    result = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
              "members": args.members, "batch_size": args.batch_size, "ms_per_member_step": {}, "errors": {},
              "compile_s": {}, "teacher_ms": {}}

    def failed(what, exc):  # a variant that fails is a result too
        result["errors"][what] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"{what}: failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)

    def keep():
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    for arch in args.archs.split(","):
        rows = result["ms_per_member_step"].setdefault(arch, {})
        for variant in args.variants.split(","):
            if variant in ("graphed", "wholestep", "ensemble_wholestep", "wholestep_fused", "wholestep_nchw") and not gpu:
                continue
            # NCHW: run 2's layout
            cl = variant not in ("ensemble_nchw", "ensemble_fp32", "ensemble_wholestep", "wholestep_nchw")
            fused = variant.endswith("_fused")
            autocast = fp32 if variant == "ensemble_fp32" else bf16
            t0 = time.perf_counter()
            try:
                models = _students(arch, args.members, device, channels_last=cl and gpu)
                data = _batches(args.members, args.batch_size, device, channels_last=cl and gpu)
                if variant in ("loop", "loop_fused"):
                    step = loop_step(models, autocast=autocast, fused=fused)
                elif variant == "graphed":
                    step, _ = graphed_loop(models, data[0], autocast=autocast)
                elif variant in ("wholestep", "wholestep_fused", "wholestep_nchw"):  # the loop's step as one graph
                    step = _captured(loop_step(models, autocast=autocast, fused=fused), data[0])
                elif variant == "ensemble_wholestep":
                    step = _captured(ensemble_step(models, autocast=autocast), data[0])
                elif variant == "compiled":
                    step = loop_step([torch.compile(m) for m in models], autocast=autocast)
                    step(*data[0])
                    _sync(device)
                    result["compile_s"][arch] = time.perf_counter() - t0
                else:
                    step = ensemble_step(models, autocast=autocast)
                ms = timed_ms(step, data, device, steps=args.steps, repeats=args.repeats) / args.members
                rows[variant] = round(ms, 3)
                print(f"{arch:>10} {variant:>14}: {ms:7.3f} ms per member-step "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)
            except Exception as exc:
                failed(f"{arch}/{variant}", exc)
            keep()
    for arch in filter(None, args.teachers.split(",")):
        batch = args.members // 2 * args.batch_size  # every seed's batch joined, as the audit's teacher sees them
        rows = result["teacher_ms"].setdefault(arch, {"batch": batch})
        for way in ("eager", "graphed") if gpu else ("eager",):
            try:
                ms = teacher_ms(arch, device, batch_size=batch, steps=args.steps, repeats=args.repeats,
                                autocast=bf16, graphed=way == "graphed")
                rows[way] = round(ms, 3)
                print(f"{arch:>10} teacher {way:>8}: {ms:7.3f} ms per forward of {batch} images", flush=True)
            except Exception as exc:
                failed(f"teacher {arch}/{way}", exc)
            keep()
    keep()
    return result


if __name__ == "__main__":
    main()
