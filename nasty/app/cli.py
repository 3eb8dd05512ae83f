"""The ``nasty`` command line: ``train``, ``import``, ``harden``, ``audit``, ``defend``, ``choose``, ``compare``,
``export``, ``demo``, ``plot``, ``models``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nasty import __version__

from .cli_errors import fail_cleanly
from .options import (arch_option, audit_options, bring_options, comma_list, data_options, data_root_option,
                      dataset_option, device_option, download_option, flip_option, released_options, report_quiet_option,
                      parse_attack_options, run_options, seed_list, thief_fraction_option, unsafe_pickle_option)


def _main_rank() -> bool:
    from nasty.distributed import world

    return world().main


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nasty")
def main():
    """Make a released classifier undistillable (Nasty Teacher) and audit its KD-immunity."""


@main.command()
@data_options
@run_options("runs/normal")
@fail_cleanly
def train(dataset, **kw):
    """Train a normal teacher with cross-entropy."""
    from nasty.runs import train as run_train

    card = run_train(dataset=dataset or "digits", **kw)
    if not kw["quiet"] and _main_rank():
        click.echo(f"normal teacher {card['arch']} on {card['dataset']}: test accuracy {card['accuracy']:.2f}% "
                   f"after {card['epoch']} epochs, {card['seconds']:.1f}s -> {kw['out']}")


@main.command()
@click.option("--teacher", required=True, type=click.Path(),
              help="The released model (the adversary): a run directory, .safetensors, or .pt/.pth state dict.")
@data_options
@run_options("runs/nasty")
@click.option("--max-cost", type=click.FloatRange(min=0), default=None,
              help="Accuracy budget in points: search for the strongest hardening whose validation cost stays "
                   "within it [1.0 unless --omega is given].")
@click.option("--omega", type=click.FloatRange(min=0), default=None,
              help="--method nasty: a fixed weight of the self-undermining KL term (no search).")
@click.option("--method", type=click.Choice(["nasty", "cmim"]), default="nasty", show_default=True,
              help="The hardening objective: nasty (self-undermining KL against the teacher, strength --omega) or "
                   "cmim (cross-entropy plus the conditional mutual information of the outputs given the class, "
                   "over temperatures 1-16; strength --cmi-weight).")
@click.option("--cmi-weight", type=click.FloatRange(min=0), default=None,
              help="--method cmim: a fixed weight of the CMI term (no search).")
@click.option("--max-trials", type=click.IntRange(min=1), default=3, show_default=True,
              help="Hardening trials the budgeted search may run (each a full run on 80% of the training set).")
@click.option("--validation", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Fraction of the training set held out for the search's choices.")
@click.option("--select", type=click.Choice(["damage", "value"]), default="damage", show_default=True,
              help="How the search picks among affordable trials: damage (the KD probe's points below scratch) or "
                   "value (the least that the best of KD at tau 1 and at --tau adds to the best labels-only probe: "
                   "scratch, label smoothing, the top-1 thief; 3 more probe runs per trial).")
@click.option("--probe", default=None,
              help="Student architecture of the search's KD probe [the dataset's first audit student].")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Temperature of the softened outputs [dataset recipe].")
@click.option("--init", type=click.Choice(["scratch", "teacher"]), default="scratch", show_default=True,
              help="Start from random weights (the paper) or fine-tune the teacher's weights.")
@click.option("--collapse-margin", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Stop hardening if test accuracy falls this many points below the adversary's (after the "
                   "first LR drop; at chance level from epoch 2); 0 turns the guard off.")
@released_options
@unsafe_pickle_option
@fail_cleanly
def harden(**kw):
    """Train a nasty teacher against the frozen --teacher."""
    from nasty.runs import harden as run_harden
    from nasty.search import Budget

    budget = Budget(validation=kw.pop("validation"), max_trials=kw.pop("max_trials"), probe=kw.pop("probe"),
                    select=kw.pop("select"))
    card = run_harden(budget=budget, echo=click.echo, **kw)
    if not kw["quiet"] and _main_rank():
        if "search" in card:
            click.echo(_search_line(card))
        click.echo(f"{card.get('method', 'nasty')} teacher {card['arch']} on {card['dataset']}: test accuracy {card['accuracy']:.2f}% "
                   f"(adversary {card['adversary']['accuracy']:.2f}%, cost {round(card['teacher_cost'], 2) + 0.0:+.2f} points), "
                   f"KL(p_nasty||p_adversary) at tau {card['tau']:g} = {card['kl_to_adversary']:.3f}, "
                   f"{card['seconds']:.1f}s -> {kw['out']}")


def _search_line(card: dict) -> str:
    """What the budgeted search chose, and why, in one line."""
    sr = card["search"]
    row = next(t for t in sr["trials"] if t["trial"] == sr["chosen"])
    key = sr.get("strength_name", "omega")
    tried = ", ".join(f"{t[key]:g}" for t in sr["trials"])
    return (f"chose {key} {card[key]:g} (tau {card['tau']:g}) for a budget of {sr['max_cost']:g} points: "
            f"validation cost {row['val_cost']:+.2f} (plain {sr['baseline']['val_accuracy']:.2f}%), probe "
            f"{sr['probe']['student']} {row['damage']:+.2f} points below scratch, " + (
                f"its outputs adding {row['value']:+.2f} points to labels ({row['best_outputs']} against "
                f"{row['best_labels']}), the least of the affordable" if "value" in row else
                "the most damage of the affordable") + f" trials ({key} {tried}); search {sr['seconds']:.1f}s = {sr['cost_ratio']:.1f}x the final run")


@main.command()
@click.option("--teacher", required=True, type=click.Path(),
              help="The audited (nasty) teacher: a run directory (or weights, with --arch/--dataset).")
@click.option("--reference", required=True, type=click.Path(),
              help="The normal model it was hardened against: a run directory (e.g. of `nasty import`) or weights.")
@bring_options
@audit_options
@data_root_option
@download_option
@thief_fraction_option
@flip_option
@click.option("--out", type=click.Path(), default="runs/audit", show_default=True, help="Report directory.")
@click.option("--force", is_flag=True, help="Redo cells that an audit with other settings left in --out, and replace "
                                           "report files there that no audit wrote.")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="Write report.html with logit-peak, t-SNE and synthesised-image plots.")
@click.option("--checkpoint-seconds", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Save a cell in training at the end of an epoch once this many seconds passed since its last "
                   "save (0: every epoch); a rerun goes on from there.")
@click.option("--reference-from", type=click.Path(), default=None,
              help="An earlier audit's --out against the same --reference: where one of its cells has these "
                   "settings, its reference-side students are taken instead of trained again.")
@unsafe_pickle_option
@fail_cleanly
def audit(**kw):
    """Attack the nasty and the normal teacher alike; report how much a thief gets from each."""
    from attacks.audit import audit as run_audit

    report = run_audit(**kw)
    if _main_rank():  # under torchrun, rank 0 writes and prints the report
        _print_summary(report, kw["out"])


def _print_summary(report: dict, out) -> None:
    from attacks.audit import format_table

    t = report["teachers"]
    click.echo(f"{report['dataset']}: reference {t['normal']['arch']} {t['normal']['accuracy']:.2f}% "
               f"(defence {t['normal'].get('defence', 'none')}), teacher {t['nasty']['arch']} "
               f"{t['nasty']['accuracy']:.2f}% (defence {t['nasty'].get('defence', '?')}; cost "
               f"{report['teacher_cost']:+.2f} points); final-epoch student accuracy, mean ± std over seeds")
    click.echo(format_table(report))
    files = [f"{out}/{f}" for f in ("report.html", "report.md", "report.json") if (Path(out) / f).exists()]
    click.echo(f"report: {', '.join(files)}")


@main.command()
@click.option("--out", type=click.Path(), default="runs/demo", show_default=True,
              help="Folder for the two teachers and the audit (re-running reuses what is finished).")
@click.option("--quick", is_flag=True,
              help="A smoke test: 1 seed, 2-3 epochs, tiny attack budgets (1-4 minutes on 2 cores). It checks that "
                   "every step runs; its numbers mean nothing.")
@device_option
@report_quiet_option
@fail_cleanly
def demo(out, quick, device, quiet):
    """Digits end to end: train a normal teacher, harden it within 1 point, audit it against kd, hard-label and
    the adaptive kd-sweep and hard-label-sweep thieves (the data-free attacks are `nasty audit`'s, left out here for time)."""
    from .demo import run_demo

    report = run_demo(out=out, quick=quick, device=device, quiet=quiet, echo=click.echo)
    _print_summary(report, f"{out}/audit")
    if quick:
        click.echo("--quick is a smoke test (1 seed, a few epochs): the numbers above mean nothing; "
                   "run `nasty demo` without it for the real table")


@main.command()
@click.option("--teacher", required=True, type=click.Path(), help="The run directory to serve (normal or nasty).")
@click.option("--topk", type=click.IntRange(min=1), default=None, help="Release only the K largest logits (Stingy Teacher).")
@click.option("--reverse-sigmoid", "beta", type=click.FloatRange(min=0), default=None,
              help="Perturb the probabilities by reverse-sigmoid of strength BETA (with --gamma).")
@click.option("--gamma", type=click.FloatRange(min=0), default=0.1, show_default=True, help="Reverse-sigmoid's gamma.")
@click.option("--round", "decimals", type=click.IntRange(0, 8), default=None, help="Round the probabilities to D decimals.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Release softmax(z / T).")
@click.option("--out", type=click.Path(), required=True, help="Run directory of the defended model.")
@click.option("--force", is_flag=True, help="Overwrite a run in --out.")
@click.option("--max-cost", type=click.FloatRange(min=0), default=None,
              help="Accuracy budget in points: warn when the served model scores more than this below the same "
                   "weights unserved on the test split [1.0, as harden's search].")
@data_root_option
@download_option
@device_option
@unsafe_pickle_option
@fail_cleanly
def defend(teacher, topk, beta, gamma, decimals, temperature, out, force, unsafe_pickle, max_cost, data_root, download,
           device):
    """Serve a run with an output transform (no retraining): same weights, transform in its card.

    Several options stack, applied in the order --temperature, --topk, --reverse-sigmoid, --round
    (e.g. --topk 2 --round 1: the two largest probabilities, rounded to one decimal)."""
    from nasty.runs import defend as run_defend

    chosen = [spec for spec in ({"name": "temperature", "t": temperature} if temperature is not None else None,
                                {"name": "topk", "k": topk} if topk is not None else None,
                                {"name": "reverse-sigmoid", "beta": beta, "gamma": gamma} if beta is not None else None,
                                {"name": "round", "decimals": decimals} if decimals is not None else None) if spec]
    if not chosen:
        raise click.UsageError("give at least one of --topk, --reverse-sigmoid, --round, --temperature")
    transform = chosen[0] if len(chosen) == 1 else {"name": "chain", "steps": chosen}
    card = run_defend(teacher=teacher, transform=transform, out=out, force=force, unsafe_pickle=unsafe_pickle,
                      max_cost=max_cost, data_root=data_root, download=download, device=device)
    click.echo(f"{card.get('kind', 'model')} {card.get('arch')} served with {card['defence']}: test accuracy "
               f"{card['accuracy']:.2f}% served ({card['accuracy_unserved']:.2f}% unserved) -> {out}")


@main.command()
@click.option("--teacher", required=True, type=click.Path(), help="The run directory to serve (of train, import or harden).")
@click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="The thief's share of the training set (what a thief is expected to hold).")
@click.option("--attacks", default=None, callback=comma_list,
              help="Comma-separated thieves [kd,kd-sweep,recalibrate,hard-label-sweep]; scratch and "
                   "label-smoothing students are always trained.")
