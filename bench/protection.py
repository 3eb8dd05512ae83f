"""How much a teacher's outputs give a thief beyond its labels, undefended and hardened.

    python bench/protection.py --suite digits-quick --out runs/protection

A suite is a list of settings (dataset, teacher architecture, thief share, students, seeds). For
each setting: train a normal teacher (or reuse it), harden it with ``nasty harden``'s defaults
(the budgeted search), and audit both with the thieves who read the outputs (kd, kd-sweep,
kd-topk, skeptical) and the students made from labels alone (scratch, label smoothing,
hard-label-sweep), every student trained to the same number of optimizer steps whatever the
share. Per setting and student, ``reference_adds`` / ``teacher_adds`` are what the undefended /
hardened teacher's outputs add beyond its labels (:func:`attacks.audit.beyond_labels`: the best
thief of the outputs minus the best labels-only student, both picked by their mean), as mean
and std over seeds of the per-seed difference. A defence of the outputs can take at most
``reference_adds``; undistillable means ``teacher_adds <= 0``.

Teachers live in ``out/teachers``, hardened teachers in ``out/hardened`` and audits in
``out/audits``, each in a folder named by its settings: the same suite run again reuses what is
finished and goes on with what is not (the audit's own cells). It writes ``protection.json``,
``protection.md`` and ``protection.png`` in ``out``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attacks.scale import writes  # noqa: E402
from attacks.summary import value_beyond_labels  # noqa: E402
from nasty import checkpoint as ckpt  # noqa: E402
from nasty.errors import BudgetNotMet, NastyError, one_line  # noqa: E402

OUTPUTS = ("kd", "kd-sweep", "kd-topk", "skeptical")  # thieves who read the outputs
LABELS = ("hard-label-sweep",)  # scratch and label smoothing are in every audit
# a cheaper search for the quick suite: 3 temperatures, one weight, one split; its candidates train as long as
# the final run (match_steps caps search_steps there). Shorter candidates pick the wrong pair on digit pairs:
# at 600 of 1,860 steps KD at tau 4 is at 61.9% and still climbing (92.45 at the end) where the top-1 answers
# at tau 16 are at 79.4 already (79.6 at the end), bench/digit_pairs_value.py
QUICK_SWEEP = {"taus": [1.0, 4.0, 16.0], "alphas": [0.9], "val_images": 0, "search_steps": 100_000}


@dataclass(frozen=True)
class Setting:
    """One row group of the benchmark: a teacher, a thief's share and the students it trains."""

    dataset: str
    teacher_arch: str
    share: float
    students: tuple[str, ...]
    seeds: int = 3
    student_steps: int | None = None  # None: the recipe's epochs over the whole training set
    teacher_epochs: int | None = None  # None: the recipe's
    attacks: tuple[str, ...] = OUTPUTS + LABELS
    attack_options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        steps = f"-{self.student_steps}steps" if self.student_steps else ""
        return f"{self.dataset}-{self.teacher_arch}-share{self.share:g}{steps}"


SUITES: dict[str, list[Setting]] = {
    # one setting with much to protect, small enough for 15 minutes on 2 CPU cores
    "digits-quick": [Setting("digit-pairs", "small-cnn", 0.1, ("tiny-cnn",), seeds=2, teacher_epochs=10, attacks=("kd", "kd-sweep", "hard-label-sweep"),
                             attack_options={"kd-sweep": QUICK_SWEEP, "hard-label-sweep": QUICK_SWEEP})],
    # the value-against-share curve on the 100-class pairs (the sweeps as the quick suite's: at the default
    # 80-step candidates they pick by noise there), and the 10-class digits for contrast; the mlp student and
    # more shares with --shares (bench/digit_pairs_value.py draws the curve cheaply, without the audit)
    "digits": [Setting("digit-pairs", "small-cnn", share, ("tiny-cnn",),
                       attack_options={"kd-sweep": QUICK_SWEEP, "hard-label-sweep": QUICK_SWEEP})
               for share in (0.05, 0.1, 0.3)]
              + [Setting("digits", "small-cnn", 0.1, ("tiny-cnn",))],
    # ResNet scale, for a GPU session (CIFAR-10 under --data-root)
    "gpu": [Setting("cifar10", "resnet18", share, ("cnn", "resnetc20")) for share in (0.05, 0.1, 1.0)],
}


