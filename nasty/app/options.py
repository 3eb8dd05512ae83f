"""The ``nasty`` command line's options that several commands share, and their parsers (comma-separated
lists, seeds, ``ATTACK.KEY=VALUE``)."""

from __future__ import annotations

import functools

import click

from nasty.data import DATASETS

from .cli_errors import fail_cleanly

device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
data_root_option = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                                help="Folder holding the dataset's files (torchvision layout).")
download_option = click.option("--download", is_flag=True,
                               help="Download the dataset into --data-root if it is missing.")
thief_fraction_option = click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0,
                                     show_default=True, help="The attacker's share of the training set (stratified).")
flip_option = click.option("--flip/--no-flip", default=None,
                           help="Random horizontal flips when training on the data (--no-flip for digits, text, "
                                "anything a mirror changes) [a run's recorded choice, else the dataset's].")
unsafe_pickle_option = click.option(
    "--unsafe-pickle", is_flag=True,
    help="Allow full unpickling of .pt/.pth weights. Runs code from the file: only for files you trust.")
report_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars (the summary still prints).")


def dataset_option(help):
    return click.option("--dataset", type=click.Choice(list(DATASETS), case_sensitive=False), default=None, help=help)


arch_option = click.option("--arch", default=None,
                           help="Architecture (see `nasty models`), tv:<name> or timm:<name> [recorded in a run].")


def stacked(*opts):
    def deco(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco


def preprocessing(fn):
    """Turn --input-size/--channels/--channel-order into ``inputs`` and fill what a --model-card file
    states into the options not given on the command line (the command line wins)."""

    @functools.wraps(fn)
    def wrapper(**kw):
        card = kw.pop("model_card", None)
        if card:
            from nasty.released import read_model_card

            for key, value in read_model_card(card).items():
                if key in kw and kw[key] is None:
                    kw[key] = value
        kw["inputs"] = {k: kw.pop(o) for k, o in (("size", "input_size"), ("channels", "channels"),
                                                   ("channel_order", "channel_order"))}
        return fn(**kw)

    return fail_cleanly(wrapper)  # a bad card file is one line too


# what a model you bring expects; a run directory records it (its card's normalization and input)
normalization_options = stacked(
    preprocessing,
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
bring_options = stacked(arch_option, dataset_option("Dataset [the teacher's]."), normalization_options)


released_options = stacked(
    normalization_options,
    click.option("--classes", default=None, callback=lambda ctx, param, v: comma_list(ctx, param, v),
                 help="Comma-separated class names, in the model's output order [the dataset's]."),
    click.option("--expect-accuracy", type=click.FloatRange(0, 100), default=None,
                 help="The test accuracy (%) the model is known to have: stop if it scores more than 5 points "
                      "below (a preprocessing mismatch) [a run's recorded accuracy; else above chance level]."),
)


def data_options(fn):
    for opt in reversed([
        dataset_option("Dataset [train: digits; harden: the teacher's]."),
        data_root_option,
        download_option,
        click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
                     help="Stratified fraction of the training set to use."),
        flip_option,
    ]):
        fn = opt(fn)
    return fn


def run_options(default_out):
    def deco(fn):
        for opt in reversed([
            click.option("--arch", default=None, help="Architecture (see `nasty models`), tv:<name> or timm:<name>."),
            click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs [dataset recipe]."),
            click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [dataset recipe]."),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                         help="Initial SGD learning rate [dataset recipe]."),
            click.option("--seed", type=int, default=0, show_default=True),
            device_option,
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


def comma_list(ctx, param, value):
    """``"a, b"`` -> ``["a", "b"]``; ``None`` stays ``None`` (the default applies)."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"give a comma-separated list, got {value!r}")
    return names


def seed_list(ctx, param, value):
    """``3`` means seeds 0, 1, 2; ``0,5,7`` means those seeds."""
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"a count (3) or a comma-separated list of integers (0,1,2), got {value!r}") from None
    from nasty.safety import limit

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


def audit_options(fn):
    from attacks import ATTACKS, DEFAULT_ATTACKS

    for opt in reversed([
        click.option("--attacks", default=",".join(DEFAULT_ATTACKS), show_default=True, callback=comma_list,
                     help=f"Comma-separated attacks: {', '.join(ATTACKS)}; all runs every one."),
        click.option("--students", default=None, callback=comma_list,
                     help="Comma-separated student architectures [dataset recipe; digits: tiny-cnn,mlp]."),
        click.option("--seeds", default="3", show_default=True, callback=seed_list,
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
        click.option("--attack-option", "attack_options", multiple=True, callback=parse_attack_options,
                     metavar="ATTACK.KEY=VALUE",
                     help="An attack's own setting, repeatable: dafl.lr_g=0.01, deepinversion.pool_size=2048, "
                          "kd-topk.k=1, skeptical.delay=5."),
        device_option,
        click.option("--devices", default=None, callback=lambda ctx, param, v: v and comma_list(ctx, param, v),
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
        report_quiet_option,
    ]):
        fn = opt(fn)
    return fn


def parse_attack_options(ctx, param, values):
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
