"""One training loop for every model this toolkit trains.

    normal teacher : objective = cross_entropy,             reference = None
    nasty teacher  : objective = self_undermining (omega),   reference = frozen adversary
    CMIM teacher   : objective = cmim (weight, taus),        reference = the adversary (read for the KL report only)
    KD student     : objective = kd_loss (alpha, tau),       reference = frozen teacher

The reference model stays in ``eval()`` and runs under ``torch.inference_mode()``: one
extra forward per batch, no graph. SGD with momentum and a step schedule (x0.1 at 50% and
75% of the epochs, the paper's 80/120 of 160). Each epoch seeds its data order, augmentation
and dropout from ``(seed, epoch)``, so a run resumed from its last checkpoint ends exactly
where an uninterrupted one would (on the CPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .accel import autocast, prepare
from .data import TensorData, mix_seed
from .distributed import World
from .errors import NastyError, TrainingStopped, one_line
from .safety import parse_json, read_text
from .schema import MetricsRow, validate
from .objectives import CMIM_TAUS, cmim_loss, cross_entropy, kd_loss, kl_tau, self_undermining_loss

__all__ = ["TrainConfig", "fit", "evaluate", "resolve_device", "Guard", "objective_for", "make_optimizer",
           "frozen_logits"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    steps: int | None = None  # optimizer steps in all (the last epoch stops there); None: every epoch whole

    def check(self) -> None:
        from .safety import limit

        for name, ok in (("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
                         ("lr", self.lr > 0 and math.isfinite(self.lr)),
                         ("steps", self.steps is None or self.steps >= 1)):
            if not ok:
                raise NastyError(f"`{name}` must be positive, got {getattr(self, name)}")
        if self.epochs > limit("EPOCHS"):
            raise NastyError(f"`epochs`: {self.epochs:,} is more than the limit of {limit('EPOCHS'):,} "
                             f"(set NASTY_MAX_EPOCHS to raise it)")

    def epoch_steps(self, train_size: int) -> int:
        """Optimizer steps in one epoch of ``train_size`` images (the last partial batch is dropped)."""
        return max(1, train_size // self.batch_size)

    def total_steps(self, train_size: int) -> int:
        """Optimizer steps the whole schedule takes on ``train_size`` images."""
        whole = self.epochs * self.epoch_steps(train_size)
        return whole if self.steps is None else min(self.steps, whole)

    def for_steps(self, steps: int, train_size: int) -> "TrainConfig":
        """This schedule stretched or shrunk to ``steps`` optimizer steps on ``train_size`` images:
        as many epochs as they need (the last one cut short), the LR milestones at the same
        fractions of the epochs. A thief with a tenth of the images trains ten times the epochs."""
        if int(steps) != steps or steps < 1:
            raise NastyError(f"`student_steps` must be a whole number >= 1, got {steps}")
        steps = int(steps)
        return replace(self, epochs=-(-steps // self.epoch_steps(train_size)), steps=steps)


def objective_for(kind: str, *, omega: float = 0.0, tau: float = 4.0, alpha: float = 0.9, weight: float = 0.0,
                  taus=CMIM_TAUS) -> Callable:
    """``f(logits, labels, reference_logits) -> (loss, terms)`` for 'normal', 'nasty' (``omega``, ``tau``),
    'cmim' (``weight``, ``taus``; the reference's logits are not used) or 'kd' (``alpha``, ``tau``)."""
    if kind == "normal":
        return lambda z, y, _ref: cross_entropy(z, y)
    if kind == "nasty":
        return lambda z, y, ref: self_undermining_loss(z, ref, y, omega=omega, tau=tau)
    if kind == "cmim":
        return lambda z, y, _ref: cmim_loss(z, y, weight=weight, taus=taus)
    if kind == "kd":
        return lambda z, y, ref: kd_loss(z, ref, y, alpha=alpha, tau=tau)
    raise ValueError(f"unknown objective {kind!r}")


def make_optimizer(params, config: TrainConfig):
    """SGD with momentum and weight decay; the LR drops by ``gamma`` at each milestone (per epoch)."""
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    milestones = sorted({max(1, round(f * config.epochs)) for f in config.milestones})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=config.gamma)


