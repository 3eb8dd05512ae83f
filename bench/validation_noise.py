"""How noisy is the budgeted search's validation cost? One strength, several seeds.

    python bench/validation_noise.py --teacher runs/defences-digits/teachers/digits-small-cnn-recipeepochs \
        --omega 0.05 --seeds 0,1,2,3,4 --out runs/validation-noise [--json bench/results/validation_noise_digits.json]

For each seed, ``nasty harden``'s search runs one trial at ``--omega`` (``Budget(max_trials=1)``): the
seed carves its own validation split and trains the plain run and the trial on the rest. Its
validation cost is set beside the hardened teacher's test cost (the final run at the same omega and
seed, against the released teacher). The spread over seeds is what the 1-point budget is judged with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    from attacks.summary import mean_std
    from nasty import checkpoint as ckpt
    from nasty.errors import BudgetNotMet
    from nasty.runs import harden
    from nasty.search import Budget

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--omega", type=float, default=0.05)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=None, help="hardening epochs [the recipe's]")
    ap.add_argument("--out", default="runs/validation-noise")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows, t0 = [], time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        try:
            card = harden(teacher=args.teacher, budget=Budget(max_trials=1), seed=seed, epochs=args.epochs,
                          resume=True, quiet=True,
                          out=Path(args.out) / f"seed{seed}", device="cpu")
        except BudgetNotMet as e:  # over budget on validation: the cheapest (the only) trial is kept all the same
            card = e.card
        trial = card["search"]["trials"][0]
        if trial.get("omega") != args.omega:
            raise SystemExit(f"the search started at omega {trial.get('omega')}, not {args.omega}: "
                             "the dataset recipe's omega is where it starts")
        rows.append({"seed": seed, "val_cost": trial["val_cost"], "test_cost": round(card["teacher_cost"], 4),
                     "val_images": (card["search"]["validation"] or {}).get("size")})
        print(json.dumps(rows[-1]), flush=True)
    summary = {k: mean_std([r[k] for r in rows]) for k in ("val_cost", "test_cost")}
    result = {"teacher": args.teacher, "omega": args.omega, "epochs": args.epochs, "rows": rows, **summary,
              "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))
    if args.json:
        ckpt.write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
