"""What the budgeted default of ``nasty harden`` buys, measured end to end through the CLI.

    python bench/budget_digits.py --seeds 0,1,2 --out runs/budget --json bench/results/budget_digits.json

Per teacher seed: ``nasty train --seed S``, then ``nasty harden`` with its defaults (no --omega:
the search within --max-cost 1.0), then ``nasty audit --attacks kd`` (3 student seeds, the
defender's tau 4) and the same audit with a thief that distils at tau 1. Prints the table and
writes the numbers (test cost, chosen omega, search seconds, students below scratch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def nasty(*args):
    subprocess.run([sys.executable, "-m", "nasty", *map(str, args), "--quiet"], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arch", default="small-cnn")
    ap.add_argument("--max-cost", type=float, default=None, help="[the harden default]")
    ap.add_argument("--thief-taus", default="4,1", help="audit temperatures (4: the defender's; 1: a thief's pick)")
    ap.add_argument("--out", default="runs/budget")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        normal, hard = out / f"{args.arch}-normal-{seed}", out / f"{args.arch}-nasty-{seed}"
        nasty("train", "--arch", args.arch, "--seed", seed, "--out", normal, "--resume")
        nasty("harden", "--teacher", normal, "--seed", seed, "--out", hard, "--resume",
              *(["--max-cost", args.max_cost] if args.max_cost is not None else []))
        card = json.loads((hard / "card.json").read_text())
        row = {"seed": seed, "arch": args.arch, "omega": card["omega"], "teacher_cost": card["teacher_cost"],
               "normal_accuracy": card["adversary"]["accuracy"], "nasty_accuracy": card["accuracy"],
               "search_seconds": card["search"]["seconds"], "final_seconds": card["seconds"],
               "cost_ratio": card["search"]["cost_ratio"], "val_cost": next(
                   t["val_cost"] for t in card["search"]["trials"] if t["trial"] == card["search"]["chosen"]),
               "kd": {}}
        for tau in args.thief_taus.split(","):
            a = out / f"{args.arch}-audit-{seed}-tau{tau}"
            nasty("audit", "--teacher", hard, "--reference", normal, "--attacks", "kd", "--tau", tau,
                  "--no-plots", "--out", a)
            rep = json.loads((a / "report.json").read_text())
            row["kd"][tau] = {r["student"]: {"scratch": r["acc_scratch"]["mean"], "from_normal": r["acc_from_normal"]["mean"],
                                             "from_nasty": r["acc_from_nasty"]["mean"], "below_scratch": r["below_scratch"]}
                              for r in rep["summary"]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def ms(xs):
        return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"

    print(f"\n{args.arch}, teacher seeds {args.seeds}: test cost {ms([r['teacher_cost'] for r in rows])}, "
          f"omega {[r['omega'] for r in rows]}, search/final seconds {ms([r['cost_ratio'] for r in rows])}x")
    for tau in args.thief_taus.split(","):
        for s in rows[0]["kd"][tau]:
            print(f"  thief tau {tau}, {s}: scratch {ms([r['kd'][tau][s]['scratch'] for r in rows])}, from normal "
                  f"{ms([r['kd'][tau][s]['from_normal'] for r in rows])}, from nasty "
                  f"{ms([r['kd'][tau][s]['from_nasty'] for r in rows])}, below scratch "
                  f"{ms([r['kd'][tau][s]['below_scratch'] for r in rows])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"arch": args.arch, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