def resolve_device(device: str = "auto", *, option: str = "`device`") -> torch.device:
    """``device`` as a torch device that exists here; ``option`` names it in the one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise NastyError(f"{option} {device!r} is not a device; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NastyError(f"{option} {device}: no CUDA device is available here; use cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise NastyError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0..)")
    if dev.type not in ("cpu", "cuda"):
        raise NastyError(f"{option} {device}: only cpu and cuda are supported")
    return dev


def frozen_logits(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A frozen model's fp32 logits: no graph (inference mode), returned as a normal tensor
    that a loss can use (the adversary in hardening, the teacher in KD)."""
    with torch.inference_mode(), autocast(device):
        logits = model(x)
    return logits.float().clone()


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, *, device, reference: nn.Module | None = None,
             tau: float | None = None, batch_size: int = 1000) -> dict:
    """Test accuracy in percent; with ``reference`` and ``tau`` also KL(p_model || p_reference)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct, kl_sum, n = 0, 0.0, 0
    for x, y in data.batches("test", batch_size=batch_size, device=device):
        with autocast(device):
            z = model(x).float()
            zr = reference(x).float() if reference is not None and tau else None
        correct += int((z.argmax(1) == y).sum())
        if zr is not None:
            kl_sum += float(kl_tau(z, zr, tau)) * len(y)
        n += len(y)
    model.train(was_training)
    out = {"accuracy": 100.0 * correct / n}
    if reference is not None and tau:
        out["kl"] = kl_sum / n
    return out


@dataclass
class Guard:
    """Stops a hardening run that collapses.

    From epoch ``early_start`` on: accuracy at chance level (<= 1.5 x ``chance``).
    From epoch ``start`` on (after the first LR drop, when a healthy run is near its final
    accuracy): accuracy more than ``margin`` points below the reference model's.
    """

    reference_accuracy: float
    margin: float = 20.0
    start: int = 1
    chance: float = 0.0
    early_start: int | None = None
    hint: str = "try a smaller `omega`"

    def check(self, epoch: int, accuracy: float) -> None:
        n = epoch + 1
        if self.early_start and n >= self.early_start and accuracy <= 1.5 * self.chance:
            raise TrainingStopped(f"collapsed at epoch {n}: test accuracy {accuracy:.2f}% is at chance level; {self.hint}")
        if n >= self.start and accuracy < self.reference_accuracy - self.margin:
            raise TrainingStopped(
                f"collapsed at epoch {n}: test accuracy {accuracy:.2f}% is more than {self.margin:g} points "
                f"below the adversary's {self.reference_accuracy:.2f}%; {self.hint}")


def fit(model: nn.Module, data: TensorData, *, config: TrainConfig, objective: Callable = None,
        reference: nn.Module | None = None, eval_tau: float | None = None, device="cpu", out=None,
        card: dict | None = None, resume: bool = False, quiet: bool = False, guard: Guard | None = None,
        divergence_hint: str = "try a smaller `lr`", desc: str = "train", compile: bool = False,
        world: World | None = None) -> dict:
    """Train ``model`` in place; checkpoint every epoch to ``out`` if given; return the final card.

    ``card`` holds what the caller knows about the run (arch, omega, ...); the trainer adds
    the data description, accuracy, epoch, seconds and sha256. ``compile`` runs the training
    forward through ``torch.compile``; ``world`` (from :func:`nasty.distributed.setup`) makes it
    one rank of a DistributedDataParallel run.
    """
    from tqdm.auto import tqdm

    config.check()
    w = world or World()
    distributed.check_batch(config.batch_size, w)
    device = torch.device(device)
    objective = objective or objective_for("normal")
    prepare(model, device)
    if reference is not None:
        prepare(reference, device).eval().requires_grad_(False)

    opt, sched = make_optimizer(model.parameters(), config)
    run_config = _run_config(config, {**(card or {}), **data.flip_choice()})
    start, seconds, last = 0, 0.0, None
    out = Path(out) if out else None
    writes = out is not None and w.main  # only rank 0 writes
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    if out is not None and resume:
        start, seconds, last = _resume(out, run_config, model, opt, sched, config, world=w, writes=writes,
                                       arch=str((card or {}).get("arch")))
    step_model = distributed.wrap(model, device, w)
    if compile:
        step_model = torch.compile(step_model)

    base_card = {**(card or {}), **data.describe(), "epochs": config.epochs, "batch_size": config.batch_size,
                 "lr": config.lr, "seed": config.seed, "device": device.type}
    written = None  # the card last written to out
    if writes and start > 0:  # the release files must describe the resume state
        written = _intact_release(out, start) or ckpt.save_release(out, model, {**base_card, **(last or {})})
    steps = len(data.train_y) // config.batch_size or 1
    bar = tqdm(total=config.epochs * steps, initial=start * steps, desc=desc,
               disable=True if quiet or not w.main else None, unit="step",
               dynamic_ncols=True, leave=False)
    try:
        for epoch in range(start, config.epochs):
            t0 = time.perf_counter()
            train = _train_epoch(step_model, model, data, opt, objective, reference=reference, config=config,
                                 epoch=epoch, device=device, world=w, bar=bar)
            lr = opt.param_groups[0]["lr"]
            sched.step()
            if not all(math.isfinite(v) for v in train.values()):
                raise TrainingStopped(f"diverged at epoch {epoch + 1}: the training loss became NaN/inf; "
                                      f"{divergence_hint}" + (f"; the last good checkpoint is kept in {out}" if out and epoch else ""))
            # rank 0 evaluates and tells the others, so every rank stops (or not) alike
            metrics = distributed.share(
                evaluate(model, data, device=device, reference=reference, tau=eval_tau) if w.main else None, w)
            seconds += time.perf_counter() - t0
            bar.set_postfix(epoch=epoch + 1, loss=f"{train['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}")
            if guard is not None:
                guard.check(epoch, metrics["accuracy"])
            last = _record(metrics, epoch=epoch, seconds=seconds, config=config)
            if writes:
                _append_metrics(out / ckpt.METRICS, _metrics_row(epoch, lr, train, metrics, seconds))
                ckpt.save_state(out, {"model": ckpt.plain_state_dict(model), "optimizer": opt.state_dict(),
                                      "scheduler": sched.state_dict(), "epoch": epoch + 1, "seconds": seconds,
                                      "last": last, "config": run_config})
                written = ckpt.save_release(out, model, {**base_card, **last})
    finally:
        bar.close()
    return written or {**base_card, **(last or {})}


def _run_config(config: TrainConfig, card: dict | None) -> dict:
    """What must match for a resume: the schedule, the card's scalars and its nested sha256s (the adversary's)."""
    return {"train": asdict(config),
            "card": {(f"{k}.sha256" if isinstance(v, dict) else k): (v.get("sha256") if isinstance(v, dict) else v)
                     for k, v in (card or {}).items()}}


def _resume(out: Path, run_config: dict, model, opt, sched, config: TrainConfig, *, world: World, writes: bool,
            arch: str) -> tuple[int, float, dict | None]:
    """Load ``out``'s resume state (if any) into the model, optimizer and schedule; return its
    epoch, seconds and last record (``0, 0.0, None`` without one). Rank 0 reads the run directory
    and hands the state to the other ranks (no shared disk needed)."""
    state = distributed.share(ckpt.load_state(out) if world.main else None, world)
    if state is None:
        return 0, 0.0, None
    _check_same_run(state["config"], run_config, out)
    _load_resume(state, model, opt, sched, config, out / ckpt.STATE, arch=arch)
    if writes:
        _truncate_metrics(out / ckpt.METRICS, int(state["epoch"]))
    return int(state["epoch"]), float(state["seconds"]), state.get("last")


def _record(metrics: dict, *, epoch: int, seconds: float, config: TrainConfig) -> dict:
    """The card's record of the epoch just evaluated (``last``)."""
    last = {"accuracy": round(metrics["accuracy"], 4), "epoch": epoch + 1, "seconds": round(seconds, 2),
            "status": "complete" if epoch + 1 == config.epochs else "running"}
    if "kl" in metrics:
        last["kl_to_adversary"] = round(metrics["kl"], 6)
    return last