def rows_of(setting: Setting, report: dict, hardened: dict) -> list[dict]:
    """protection.json's rows for one setting: one per student."""
    worst = {w["student"]: w["attack"] for w in report["worst_case"]}
    kd = {r["student"]: r["below_scratch"] for r in report["summary"] if r["attack"] == "kd"}
    return [{"setting": setting.name, "dataset": report["dataset"], "teacher_arch": setting.teacher_arch,
             "share": setting.share, "student": student, "seeds": setting.seeds,
             "steps": report["settings"].get("steps"), "samples": report["settings"].get("samples"),
             "reference_adds": value_beyond_labels(report, student, "reference"),
             "teacher_adds": value_beyond_labels(report, student, "teacher"),
             "cost": report["teacher_cost"], "reference_accuracy": report["teachers"]["normal"]["accuracy"],
             "teacher_accuracy": report["teachers"]["nasty"]["accuracy"], "omega": hardened.get("omega"),
             "worst_attack": worst.get(student), "kd_below_scratch": kd.get(student)}
            for student in report["settings"]["students"]]


def _key(setting: Setting) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(asdict(setting), sort_keys=True).encode()).hexdigest()[:8]


def run_setting(setting: Setting, out: Path, *, device: str, quiet: bool, data_root=None,
                devices=None) -> tuple[dict, dict]:
    """Train (or reuse) the normal teacher, harden it with the defaults, audit both: the audit's
    report and the hardened teacher's card. Every step resumes from what ``out`` holds. ``devices``:
    the audit's cells spread over one worker per device (the teachers train here, on the first)."""
    from attacks.audit import audit
    from nasty.runs import harden, train

    teacher = f"{setting.dataset}-{setting.teacher_arch}-{setting.teacher_epochs or 'recipe'}epochs"
    normal_dir, nasty_dir = out / "teachers" / teacher, out / "hardened" / teacher
    if devices:
        device = devices.split(",")[0] if isinstance(devices, str) else devices[0]
    train(dataset=setting.dataset, arch=setting.teacher_arch, epochs=setting.teacher_epochs, data_root=data_root,
          out=normal_dir, resume=True, device=device, quiet=quiet)
    try:
        card = harden(teacher=normal_dir, out=nasty_dir, epochs=setting.teacher_epochs, resume=True, device=device,
                      quiet=quiet, data_root=data_root, echo=None if quiet else print)
    except BudgetNotMet as e:  # the cheapest strength tried was kept: it is what the defaults give
        card = e.card
    report = audit(teacher=nasty_dir, reference=normal_dir, attacks=list(setting.attacks),
                   students=list(setting.students), seeds=tuple(range(setting.seeds)),
                   student_steps=setting.student_steps, attack_options=setting.attack_options,
                   train_fraction=setting.share, data_root=data_root, quiet=quiet, plots=False,
                   out=out / "audits" / f"{setting.name}-{_key(setting)}",
                   **({"devices": devices} if devices else {"device": device}))
    return report, card


def _pm(m: dict | None) -> str:
    return "-" if m is None else f"{m['mean']:+.2f} ± {m['std']:.2f}"


