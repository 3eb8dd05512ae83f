"""Does the whole step captured as a CUDA graph follow the eager step? A GPU diagnostic.

    python bench/step_graph_diff.py --device cuda --json out.json

``run_cells(graphs="step")`` (attacks._graphs.StepGraph, the audit's GPU default) trains KD
students with every step past each epoch's warm-up replayed from one graph. This trains
``--seeds`` seeds' students (tiny-cnn and mlp, KD from ``--sources`` copies of one digits teacher
trained here) three times per variant, with the same initialisation and data order: with the step
captured, through the same StepGraph data path without capturing (``capture=False``), recording
the summed loss of every step, and in the plain loop (``graphs=False``). It prints the first step
where the first two part (relative difference above 1e-3), the largest difference, and the
students' final accuracies and largest parameter differences.

Variants: fp32 with TF32 off (autocast switched off); the same without momentum and weight decay;
the warm-up steps on the current stream instead of a side stream; bf16 autocast (the CUDA path's
default). On the CPU nothing is captured, so all ways must agree exactly (a smoke test of this
script). On an H100 (2026-11-27, bench/results/h100_2026-11-27/run5_*, run6_*) the captured step
followed the eager one: 3 seeds x 2 teachers in bf16 ended with identical weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch

import attacks._graphs as graphs
import attacks.base as base
import nasty.accel as accel
from attacks import create_attack
from nasty import checkpoint as ckpt
from nasty.data import load_dataset
from nasty.runs import train
from nasty.trainer import TrainConfig

VARIANTS = {
    "fp32": {},
    "fp32_no_momentum_no_wd": {"momentum": 0.0, "weight_decay": 0.0},
    "fp32_warmup_on_current_stream": {"current_stream": True},
    "bf16": {"bf16": True},
}


def _run(teachers, data, cfg, device, *, seeds, capture, bf16=False, current_stream=False):
    losses = []

    class Recorded(graphs.StepGraph):
        def __init__(self, run, **kw):
            super().__init__(run, **{**kw, "capture": capture})

        def __call__(self, *a, **kw):
            out = super().__call__(*a, **kw)
            losses.append(out.detach().float().clone())
            return out

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(base, "StepGraph", Recorded))
        if not bf16:
            stack.enter_context(mock.patch.object(accel, "enabled", lambda device: False))
        if current_stream:
            stack.enter_context(mock.patch.object(graphs.StepGraph, "_eager", lambda self, b, y: self.run(b, y)))
        banks = {}
        real_build = base._Cells.build

        def build(*a, **kw):
            cells = real_build(*a, **kw)
            banks.update(cells.banks)
            return cells
        stack.enter_context(mock.patch.object(base._Cells, "build", build))
        acc = base.run_cells(create_attack("kd"), teachers, ["tiny-cnn", "mlp"], data, config=cfg,
                             seeds=seeds, device=device, graphs="step" if capture is not None else False)
    params = torch.cat([p.detach().float().flatten() for s in seeds for p in banks[s].parameters()])
    return torch.stack(losses).cpu() if losses else None, {f"{s}/{'/'.join(k)}": v for s in seeds for k, v in acc[s].items()}, params.cpu()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=1, help="seeds trained together (as the audit does: 3)")
    ap.add_argument("--sources", type=int, default=1, help="teachers (copies of one) per seed (the audit: 2)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    data = load_dataset("digits")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(dataset="digits", out=Path(tmp) / "normal", epochs=4, device=str(device), quiet=True)
        teacher = ckpt.load_model(Path(tmp) / "normal")[0]
    teachers = {f"t{i}": copy.deepcopy(teacher) for i in range(args.sources)}
    print(f"teacher trained in {time.perf_counter() - t0:.1f} s", flush=True)
    results = {"seeds": args.seeds, "sources": args.sources, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "variants": {}}
    for name in args.variants.split(","):
        opts = dict(VARIANTS[name])
        cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05)
        cfg = replace(cfg, **{k: opts.pop(k) for k in ("momentum", "weight_decay") if k in opts})
        ways = {way: _run(teachers, data, cfg, device, seeds=list(range(args.seeds)), capture=way == "captured", **opts)
                for way in ("eager", "captured")}
        (le, ae, pe), (lc, ac, pc) = ways["eager"], ways["captured"]
        _, ap_, pp = _run(teachers, data, cfg, device, seeds=list(range(args.seeds)), capture=None, **opts)
        rel = ((lc - le).abs() / le.abs().clamp_min(1e-8)).tolist()
        parted = next((i for i, r in enumerate(rel) if r > 1e-3), None)
        row = {"steps": len(rel), "first_step_parted": parted, "max_rel_loss_diff": max(rel),
               "rel_loss_diff_first_12": [round(r, 6) for r in rel[:12]],
               "loss_eager_first_8": [round(v, 5) for v in le[:8].tolist()],
               "loss_captured_first_8": [round(v, 5) for v in lc[:8].tolist()],
               "accuracy_eager": ae, "accuracy_captured": ac,
               "max_param_diff": (pc - pe).abs().max().item(),
               "accuracy_plain_loop": ap_, "max_param_diff_plain_vs_eager": (pp - pe).abs().max().item()}
        results["variants"][name] = row
        print(f"{name:32s} parted at step {parted}, max rel loss diff {max(rel):.2e}, "
              f"param diff {row['max_param_diff']:.2e}, acc eager {row['accuracy_eager']} "
              f"captured {row['accuracy_captured']} plain {ap_} (param diff to eager "
              f"{row['max_param_diff_plain_vs_eager']:.2e})", flush=True)
        print(f"{'':32s} rel diff per step: {row['rel_loss_diff_first_12']}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