def _train_epoch(step_model, model: nn.Module, data: TensorData, opt, objective: Callable, *, reference, config,
                 epoch: int, device, world: World, bar) -> dict[str, float]:
    """One epoch of steps; the mean of each loss term over its images (over every rank). Stops
    early (returning the non-finite means) when the loss is no longer finite."""
    # dropout and any other global randomness (each rank its own stream)
    torch.manual_seed(mix_seed(config.seed, epoch, 2, *([world.rank] if world.active else [])))
    model.train()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for step, (x, y) in enumerate(data.batches("train", batch_size=config.batch_size, device=device,
                                               seed=config.seed, epoch=epoch)):
        if world.active:  # every rank drew the same global batch: train on this rank's slice
            x, y = x[world.rank::world.size], y[world.rank::world.size]
        ref_logits = frozen_logits(reference, x, device) if reference is not None else None
        with autocast(device):
            logits = step_model(x)
        loss, terms = objective(logits.float(), y, ref_logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in (("loss", loss.detach()), *terms.items()):
            sums[k] = sums.get(k, 0.0) + v * len(y)
        count += len(y)
        if not world.active and step % 25 == 0 and not math.isfinite(float(loss.detach())):
            break
        bar.update(1)
    return {k: float(v) / max(count, 1) for k, v in distributed.mean(sums, world, device).items()}


def _metrics_row(epoch: int, lr: float, train: dict, metrics: dict, seconds: float) -> dict:
    """One line of ``metrics.jsonl``."""
    row = {"epoch": epoch + 1, "lr": lr, **{f"train_{k}": round(v, 6) for k, v in train.items()},
           "test_accuracy": round(metrics["accuracy"], 4), "seconds": round(seconds, 3)}
    if "kl" in metrics:
        row["test_kl"] = round(metrics["kl"], 6)
    return row


def _load_resume(state: dict, model, opt, sched, config: TrainConfig, where: Path, *, arch: str) -> None:
    """Load a resume state whose structure :func:`nasty.checkpoint.load_state` checked, after
    checking its contents against the model, optimizer and schedule they go into."""
    if state["epoch"] > config.epochs:
        raise NastyError(f"{where}: field epoch: {state['epoch']} is beyond the run's {config.epochs} epochs")
    try:
        ckpt.fit_state_dict(model, state["model"], arch=arch)
    except NastyError as e:
        raise NastyError(f"{where}: field model: {e}") from None
    fresh = opt.state_dict()
    _same_structure(state["optimizer"], {**fresh, "state": state["optimizer"].get("state")}, f"{where}: field optimizer")
    params = dict(enumerate(p for g in opt.param_groups for p in g["params"]))
    saved = state["optimizer"]["state"]
    if not isinstance(saved, dict):
        raise NastyError(f"{where}: field optimizer.state: expected a mapping, found {type(saved).__name__}")
    for i, s in saved.items():
        p = params.get(i)
        buf = s.get("momentum_buffer") if isinstance(s, dict) and set(s) <= {"momentum_buffer"} else False
        if p is None or not (buf is None or (torch.is_tensor(buf) and buf.shape == p.shape and buf.dtype == p.dtype
                                             and bool(torch.isfinite(buf).all()))):
            raise NastyError(f"{where}: field optimizer.state.{one_line(i)}: not a momentum buffer of parameter "
                             f"{one_line(i)}'s shape and dtype")
    _same_structure(state["scheduler"], sched.state_dict(), f"{where}: field scheduler", exact=("milestones", "gamma",
                                                                                             "base_lrs"))
    if state["scheduler"]["last_epoch"] != state["epoch"]:
        raise NastyError(f"{where}: field scheduler.last_epoch: {state['scheduler']['last_epoch']} is not the "
                         f"epoch {state['epoch']}")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])


