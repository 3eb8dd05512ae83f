"""Audit cells per hour against the number of processes sharing them (``audit(devices=["cpu"] * n)``).

    python bench/scale.py --processes 1,2,4 --out runs/scale --json bench/results/scale_cpu.json

Digits teachers (made once in ``--out/teachers``, the tests' recipe: omega 0.05), then the same grid
audited from an empty folder by 1, 2, 4, ... worker processes on the CPU, each with
``torch.set_num_threads(1)`` (so n processes use n threads, and a speed-up is the processes', not
more threads'), and once in this process alone for the cost of starting workers. The wall time is
end to end: workers started, teachers loaded and measured in each, cells trained, report written.
Prints the table and writes the JSON (with the machine's CPU count and load, which bound what it
can show: n processes on fewer cores share them, and cores other jobs use are not ours). After
each run of n > 1 workers, ``machine_ceiling`` is the speed-up n processes of a fixed matrix
workload got at that moment: the most the audit could have got then.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GRID = {"attacks": ["kd", "hard-label", "dafl"], "students": ["tiny-cnn", "mlp"], "quiet": True, "plots": False}


def teachers(folder: Path) -> dict:
    from nasty.runs import harden, train

    train(dataset="digits", out=folder / "normal", resume=True, quiet=True, device="cpu")
    harden(teacher=folder / "normal", out=folder / "nasty", omega=0.05, resume=True, quiet=True, device="cpu")
    return {"teacher": folder / "nasty", "reference": folder / "normal"}


def _spin(seconds_of_work: int) -> None:
    import torch

    torch.set_num_threads(1)
    x = torch.randn(256, 256)
    for _ in range(seconds_of_work * 400):
        x = torch.tanh(x @ x / 16)


def ceiling(processes: int, work: int = 3) -> float:
    """What the machine gives ``processes`` processes of 1 thread now: the speed-up of a fixed
    matrix workload in each, against one (above 1 only where cores are free)."""
    import torch.multiprocessing as mp

    def wall(n):
        ctx = mp.get_context("spawn")
        ps = [ctx.Process(target=_spin, args=(work,)) for _ in range(n)]
        t0 = time.perf_counter()
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        return time.perf_counter() - t0

    one = wall(1)
    return round(processes * one / wall(processes), 2)


def measure(models: dict, out: Path, *, processes: int | None, seeds: int, epochs: int) -> dict:
    """One audit of the grid from an empty ``out``: ``processes`` workers (``None``: in this process)."""
    import torch

    from attacks.audit import audit

    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(1)  # in this process, and what each worker gets (1 // n, at least 1)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    where = {"device": "cpu"} if processes is None else {"devices": ["cpu"] * processes}
    report = audit(**models, out=out, seeds=tuple(range(seeds)), epochs=epochs, **GRID, **where)
    wall = time.perf_counter() - t0
    cells = report["cells"]["done"]
    return {"processes": processes or 1, "spawned": processes is not None, "cells": cells, "wall_s": round(wall, 2),
            "cells_per_hour": round(cells / wall * 3600, 1), "train_s": report["seconds"], "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "machine_ceiling": ceiling(processes) if processes and processes > 1 else None,
            "accuracies": [r["accuracy"] for r in report["runs"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", default="1,2,4", help="worker counts to measure")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each count (the table keeps the fastest)")
    ap.add_argument("--out", default="runs/scale")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    models = teachers(out / "teachers")
    counts = [None] + [int(n) for n in args.processes.split(",")]
    runs = []
    for _ in range(args.repeats):
        for n in counts:
            runs.append(measure(models, out / f"audit-{n or 'inprocess'}", processes=n, seeds=args.seeds,
                                epochs=args.epochs))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "accuracies"}), flush=True)
    same = len({json.dumps(r["accuracies"]) for r in runs}) == 1
    best = {}
    for r in runs:
        k = (r["processes"], r["spawned"])
        if k not in best or r["wall_s"] < best[k]["wall_s"]:
            best[k] = r
    base = best[(1, True)]["wall_s"] if (1, True) in best else None
    rows = []
    for (n, spawned), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        speedup = round(base / r["wall_s"], 2) if base and spawned else None
        rows.append({**{k: v for k, v in r.items() if k != "accuracies"}, "speedup_vs_1_worker": speedup,
                     "efficiency": round(speedup / n, 2) if speedup else None})
    result = {"what": "audit cells per hour against worker processes, digits, CPU, torch.set_num_threads(1) each",
              "grid": {**GRID, "seeds": args.seeds, "epochs": args.epochs}, "repeats": args.repeats,
              "machine": {"cpu_count": os.cpu_count(), "sched_affinity": len(os.sched_getaffinity(0))
                          if hasattr(os, "sched_getaffinity") else None, "platform": platform.platform(),
                          "python": platform.python_version(), "torch": __import__("torch").__version__},
              "same_accuracies_every_run": same, "rows": rows, "runs": [
                  {k: v for k, v in r.items() if k != "accuracies"} for r in runs]}
    print("| processes | spawned | cells | wall (s) | cells per hour | speed-up vs 1 worker | efficiency | "
          "machine ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {'yes' if r['spawned'] else 'no (in process)'} | {r['cells']} | {r['wall_s']} | "
              f"{r['cells_per_hour']} | {r['speedup_vs_1_worker'] or '-'} | {r['efficiency'] or '-'} | "
              f"{r['machine_ceiling'] or '-'} |")
    print(f"every run gave the same accuracies: {same}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
