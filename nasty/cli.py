"""The ``nasty`` command line: ``train``, ``import``, ``harden``, ``audit``, ``demo``, ``plot``, ``models``."""

from __future__ import annotations

import functools
import json
import re
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .data import DATASETS
from .cli_errors import on_interrupt, os_error_line
from .errors import NastyError, NastyWarning, one_line


def _fail_cleanly(fn):
    """Our errors, and paths the OS refuses, print as one line (exit 1); Ctrl-C says how this
    command goes on (exit 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():  # our warnings: one line on stderr each
                warnings.simplefilter("always", NastyWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except NastyError as e:  # text from files may hold newlines or escape sequences: one line, escaped
            raise click.ClickException(one_line(_as_flags(str(e)))) from None
        except OSError as e:  # a name too long, a folder not writable, a full disk: wherever it is met
            raise click.ClickException(os_error_line(e)) from None
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted; {on_interrupt()}", err=True)
            sys.exit(130)

    return wrapper


_NAMED = re.compile(r"`([a-z][a-z0-9_]*)`")


def _as_flags(text: str) -> str:
    """A library message for the command line: each option it names as a Python keyword
    (`` `data_root` ``) becomes the running command's flag (``--data-root``); names that are not
    this command's options stay as they are."""
    flags, ctx = {}, click.get_current_context(silent=True)
    while ctx is not None:  # the command's own options first, then its group's
        for param in ctx.command.params:
            if isinstance(param, click.Option):
                flags.setdefault(param.name, max(param.opts, key=len))
        ctx = ctx.parent
    # a library keyword for one of a list this command takes (compare's `teacher` is one of --teachers)
    return _NAMED.sub(lambda m: flags.get(m.group(1), flags.get(m.group(1) + "s", m.group(0))), text)


def _show_warning(message, category, *args, **kwargs):
    if issubclass(category, NastyWarning):
        click.echo(f"warning: {_as_flags(str(message))}", err=True)
    else:
        _default_showwarning(message, category, *args, **kwargs)


_default_showwarning = warnings.showwarning


def _main_rank() -> bool:
    from .distributed import world

    return world().main


_device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
_data_root_option = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                                 help="Folder holding the dataset's files (torchvision layout).")
_download_option = click.option("--download", is_flag=True,
                                help="Download the dataset into --data-root if it is missing.")
_thief_fraction_option = click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0,
                                      show_default=True, help="The attacker's share of the training set (stratified).")
_unsafe_pickle_option = click.option(
    "--unsafe-pickle", is_flag=True,
    help="Allow full unpickling of .pt/.pth weights. Runs code from the file: only for files you trust.")
_report_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars (the summary still prints).")
def _dataset_option(help):
    return click.option("--dataset", type=click.Choice(list(DATASETS), case_sensitive=False), default=None, help=help)


_arch_option = click.option("--arch", default=None,
                            help="Architecture (see `nasty models`), tv:<name> or timm:<name> [recorded in a run].")


