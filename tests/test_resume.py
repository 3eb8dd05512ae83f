"""Crashes: SIGKILL at a random moment of `train`, `harden` and `audit`, a kill in the middle of a
checkpoint write, and a disk that fills up. The same command (with --resume for train/harden,
as is for audit) must finish with exactly the result of an uninterrupted run.

The kill moment is drawn from a seeded RNG (NASTY_KILL_SEED, default 0) and printed, so a
failure can be replayed. The slow test chains several kills through one run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from nasty import checkpoint as ckpt
from nasty.app.cli import main
from nasty.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
KILL_SEED = int(os.environ.get("NASTY_KILL_SEED", "0"))
EPOCHS = "10"
TRAIN = ["train", "--arch", "small-cnn", "--epochs", EPOCHS, "--device", "cpu", "--quiet"]
HARDEN = ["harden", "--epochs", EPOCHS, "--omega", "0.05", "--device", "cpu", "--quiet"]
AUDIT = ["audit", "--attacks", "kd", "--students", "tiny-cnn", "--seeds", "2", "--epochs", "4", "--no-plots",
         "--checkpoint-seconds", "0", "--device", "cpu", "--quiet"]  # a cell in training is saved every epoch
AUDIT_FILES = ("report.json", "kd-seed0.json", "kd-seed0.partial.pt")

# Runs the CLI with atomic_write patched so that the Nth write of one file name stops halfway:
# the temporary file is cut to half its size, a marker is written, and the process sleeps to be killed.
STALL_DRIVER = """
import os, sys, time
from pathlib import Path
import nasty.checkpoint as ckpt
target, nth, marker = os.environ["STALL_NAME"], int(os.environ["STALL_NTH"]), os.environ["STALL_MARKER"]
real, seen = ckpt.atomic_write, [0]
def stalling(path, write):
    if Path(path).name != target:
        return real(path, write)
    seen[0] += 1
    if seen[0] != nth:
        return real(path, write)
    def half(tmp):
        write(tmp)
        with open(tmp, "r+b") as f:
            f.truncate(os.path.getsize(tmp) // 2)
        Path(marker).write_text(str(tmp))
        time.sleep(600)
    return real(path, half)
ckpt.atomic_write = stalling
from nasty.app.cli import main
main(sys.argv[1:], prog_name="nasty")
"""


def _env():
    import torch

    # the same thread count as this process, so in-process and subprocess runs compute the same floats
    return {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _cli(args, *, driver=None, env=None):
    code = ["-c", driver] if driver else ["-m", "nasty"]
    return [sys.executable, *code, *map(str, args)], {**_env(), **(env or {})}


def _run(args):
    cmd, env = _cli(args)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr


def _progress(kind, out: Path) -> int:
    """Units of work done so far (cheap to poll): epochs logged (train, harden) or cells saved (audit)."""
    if kind == "audit":
        return len(list((out / "cells").glob("*.json")))
    metrics = out / ckpt.METRICS
    return metrics.read_text().count("\n") if metrics.exists() else 0


def _saved(kind, out: Path) -> int:
    """Units a resume can start from: the epoch of the resume state, or the cells saved."""
    if kind == "audit":
        return _progress(kind, out)
    return ckpt.load_state(out)["epoch"] if (out / ckpt.STATE).exists() else 0


def _kill_at_random(kind, args, out: Path, *, rng: random.Random, timing: dict, first: int,
                    upto: int | None = None) -> dict:
    """Start the command, let it reach a random number of units of work (>= ``first`` and what is
    already saved, <= units - 2 and <= ``upto``), then SIGKILL it at a random moment of the next unit
    (which may fall in a checkpoint write), at the latest as its last unit starts. With nothing to wait
    for, the moment may fall in the start-up."""
    now = _progress(kind, out)
    low, high = max(first, now), timing["units"] - 2 if upto is None else min(upto, timing["units"] - 2)
    target = rng.randint(low, max(low, high))
    if target > now:  # wait for the target, then kill within the next unit
        span = timing["unit_seconds"]
    else:  # nothing to wait for: kill in the start-up, or in the first unit if 2 more would still be left
        span = timing["startup"] + (timing["unit_seconds"] if timing["units"] - now >= 3 else 0.0)
    delay = rng.uniform(0.0, span)
    cmd, env = _cli(args)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    while target > now and _progress(kind, out) < target:
        assert p.poll() is None, f"{kind} ended early: {p.stderr.read()}"
        time.sleep(0.005)
    # the random moment, or the start of the last unit if that comes first: a run faster than the reference
    # (warm caches, a less loaded machine) must not finish before its kill
    deadline = time.perf_counter() + delay
    while p.poll() is None and time.perf_counter() < deadline and _progress(kind, out) < timing["units"] - 1:
        time.sleep(0.005)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
    p.stderr.close()
    at = round(time.perf_counter() - t0, 2)
    assert p.returncode == -signal.SIGKILL, f"{kind} finished (rc {p.returncode}) before the kill at {at}s"
    kill = {"seconds": at, "after_units": target, "delay": round(delay, 3), "saved": _saved(kind, out)}
    print(f"{kind}: SIGKILL {kill} (NASTY_KILL_SEED={KILL_SEED})")
    return kill


def _same_run(a: Path, b: Path) -> None:
    """Two finished run folders hold the same model: equal final accuracy, equal tensors, equal metrics."""
    ca, cb = ckpt.read_card(a), ckpt.read_card(b)
    assert (ca["accuracy"], ca["epoch"], ca.get("teacher_cost")) == (cb["accuracy"], cb["epoch"], cb.get("teacher_cost"))
    wa, _ = ckpt.load_weights(a)
    wb, _ = ckpt.load_weights(b)
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)

    def rows(d):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in map(json.loads, (d / ckpt.METRICS).open())]

    assert rows(a) == rows(b)
    assert not list(a.glob(".*.tmp*")), "a temporary file was left behind"


def _results(out: Path):
    report = json.loads((out / "report.json").read_text())
    return report["runs"], report["summary"]


def _timed(kind, args, out: Path) -> dict:
    """Run a command to the end, watching its progress: how many units of work it did, the
    wall-clock seconds per unit (checkpoint writes included) and its start-up before the first."""
    cmd, env = _cli(args)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while p.poll() is None:
        if first is None and _progress(kind, out) >= 1:
            first = time.perf_counter() - t0
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr.read()
    p.stderr.close()
    units = _progress(kind, out)
    unit = (wall - first) / (units - 1)
    return {"units": units, "unit_seconds": unit, "startup": max(first - unit, 0.1)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of the three commands, with the seconds each unit of work took."""
    root = tmp_path_factory.mktemp("reference")
    normal, nasty, audit = root / "normal", root / "nasty", root / "audit"
    timing = {"train": _timed("train", [*TRAIN, "--out", normal], normal),
              "harden": _timed("harden", [*HARDEN, "--teacher", normal, "--out", nasty], nasty),
              "audit": _timed("audit", [*AUDIT, "--teacher", nasty, "--reference", normal, "--out", audit], audit)}
    return {"normal": normal, "nasty": nasty, "audit": audit, "timing": timing}


def _command(kind, reference, out):
    if kind == "train":
        return [*TRAIN, "--out", out], ["--resume"]
    if kind == "harden":
        return [*HARDEN, "--teacher", reference["normal"], "--out", out], ["--resume"]
    return [*AUDIT, "--teacher", reference["nasty"], "--reference", reference["normal"], "--out", out], []


def _check_finished(kind, out, reference):
    if kind == "audit":
        assert _results(out) == _results(reference["audit"])
        assert not list(out.rglob(".*.tmp*")), "a temporary file was left behind"
    else:
        _same_run(out, reference["normal" if kind == "train" else "nasty"])


# the audit in the default suite; train and harden (the same loop, other files) in the slow tier
@pytest.mark.parametrize("kind", [pytest.param("train", marks=pytest.mark.slow),
                                  pytest.param("harden", marks=pytest.mark.slow), "audit"])
def test_sigkill_then_resume_ends_where_an_uninterrupted_run_does(kind, reference, tmp_path):
    rng = random.Random(f"{KILL_SEED}-{kind}")
    out = tmp_path / kind
    args, resume = _command(kind, reference, out)
    kill = _kill_at_random(kind, args, out, rng=rng, timing=reference["timing"][kind], first=1)
    assert kill["saved"] >= 1  # the resume below starts from a checkpoint, not from scratch
    _run([*args, *resume])
    _check_finished(kind, out, reference)


# one run file and one audit file in the default suite, the rest in the slow tier
@pytest.mark.parametrize("name,nth", [pytest.param(ckpt.STATE, 3, marks=pytest.mark.slow),
                                      pytest.param(ckpt.WEIGHTS, 3, marks=pytest.mark.slow), (ckpt.CARD, 3),
                                      pytest.param(ckpt.METRICS, 3, marks=pytest.mark.slow),
                                      pytest.param("report.json", 2, marks=pytest.mark.slow),
                                      pytest.param("kd-seed0.json", 1, marks=pytest.mark.slow), ("kd-seed0.partial.pt", 2)])
def test_kill_during_a_write_leaves_nothing_a_later_run_trusts(name, nth, reference, tmp_path):
    kind = "audit" if name in AUDIT_FILES else "train"
    out = tmp_path / kind
    args, resume = _command(kind, reference, out)
    marker = tmp_path / "stalled"
    cmd, env = _cli(args, driver=STALL_DRIVER, env={"STALL_NAME": name, "STALL_NTH": str(nth),
                                                     "STALL_MARKER": str(marker)})
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not marker.exists():
            assert p.poll() is None, f"ended before the stalled write: {p.stderr.read()}"
            time.sleep(0.01)
        partial = Path(marker.read_text())
        assert partial.exists() and partial.stat().st_size > 0
    finally:
        p.kill()
        p.wait()
        p.stderr.close()
    # the half-written file exists only under its temporary name; the real name holds the last whole version
    real = next(out.rglob(name), None)
    if kind == "train":
        card = ckpt.read_card(out)  # whole JSON
        if name == ckpt.CARD:  # the old card no longer describes the new weights: a reader refuses the pair
            assert card["epoch"] == nth - 1
            with pytest.raises(CheckpointError, match="does not match the sha256"):
                ckpt.load_weights(out)
        else:
            assert ckpt.load_weights(out)[1]["epoch"] == card["epoch"]  # whole weights that match their card
        assert ckpt.load_state(out)["epoch"] >= nth - 1
        [json.loads(r) for r in (out / ckpt.METRICS).read_text().splitlines()]
    elif name.endswith(".pt"):  # the audit cell's state of the epoch before, whole
        assert ckpt.load_resume_file(real)["epoch"] == nth - 1
    elif real is not None:
        json.loads(real.read_text())
    _run([*args, *resume])
    assert not partial.exists(), "the killed writer's temporary file was not cleaned up"
    _check_finished(kind, out, reference)


def test_sigkill_inside_an_audit_cell_resumes_from_its_last_saved_epoch(reference, tmp_path):
    out = tmp_path / "audit"
    args, _ = _command("audit", reference, out)
    partial, done = out / "cells" / "kd-seed1.partial.pt", out / "cells" / "kd-seed1.json"  # the last cell
    cmd, env = _cli(args)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not partial.exists():
        assert p.poll() is None and not done.exists(), "the cell finished before it could be killed"
        time.sleep(0.002)
    p.kill()
    p.wait()
    p.stderr.close()
    saved = ckpt.load_resume_file(partial)["epoch"]
    assert 1 <= saved < int(AUDIT[AUDIT.index("--epochs") + 1]) and not done.exists()
    _run(args)
    assert json.loads(done.read_text())["resumed_from_epoch"] == saved and not partial.exists()
    _check_finished("audit", out, reference)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_full_or_unwritable_disk_is_one_line_and_keeps_the_earlier_checkpoints(err, reference, tmp_path,
                                                                                  monkeypatch):
    import torch

    out = tmp_path / "run"
    real_save, calls = torch.save, [0]

    def failing_save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 3:  # the third epoch's resume state: the disk is full from here on
            Path(f).write_bytes(b"\0" * 100)
            raise OSError(err, os.strerror(err))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    args = [*TRAIN, "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and ckpt.STATE in lines[0] and os.strerror(err) in lines[0], r.output
    # the second epoch's checkpoint is whole and consistent; no temporary file is left
    assert ckpt.load_state(out)["epoch"] == 2
    card = ckpt.read_card(out)
    assert card["epoch"] == 2 and card["sha256"] == ckpt.sha256_file(out / ckpt.WEIGHTS)
    assert [r["epoch"] for r in map(json.loads, (out / ckpt.METRICS).open())] == [1, 2, 3]
    assert not list(out.glob(".*.tmp*"))
    monkeypatch.setattr(torch, "save", real_save)  # space freed: --resume finishes the same model
    assert CliRunner().invoke(main, [*args, "--resume"]).exit_code == 0
    _same_run(out, reference["normal"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "harden", "audit"])
def test_five_kills_at_any_moment_then_the_same_result(kind, reference, tmp_path):
    rng = random.Random(f"{KILL_SEED}-{kind}-chain")
    out = tmp_path / kind
    args, resume = _command(kind, reference, out)
    timing, kills = reference["timing"][kind], []
    while len(kills) < 5 and (now := _progress(kind, out)) <= timing["units"] - 2:  # start-up included (first=0)
        # each kill's target within its share of the units left, so that the chain has its kills however
        # fast the machine runs (one draw near the end, on a machine faster than the reference run, had
        # ended the chain after 2 kills)
        upto = now + max(1, (timing["units"] - 2 - now) // (5 - len(kills)))
        kills.append(_kill_at_random(kind, args + (resume if kills else []), out, rng=rng, timing=timing, first=0,
                                     upto=upto))
    print(kind, "kills:", kills)
    assert len(kills) >= 3 and kills[-1]["saved"] >= 1
    _run([*args, *resume])
    _check_finished(kind, out, reference)