def _same_structure(saved, fresh, where: str, exact=()) -> None:
    """``saved`` has the keys, types, lengths and tensor shapes of ``fresh`` (and its values for
    the keys in ``exact``); numbers are finite."""
    if isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(saved) != set(fresh):
            raise NastyError(f"{where}: expected the keys {sorted(map(str, fresh))[:8]}")
        for k in fresh:
            if k in exact and not _equal(saved[k], fresh[k]):
                raise NastyError(f"{where}.{k}: {one_line(repr(saved[k]))[:60]}, expected {fresh[k]!r}")
            if fresh[k] is not None or saved[k] is not None:
                _same_structure(saved[k], fresh[k], f"{where}.{k}")
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            raise NastyError(f"{where}: expected a list of {len(fresh)}")
        for i, (a, b) in enumerate(zip(saved, fresh)):
            _same_structure(a, b, f"{where}.{i}")
    elif torch.is_tensor(fresh):
        if not torch.is_tensor(saved) or saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            raise NastyError(f"{where}: expected a {fresh.dtype} tensor of shape {list(fresh.shape)}")
    elif type(saved) is not type(fresh) and not (isinstance(fresh, float) and type(saved) is int):
        raise NastyError(f"{where}: expected {type(fresh).__name__}, found {type(saved).__name__}")
    elif isinstance(saved, float) and not math.isfinite(saved):
        raise NastyError(f"{where}: {saved} is not a finite number")