def _options(*opts):
    def deco(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco


def _preprocessing(fn):
    """Turn --input-size/--channels/--channel-order into ``inputs`` and fill what a --model-card file
    states into the options not given on the command line (the command line wins)."""

    @functools.wraps(fn)
    def wrapper(**kw):
        card = kw.pop("model_card", None)
        if card:
            from .released import read_model_card

            for key, value in read_model_card(card).items():
                if key in kw and kw[key] is None:
                    kw[key] = value
        kw["inputs"] = {k: kw.pop(o) for k, o in (("size", "input_size"), ("channels", "channels"),
                                                   ("channel_order", "channel_order"))}
        return fn(**kw)

    return _fail_cleanly(wrapper)  # a bad card file is one line too


# what a model you bring expects; a run directory records it (its card's normalization and input)
_normalization_options = _options(
    _preprocessing,
    click.option("--model-card", type=click.Path(dir_okay=False), default=None,
                 help="A JSON or TOML file stating the options below (and --arch, --dataset, --classes, "
                      "--expect-accuracy) once; options given here win."),
    click.option("--mean", default=None, metavar="M[,M,...]",
                 help="The model's input normalisation: per-channel mean on the 0..1 scale (one value for all) "
                      "[recorded in a run, else the dataset's own statistics]."),
    click.option("--std", default=None, metavar="S[,S,...]", help="Per-channel std, with --mean."),
    click.option("--normalization", type=click.Choice(["imagenet", "unit"]), default=None,
                 help="A preset in place of --mean/--std: imagenet, or unit (plain [0, 1] scaling: mean 0, std 1)."),
    click.option("--input-size", type=click.IntRange(8, 1024), default=None,
                 help="The side in pixels of the model's square input: the data is resized to it [the dataset's]."),
    click.option("--channels", type=click.Choice(["1", "3"]), default=None, callback=lambda c, p, v: v and int(v),
                 help="The model's input channels: grey images are repeated to 3, colour reduced to 1 [the dataset's]."),
    click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default=None,
                 help="The model's channel order (bgr: as OpenCV/Caffe models) [rgb]."),
)
# for weights that do not record what they are (audit, plot)
_bring_options = _options(_arch_option, _dataset_option("Dataset [the teacher's]."), _normalization_options)
_released_options = _options(
    _normalization_options,
    click.option("--classes", default=None, callback=lambda ctx, param, v: _names(ctx, param, v),
                 help="Comma-separated class names, in the model's output order [the dataset's]."),
    click.option("--expect-accuracy", type=click.FloatRange(0, 100), default=None,
                 help="The test accuracy (%) the model is known to have: stop if it scores more than 5 points "
                      "below (a preprocessing mismatch) [a run's recorded accuracy; else above chance level]."),
)


def _data_options(fn):
    for opt in reversed([
        _dataset_option("Dataset [train: digits; harden: the teacher's]."),
        _data_root_option,
        _download_option,
        click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
                     help="Stratified fraction of the training set to use."),
    ]):
        fn = opt(fn)
    return fn


def _run_options(default_out):
    def deco(fn):
        for opt in reversed([
            click.option("--arch", default=None, help="Architecture (see `nasty models`), tv:<name> or timm:<name>."),
            click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs [dataset recipe]."),
            click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [dataset recipe]."),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                         help="Initial SGD learning rate [dataset recipe]."),
            click.option("--seed", type=int, default=0, show_default=True),
            _device_option,
            click.option("--out", type=click.Path(), default=default_out, show_default=True, help="Run directory."),
            click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch."),
            click.option("--force", is_flag=True, help="Overwrite a finished or unrelated run in --out."),
            click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary (errors still print)."),
            click.option("--compile", is_flag=True,
                         help="Run the training forward through torch.compile (pays off on a GPU; the first epoch compiles)."),
        ]):
            fn = opt(fn)
        return fn

    return deco


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nasty")
def main():
    """Make a released classifier undistillable (Nasty Teacher) and audit its KD-immunity."""


@main.command()
@_data_options
@_run_options("runs/normal")
@_fail_cleanly
def train(dataset, **kw):
    """Train a normal teacher with cross-entropy."""
    from .runs import train as run_train

    card = run_train(dataset=dataset or "digits", **kw)
    if not kw["quiet"] and _main_rank():
        click.echo(f"normal teacher {card['arch']} on {card['dataset']}: test accuracy {card['accuracy']:.2f}% "
                   f"after {card['epoch']} epochs, {card['seconds']:.1f}s -> {kw['out']}")


@main.command()
@click.option("--teacher", required=True, type=click.Path(),
              help="The released model (the adversary): a run directory, .safetensors, or .pt/.pth state dict.")
@_data_options
@_run_options("runs/nasty")
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
@_released_options
@_unsafe_pickle_option
@_fail_cleanly
def harden(**kw):
    """Train a nasty teacher against the frozen --teacher."""
    from .runs import harden as run_harden
    from .search import Budget

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


