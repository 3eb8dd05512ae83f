"""The omega trade-off: teacher accuracy, KL to the normal teacher, and a quick KD check.

    python bench/omega_sweep.py --omegas 0,0.02,0.03,0.04,0.05 --taus 4 --epochs 30 --seeds 0,1,2 \
        --json bench/results/omega_sweep_digits.json

For each seed: train a normal teacher; for each (epochs, tau, omega) harden a nasty teacher
against it; distil each student from it (standard KD at the attacker's tau 4, alpha 0.9);
also train each student from scratch and from the normal teacher. Accuracies are final-epoch
test accuracies in percent; the table shows mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nasty.data import load_dataset
from nasty.models import create_model
from nasty.recipes import RECIPES
from nasty.trainer import TrainConfig, evaluate, fit, objective_for


def floats(s):
    return [float(v) for v in s.split(",") if v]


def ints(s):
    return [int(v) for v in s.split(",") if v]


def net(arch, data, seed):
    torch.manual_seed(seed)
    return create_model(arch, num_classes=data.num_classes, in_chans=data.input_shape[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--arch", default=None)
    ap.add_argument("--omegas", type=floats, default=floats("0,0.02,0.03,0.04,0.05,0.06"))
    ap.add_argument("--taus", type=floats, default=None, help="hardening temperatures [recipe]")
    ap.add_argument("--epochs", type=ints, default=None, help="hardening epochs [recipe]")
    ap.add_argument("--seeds", type=ints, default=ints("0,1,2"))
    ap.add_argument("--students", default="tiny-cnn,mlp")
    ap.add_argument("--kd-tau", type=float, default=4.0)
    ap.add_argument("--kd-alpha", type=float, default=0.9)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    data = load_dataset(args.dataset, root=args.data_root)
    r = RECIPES[data.name]
    arch = args.arch or r.arch
    taus, epochs_list = args.taus or [r.tau], args.epochs or [r.epochs]
    students = args.students.split(",")
    cfg = lambda ep, seed: TrainConfig(epochs=ep, batch_size=r.batch_size, lr=r.lr, seed=seed)  # noqa: E731
    kd = objective_for("kd", alpha=args.kd_alpha, tau=args.kd_tau)
    rows, base = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        normal = net(arch, data, seed)
        fit(normal, data, config=cfg(r.epochs, seed), quiet=True)
        normal_seconds = time.perf_counter() - t0
        normal_acc = evaluate(normal, data, device="cpu")["accuracy"]
        for s in students:
            scratch = fit(net(s, data, seed), data, config=cfg(r.epochs, seed), quiet=True)["accuracy"]
            from_normal = fit(net(s, data, seed), data, config=cfg(r.epochs, seed), objective=kd, reference=normal,
                              quiet=True)["accuracy"]
            base.append({"seed": seed, "student": s, "scratch": scratch, "from_normal": from_normal})
        for ep in epochs_list:
            for tau in taus:
                for omega in args.omegas:
                    t0 = time.perf_counter()
                    nasty = net(arch, data, seed)
                    fit(nasty, data, config=cfg(ep, seed), objective=objective_for("nasty", omega=omega, tau=tau),
                        reference=normal, eval_tau=tau, quiet=True)
                    seconds = time.perf_counter() - t0
                    ev = evaluate(nasty, data, device="cpu", reference=normal, tau=tau)
                    row = {"seed": seed, "epochs": ep, "tau": tau, "omega": omega, "normal_accuracy": normal_acc,
                           "nasty_accuracy": ev["accuracy"], "kl": ev["kl"], "harden_seconds": seconds,
                           "normal_seconds": normal_seconds}
                    for s in students:
                        row[f"kd_{s}"] = fit(net(s, data, seed), data, config=cfg(r.epochs, seed), objective=kd,
                                             reference=nasty, quiet=True)["accuracy"]
                    rows.append(row)
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    def ms(xs):
        return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)

    summary = []
    for ep in epochs_list:
        for tau in taus:
            for omega in args.omegas:
                sel = [x for x in rows if x["epochs"] == ep and x["tau"] == tau and x["omega"] == omega]
                item = {"epochs": ep, "tau": tau, "omega": omega,
                        "teacher_cost": ms([x["normal_accuracy"] - x["nasty_accuracy"] for x in sel]),
                        "nasty_accuracy": ms([x["nasty_accuracy"] for x in sel]), "kl": ms([x["kl"] for x in sel]),
                        "harden_seconds": ms([x["harden_seconds"] for x in sel])}
                for s in students:
                    item[f"kd_{s}"] = ms([x[f"kd_{s}"] for x in sel])
                summary.append(item)
    baseline = {s: {k: ms([b[k] for b in base if b["student"] == s]) for k in ("scratch", "from_normal")} for s in students}
    normal_acc = ms(list({x["seed"]: x["normal_accuracy"] for x in rows}.values()))

    f = lambda m: f"{m[0]:.2f} ± {m[1]:.2f}"  # noqa: E731
    print(f"\n{data.name}, {arch}, seeds {args.seeds}; normal teacher {f(normal_acc)}; KD at tau {args.kd_tau}, "
          f"alpha {args.kd_alpha}")
    for s in students:
        print(f"  {s}: scratch {f(baseline[s]['scratch'])}, KD from normal {f(baseline[s]['from_normal'])}")
    head = "| epochs | tau | omega | nasty teacher | cost | KL(nasty‖normal) | " + " | ".join(f"KD → {s}" for s in students) + " |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for it in summary:
        print(f"| {it['epochs']} | {it['tau']:g} | {it['omega']:g} | {f(it['nasty_accuracy'])} | {it['teacher_cost'][0]:+.2f} | "
              f"{f(it['kl'])} | " + " | ".join(f(it[f'kd_{s}']) for s in students) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"dataset": data.name, "arch": arch, "seeds": args.seeds,
                                               "kd_tau": args.kd_tau, "kd_alpha": args.kd_alpha,
                                               "normal_accuracy": normal_acc, "baseline": baseline,
                                               "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
