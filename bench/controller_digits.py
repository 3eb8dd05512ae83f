"""Two ways to find the hardening strength within an accuracy budget, side by side on digits:
the ladder that ``nasty harden`` ships (up to 3 full trials on log-omega, each probed by KD) and
an online controller (one run whose omega is adjusted after every epoch to hold the validation
cost at the budget: dual ascent on the constraint, in log-omega).

    python bench/budget_digits.py --seeds 0,1,2 --out runs/budget          # the ladder, first
    python bench/controller_digits.py --seeds 0,1,2 --budget-out runs/budget --json bench/results/controller_digits.json

For each teacher seed it reads the ladder's search (``runs/budget/small-cnn-nasty-S/search``: its
plain run's per-epoch validation accuracy, its probe baseline and its trials), runs the
controller on the same 80/20 split and schedule, probes the result with the same KD student, and
prints both: validation cost, probe damage (points below the probe from scratch) and the seconds
each spends past the shared plain run and probe baseline (the ladder's as its search recorded them,
the controller's measured here: compare them only when both ran on an equally loaded machine).
Everything here is scored on the validation split; the test set is not read.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from nasty import checkpoint as ckpt
from nasty.data import load_dataset
from nasty.objectives import self_undermining_loss
from nasty.recipes import RECIPES
from nasty.search import _model
from nasty.trainer import TrainConfig, fit, objective_for


class Controlled:
    """The self-undermining objective with an omega the controller may change between epochs."""

    def __init__(self, omega: float, tau: float):
        self.omega, self.tau = omega, tau

    def __call__(self, z, y, ref):
        return self_undermining_loss(z, ref, y, omega=self.omega, tau=self.tau)


class DualAscent:
    """After epoch n: cost = plain run's validation accuracy at n - this run's; log omega moves by
    ``rate * (budget - cost)`` (at most a factor ``step`` either way), from epoch ``start`` on."""

    def __init__(self, objective: Controlled, plain: list[float], *, budget: float, rate: float, start: int,
                 step: float = 2.0):
        self.objective, self.plain, self.budget, self.rate, self.start, self.step = \
            objective, plain, budget, rate, start, step
        self.trace = []

    def check(self, epoch: int, accuracy: float) -> None:
        cost = self.plain[epoch] - accuracy
        if epoch + 1 >= self.start:
            factor = math.exp(max(-math.log(self.step), min(math.log(self.step), self.rate * (self.budget - cost))))
            self.objective.omega *= factor
        self.trace.append({"epoch": epoch + 1, "val_accuracy": round(accuracy, 4), "cost": round(cost, 4),
                           "omega_next": round(self.objective.omega, 5)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arch", default="small-cnn")
    ap.add_argument("--budget-out", default="runs/budget", help="where bench/budget_digits.py ran")
    ap.add_argument("--rate", type=float, default=0.5, help="log-omega step per point of cost below the budget")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    recipe, rows = RECIPES["digits"], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        root = Path(args.budget_out)
        card = ckpt.read_card(root / f"{args.arch}-nasty-{seed}")
        search, folder = card["search"], root / f"{args.arch}-nasty-{seed}" / "search"
        adversary, _ = ckpt.load_model(root / f"{args.arch}-normal-{seed}")
        adversary.eval().requires_grad_(False)
        data = load_dataset("digits")
        _, val = data.split_validation(search["validation"]["fraction"], seed=search["validation"]["seed"])
        plain = [json.loads(line)["test_accuracy"] for line in (folder / "plain" / ckpt.METRICS).read_text().splitlines()]
        cfg = TrainConfig(epochs=card["epochs"], batch_size=card["batch_size"], lr=card["lr"], seed=seed)
        objective = Controlled(recipe.omega, card["tau"])
        controller = DualAscent(objective, plain, budget=search["max_cost"], rate=args.rate,
                                start=2)
        t0 = time.perf_counter()
        model = _model(args.arch, val, seed)
        done = fit(model, val, config=cfg, objective=objective, reference=adversary, eval_tau=card["tau"],
                   device="cpu", quiet=True, guard=controller)
        probe_cfg = TrainConfig(epochs=search["probe"]["epochs"], batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)
        probe = fit(_model(search["probe"]["student"], val, seed), val, config=probe_cfg,
                    objective=objective_for("kd", alpha=search["probe"]["alpha"], tau=card["tau"]), reference=model,
                    device="cpu", quiet=True)
        seconds = time.perf_counter() - t0
        chosen = next(t for t in search["trials"] if t["trial"] == search["chosen"]) if search["chosen"] is not None else None
        row = {"seed": seed,
               "ladder": {"omega": search["omega"], "val_cost": chosen and chosen["val_cost"],
                          "damage": chosen and chosen["damage"], "trials": len(search["trials"]),
                          "seconds": round(search["seconds"] - search["baseline"]["seconds"], 2)},
               "controller": {"omega_final": round(objective.omega, 5), "val_cost": round(plain[-1] - done["accuracy"], 4),
                              "damage": round(search["baseline"]["probe_scratch"] - probe["accuracy"], 4),
                              "seconds": round(seconds, 2), "trace": controller.trace}}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def ms(xs):
        xs = [x for x in xs if x is not None]
        return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"

    for side in ("ladder", "controller"):
        print(f"{side}: validation cost {ms([r[side]['val_cost'] for r in rows])}, probe damage "
              f"{ms([r[side]['damage'] for r in rows])}, seconds {ms([r[side]['seconds'] for r in rows])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "rate": args.rate, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