def _names(ctx, param, value):
    """``"a, b"`` -> ``["a", "b"]``; ``None`` stays ``None`` (the default applies)."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"give a comma-separated list, got {value!r}")
    return names


def _seeds(ctx, param, value):
    """``3`` means seeds 0, 1, 2; ``0,5,7`` means those seeds."""
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"a count (3) or a comma-separated list of integers (0,1,2), got {value!r}") from None
    from .safety import limit

    if len(seeds) == 1 and "," not in value:
        if seeds[0] < 1:
            raise click.BadParameter(f"the number of seeds must be at least 1, got {seeds[0]} "
                                     f"(for that one seed alone, write '{seeds[0]},')")
        if seeds[0] > limit("SEEDS"):  # before the list is made: a count is not a size to allocate
            raise click.BadParameter(f"{seeds[0]:,} seeds is more than the limit of {limit('SEEDS'):,} "
                                     f"(set NASTY_MAX_SEEDS to raise it)")
        seeds = list(range(seeds[0]))
    if not seeds:
        raise click.BadParameter("give at least one seed")
    return seeds


def _audit_options(fn):
    from attacks import ATTACKS, DEFAULT_ATTACKS

    for opt in reversed([
        click.option("--attacks", default=",".join(DEFAULT_ATTACKS), show_default=True, callback=_names,
                     help=f"Comma-separated attacks: {', '.join(ATTACKS)}; all runs every one."),
        click.option("--students", default=None, callback=_names,
                     help="Comma-separated student architectures [dataset recipe; digits: tiny-cnn,mlp]."),
        click.option("--seeds", default="3", show_default=True, callback=_seeds,
                     help="Number of seeds (3 = 0,1,2) or a comma-separated list."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="Student epochs over the whole training set [dataset recipe]; a thief with a smaller "
                          "--train-fraction trains as many steps (more epochs of its share)."),
        click.option("--student-steps", type=click.IntRange(min=1), default=None,
                     help="Optimizer steps of every student, whatever the share [--epochs over the whole training set]."),
        click.option("--alpha", type=click.FloatRange(0, 1), default=0.9, show_default=True,
                     help="KD weight of the soft term."),
        click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Attack temperature [4; 20 for 100+ classes]."),
        click.option("--attack-option", "attack_options", multiple=True, callback=_attack_options,
                     metavar="ATTACK.KEY=VALUE",
                     help="An attack's own setting, repeatable: dafl.lr_g=0.01, deepinversion.pool_size=2048, "
                          "kd-topk.k=1, skeptical.delay=5."),
        _device_option,
        click.option("--devices", default=None, callback=lambda ctx, param, v: v and _names(ctx, param, v),
                     metavar="DEV[,DEV,...]",
                     help="Spread the cells over one worker process per device (cuda:0,cuda:1,...; cpu,cpu works "
                          "too); under torchrun leave it out: each rank takes cells (docs/scale.md)."),
        click.option("--ensemble", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     callback=lambda ctx, param, v: {"auto": None, "on": True, "off": False}[v],
                     help="on: train each architecture's students of every seed and teacher as one batched "
                          "ensemble (torch.func). auto: on a GPU, an attack's seeds train together and their whole "
                          "training step replays as one CUDA graph (3.1-5.4x faster than eager on an H100); "
                          "on the CPU, one cell at a time. "
                          "off: one cell at a time."),
        _report_quiet_option,
    ]):
        fn = opt(fn)
    return fn


def _attack_options(ctx, param, values):
    """``("dafl.lr_g=0.01", ...)`` -> ``{"dafl": {"lr_g": 0.01}}`` (numbers as int or float)."""
    out: dict[str, dict] = {}
    for item in values:
        name, _, rest = item.partition(".")
        key, eq, raw = rest.partition("=")
        if not (name and key and eq and raw):
            raise click.BadParameter(f"expected ATTACK.KEY=VALUE (e.g. dafl.lr_g=0.01), got {item!r}")
        try:
            value = int(raw) if raw.lstrip("-").isdigit() else float(raw)
        except ValueError:
            raise click.BadParameter(f"{item!r}: the value must be a number") from None
        out.setdefault(name, {})[key] = value
    return out


@main.command()
@click.option("--teacher", required=True, type=click.Path(),
              help="The audited (nasty) teacher: a run directory (or weights, with --arch/--dataset).")
@click.option("--reference", required=True, type=click.Path(),
              help="The normal model it was hardened against: a run directory (e.g. of `nasty import`) or weights.")
@_bring_options
@_audit_options
@_data_root_option
@_download_option
@_thief_fraction_option
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
@_unsafe_pickle_option
@_fail_cleanly
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
@_device_option
@_report_quiet_option
@_fail_cleanly
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
@_data_root_option
@_download_option
@_device_option
@_unsafe_pickle_option
@_fail_cleanly
def defend(teacher, topk, beta, gamma, decimals, temperature, out, force, unsafe_pickle, max_cost, data_root, download,
           device):
    """Serve a run with an output transform (no retraining): same weights, transform in its card."""
    from .runs import defend as run_defend

    chosen = [spec for spec in ({"name": "topk", "k": topk} if topk is not None else None,
                                {"name": "reverse-sigmoid", "beta": beta, "gamma": gamma} if beta is not None else None,
                                {"name": "round", "decimals": decimals} if decimals is not None else None,
                                {"name": "temperature", "t": temperature} if temperature is not None else None) if spec]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --topk, --reverse-sigmoid, --round, --temperature")
    card = run_defend(teacher=teacher, transform=chosen[0], out=out, force=force, unsafe_pickle=unsafe_pickle,
                      max_cost=max_cost, data_root=data_root, download=download, device=device)
    click.echo(f"{card.get('kind', 'model')} {card.get('arch')} served with {card['defence']}: test accuracy "
               f"{card['accuracy']:.2f}% served ({card['accuracy_unserved']:.2f}% unserved) -> {out}")


@main.command()
@click.option("--reference", required=True, type=click.Path(),
              help="The normal model every defence is compared with: a run directory or weights (with --arch/--dataset).")
@click.option("--teachers", required=True, callback=_names,
              help="Comma-separated defended teachers: run directories (of `nasty harden` or `nasty defend`) or weights.")
@_bring_options
@_audit_options
@_data_root_option
@_download_option
@_thief_fraction_option
@click.option("--out", type=click.Path(file_okay=False), default="runs/compare", show_default=True)
@click.option("--force", is_flag=True, help="Redo cells of another comparison in --out.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write compare.png.")
@_unsafe_pickle_option
@_fail_cleanly
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
@_unsafe_pickle_option
@_fail_cleanly
def export(teacher, out, unsafe_pickle):
    """Export what is served (weights + output transform) as a torch.export program or ONNX."""
    from .export import export as run_export

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
@_bring_options
@_data_root_option
@_unsafe_pickle_option
@_fail_cleanly
def plot(what, **kw):
    """Plot softened-output peaks (logits), t-SNE (tsne), synthesised images (images), an omega sweep (omega),
    its cost-damage frontier (frontier) or a hardened run's budgeted search (search)."""
    from .diagnostics import render

    if what == "images":
        from attacks import synthesized_grids  # the data-free attacks make the images (attacks/ builds on nasty/)

        kw["synthesize"] = synthesized_grids
    click.echo(f"wrote {render(what, **kw)}")


@main.command(name="import")
@click.option("--weights", required=True, type=click.Path(),
              help="The released model: a .pt/.pth state dict (read with weights_only=True) or .safetensors.")
@_arch_option
@_dataset_option("The dataset it classifies (its test split measures the accuracy).")
@_data_root_option
@_download_option
@_released_options
@_device_option
@click.option("--out", type=click.Path(), default="runs/imported", show_default=True, help="Run directory to write.")
@click.option("--force", is_flag=True, help="Overwrite a run in --out.")
@_unsafe_pickle_option
@_fail_cleanly
def import_(**kw):
    """Make a run directory of a model trained elsewhere (weights, architecture, preprocessing), which every
    command then takes as it is: `nasty harden --teacher runs/mine`."""
    from .released import fmt_normalization
    from .runs import import_weights

    card = import_weights(**kw)
    click.echo(f"imported {card['arch']} on {card['dataset']}: test accuracy {card['accuracy']:.2f}% with "
               f"{fmt_normalization(card['normalization'])} -> {kw['out']}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json):
    """List the architectures in the zoo."""
    from .models import list_models

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