@click.option("--candidates", default=None, callback=comma_list,
              help="Comma-separated defences to measure, in order of preference [round-1,top-2,top-2+round-1]; "
                   "top-1 (labels alone) is the fallback.")
@click.option("--students", default=None, callback=comma_list,
              help="Comma-separated student architectures [dataset recipe].")
@click.option("--seeds", default="3", show_default=True, callback=seed_list,
              help="Number of seeds (3 = 0,1,2) or a comma-separated list.")
@click.option("--student-steps", type=click.IntRange(min=1), default=None,
              help="Optimizer steps of every student [the recipe's epochs over the whole training set].")
@click.option("--validation", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Fraction of the training set held out: every number of the choice is measured there.")
@click.option("--max-value", type=float, default=0.0, show_default=True,
              help="Points the served outputs may add beyond labels for a thief (mean over seeds).")
@click.option("--max-cost", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Points of served top-1 accuracy a defence may lose.")
@click.option("--attack-option", "attack_options", multiple=True, callback=parse_attack_options,
              metavar="ATTACK.KEY=VALUE", help="An attack's own setting, repeatable (kd-sweep.taus=...).")
@click.option("--out", type=click.Path(file_okay=False), default="runs/choice", show_default=True)
@click.option("--force", is_flag=True, help="Redo the cells of another choice in --out.")
@device_option
@click.option("--devices", default=None, callback=lambda ctx, param, v: v and comma_list(ctx, param, v),
              metavar="DEV[,DEV,...]", help="Spread the audits' cells over one worker process per device.")
@data_root_option
@download_option
@report_quiet_option
@fail_cleanly
def choose(teacher, attacks, **kw):
    """Choose a serving defence on validation data: the first of no defence, then --candidates in their order,
    whose outputs add nothing beyond labels for the thieves, else labels alone (top-1); writes choice.json,
    choice.md and the run to serve."""
    from attacks.choose import CHOICE_ATTACKS, choose_defence, format_choice

    choice = choose_defence(teacher=teacher, attacks=attacks or CHOICE_ATTACKS, echo=click.echo, **kw)
    if not _main_rank():
        return
    click.echo(format_choice(choice))
    click.echo(f"serve {choice['served']}" if choice["served"] else f"serve {teacher} as it is: no defence is needed")


@main.command()
@click.option("--reference", required=True, type=click.Path(),
              help="The normal model every defence is compared with: a run directory or weights (with --arch/--dataset).")
@click.option("--teachers", required=True, callback=comma_list,
              help="Comma-separated defended teachers: run directories (of `nasty harden` or `nasty defend`) or weights.")
@bring_options
@audit_options
@data_root_option
@download_option
@thief_fraction_option
@flip_option
@click.option("--out", type=click.Path(file_okay=False), default="runs/compare", show_default=True)
@click.option("--force", is_flag=True, help="Redo cells of another comparison in --out.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write compare.png.")
@unsafe_pickle_option
@fail_cleanly
def compare(reference, teachers, attacks, out, **kw):
    """Audit several defended teachers against one reference: compare.json, compare.md (the table) and compare.png (Pareto front)."""
    from attacks.compare import compare as run_compare
    from attacks.compare import format_compare

    result = run_compare(reference=reference, teachers=teachers, attacks=attacks, out=out, echo=click.echo, **kw)
    if not _main_rank():
        return
    click.echo(format_compare(result))
    click.echo(f"compared {len(result['rows'])} teachers -> {out}/compare.json, compare.md"
               + (", compare.png" if kw["plots"] else ""))


@main.command()
@click.option("--teacher", required=True, type=click.Path(), help="The run directory to export (its transform included).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="FILE.pt2 (torch.export) or FILE.onnx.")
@unsafe_pickle_option
@fail_cleanly
def export(teacher, out, unsafe_pickle):
    """Export what is served (weights + output transform) as a torch.export program or ONNX."""
    from nasty.export import export as run_export

    click.echo(f"wrote {run_export(teacher=teacher, out=out, unsafe_pickle=unsafe_pickle)}")


@main.command()
@click.argument("what", type=click.Choice(["logits", "tsne", "images", "omega", "frontier", "search"]))
@click.option("--teacher", type=click.Path(), default=None, help="A teacher's run directory (the nasty one).")
@click.option("--reference", type=click.Path(), default=None, help="A second teacher shown beside it (the normal one).")
@click.option("--sweep", type=click.Path(dir_okay=False), default=None,
              help="omega, frontier: the JSON written by bench/omega_sweep.py --json.")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Temperature of the softened outputs [the teacher's hardening tau, else 4].")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Image file to write (.png, .pdf, .svg).")
@bring_options
@data_root_option
@unsafe_pickle_option
@fail_cleanly
def plot(what, **kw):
    """Plot softened-output peaks (logits), t-SNE (tsne), synthesised images (images), an omega sweep (omega),
    its cost-damage frontier (frontier) or a hardened run's budgeted search (search)."""
    from nasty.diagnostics import render

    if what == "images":
        from attacks import synthesized_grids  # the data-free attacks make the images (attacks/ builds on nasty/)

        kw["synthesize"] = synthesized_grids
    click.echo(f"wrote {render(what, **kw)}")


@main.command(name="import")
@click.option("--weights", required=True, type=click.Path(),
              help="The released model: a .pt/.pth state dict (read with weights_only=True) or .safetensors.")
@arch_option
@dataset_option("The dataset it classifies (its test split measures the accuracy).")
@data_root_option
@download_option
@released_options
@device_option
@click.option("--out", type=click.Path(), default="runs/imported", show_default=True, help="Run directory to write.")
@click.option("--force", is_flag=True, help="Overwrite a run in --out.")
@unsafe_pickle_option
@fail_cleanly
def import_(**kw):
    """Make a run directory of a model trained elsewhere (weights, architecture, preprocessing), which every
    command then takes as it is: `nasty harden --teacher runs/mine`."""
    from nasty.released import fmt_normalization
    from nasty.runs import import_weights

    card = import_weights(**kw)
    click.echo(f"imported {card['arch']} on {card['dataset']}: test accuracy {card['accuracy']:.2f}% with "
               f"{fmt_normalization(card['normalization'])} -> {kw['out']}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json):
    """List the architectures in the zoo."""
    from nasty.models import list_models

    names = list_models()
    if as_json:
        click.echo(json.dumps(names, indent=2))
        return
    width = max(map(len, names))
    for name, doc in names.items():
        click.echo(f"{name:<{width}}  {doc}")
    click.echo(f"{'tv:<name>':<{width}}  any torchvision.models classifier, e.g. tv:resnet50")
    click.echo(f"{'timm:<name>':<{width}}  any timm model (pip install -e '.[timm]' in a checkout)")


if __name__ == "__main__":  # pragma: no cover
    main()