def format_markdown(rows: list[dict]) -> str:
    head = ["setting", "student", "steps", "outputs add (undefended)", "outputs add (hardened)", "cost",
            "omega", "worst attack", "KD below scratch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ref, mine = r["reference_adds"], r["teacher_adds"]
        lines.append("| " + " | ".join([
            r["setting"], r["student"], str(r["steps"]),
            _pm(ref) + (f" ({ref['outputs']} vs {ref['labels']})" if ref else ""),
            _pm(mine) + (f" ({mine['outputs']} vs {mine['labels']})" if mine else ""),
            f"{r['cost']:+.2f}", f"{r['omega']:g}" if r["omega"] is not None else "-", str(r["worst_attack"]),
            "-" if r["kd_below_scratch"] is None else f"{r['kd_below_scratch']:+.2f}"]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Value beyond labels per setting and student, undefended against hardened, ± std over seeds."""
    from nasty.diagnostics import save_figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["reference_adds"] and r["teacher_adds"]]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(1, len(shown))))
    y = range(len(shown))
    for off, side, color, label in ((-0.2, "reference_adds", "#888888", "undefended"),
                                    (0.2, "teacher_adds", "#c0392b", "hardened")):
        ax.barh([i + off for i in y], [r[side]["mean"] for r in shown], height=0.4, color=color, label=label,
                xerr=[r[side]["std"] for r in shown], capsize=2)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(list(y), [f"{r['setting']} {r['student']}" for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("what the outputs add beyond labels (points of student accuracy)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _check(settings: list[Setting], *, data_root) -> None:
    """Every setting's share leaves each class a sample, before anything is written."""
    from nasty.data import load_dataset

    loaded = {}
    for s in settings:
        if not 0 < s.share <= 1:
            raise NastyError(f"--shares: {s.share:g} is not in (0, 1]")
        if s.dataset not in loaded:
            loaded[s.dataset] = load_dataset(s.dataset, root=data_root)
        data = loaded[s.dataset]
        if round(s.share * len(data.train_y)) < data.num_classes:
            raise NastyError(f"--shares: {s.share:g} of {s.dataset}'s {len(data.train_y)} training images leaves "
                             f"{round(s.share * len(data.train_y))}, fewer than its {data.num_classes} classes")


@click.command()
@click.option("--suite", required=True, help=f"One of: {', '.join(SUITES)}.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the results (resumed).")
@click.option("--shares", default=None, help="Comma-separated thief shares, in place of the suite's.")
@click.option("--seeds", type=int, default=None, help="Seeds per setting, in place of the suite's.")
@click.option("--student-steps", type=int, default=None, help="Optimizer steps of every student, in place of the suite's.")
@click.option("--data-root", default=None, help="Where the datasets are (the gpu suite's CIFAR-10).")
@click.option("--device", default="auto", show_default=True)
@click.option("--devices", default=None, help="Spread each audit's cells over one worker per device: cuda:0,cuda:1 "
                                              "(cpu,cpu works too; under torchrun leave it out: docs/scale.md).")
@click.option("--quiet", is_flag=True)
def main(suite, out, shares, seeds, student_steps, data_root, device, devices, quiet):
    """Run a suite; write protection.json, protection.md and protection.png in --out."""
    from dataclasses import replace

    try:
        if suite not in SUITES:
            raise NastyError(f"--suite: unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
        if student_steps is not None and student_steps <= 0:
            raise NastyError(f"--student-steps must be >= 1, got {student_steps}")
        if seeds is not None and not 1 <= seeds <= 100:
            raise NastyError(f"--seeds must be from 1 to 100, got {seeds}")
        settings = SUITES[suite]
        if devices is not None:  # every device there, before any teacher is trained
            from attacks.scale import parse_devices

            devices = parse_devices(devices)
        if shares is not None:
            try:
                values = [float(v) for v in shares.split(",") if v.strip()]
            except ValueError:
                raise NastyError(f"--shares: a comma-separated list of numbers, got {shares!r}") from None
            settings = list({replace(s, share=v).name: replace(s, share=v) for s in settings for v in values}.values())
        settings = [replace(s, **({"seeds": seeds} if seeds else {}),
                            **({"student_steps": student_steps} if student_steps else {})) for s in settings]
        _check(settings, data_root=data_root)
        out = Path(out)
        rows, t0 = [], time.perf_counter()
        for setting in settings:
            t1 = time.perf_counter()
            report, card = run_setting(setting, out, device=device, quiet=quiet, data_root=data_root, devices=devices)
            rows += [{**r, "seconds": round(time.perf_counter() - t1, 1)} for r in rows_of(setting, report, card)]
            if not writes():  # under torchrun, rank 0 writes the results
                continue
            ckpt.write_json(out / "protection.json", rows)  # after every setting: a killed run leaves what it finished
            ckpt.atomic_write(out / "protection.md", lambda p: Path(p).write_text(format_markdown(rows) + "\n"))
            if not quiet:
                print(format_markdown(rows[-len(setting.students):]), flush=True)
        if not writes():
            return
        plot(rows, out / "protection.png")
        print(format_markdown(rows))
        print(f"{suite}: {len(settings)} settings in {time.perf_counter() - t0:.1f} s -> {out}/protection.json, "
              f"protection.md, protection.png")
    except NastyError as e:
        raise click.ClickException(one_line(str(e).replace("`devices`", "--devices"))) from None


if __name__ == "__main__":
    main()