def _intact_release(out: Path, epoch: int) -> dict | None:
    """The card in ``out`` if it and its weights are the ones written at ``epoch``.

    Kept rather than rewritten: safetensors does not order its metadata, so rewriting the same
    weights can change the file's sha256, which a nasty teacher records for its adversary.
    """
    try:
        card = ckpt.read_card(out)
        same = card.get("epoch") == epoch and card.get("sha256") == ckpt.sha256_file(out / ckpt.WEIGHTS)
    except NastyError:
        return None
    return card if same else None


def _check_same_run(saved: dict, now: dict, out) -> None:
    for section in ("train", "card"):
        a, b = saved.get(section, {}), now.get(section, {})
        for key in sorted(set(a) | set(b)):
            if key in ("seconds", "nasty_version"):
                continue
            va, vb = a.get(key), b.get(key)
            if isinstance(va, (list, tuple)) or isinstance(vb, (list, tuple)):
                va, vb = list(va or []), list(vb or [])
            if not _equal(va, vb):
                now_ = "not given now" if vb is None else f"not {one_line(repr(vb))[:80]}"
                raise NastyError(f"`resume`: the run in {out} was made with {key}={one_line(repr(va))[:80]}, {now_}; "
                                 f"repeat its options or choose another `out`")


def _equal(a, b) -> bool:
    same = False if torch.is_tensor(a) or torch.is_tensor(b) else a == b
    return same if isinstance(same, bool) else False


def _metric_rows(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``, each checked (:class:`nasty.schema.MetricsRow`)."""
    if not os.path.lexists(path):
        return []
    return [validate(MetricsRow, parse_json(line, f"{path} line {i}"), f"{path} line {i}")
            for i, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    ckpt.atomic_write(path, lambda p: Path(p).write_text("".join(json.dumps(r) + "\n" for r in rows)))


def _append_metrics(path: Path, row: dict) -> None:
    # rewritten whole (a few KB) through atomic_write: a kill never leaves half a line
    _write_metrics(path, [*_metric_rows(path), row])


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    if path.exists():
        _write_metrics(path, [r for r in _metric_rows(path) if r["epoch"] <= epochs_done])
