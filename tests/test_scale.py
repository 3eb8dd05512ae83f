"""Audit cells spread over processes (attacks/scale.py): claims, stale claims taken over, failures
shared, bad input in one line; and the report of 2 processes equal to that of 1 (--devices cpu,cpu;
torchrun in the slow tier)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from click.testing import CliRunner

import attacks.audit as audit_mod
from attacks import scale
from attacks.kd import KD
from attacks.audit import audit
from nasty.app.cli import main
from nasty.errors import NastyError, NastyWarning

ROOT = Path(__file__).resolve().parents[1]
# the smallest grid of tests/test_audit.py (two thieves of the four: the data-free ones are covered there)
SMALL = {"seeds": (0, 1), "epochs": 1, "students": ["tiny-cnn", "mlp"], "quiet": True, "plots": False,
         "attacks": ["kd", "hard-label", "dafl"]}


def numbers(report: dict) -> dict:
    """What a report says, less the seconds it took (and the cells' count of what is done, equal anyway)."""
    return {k: v for k, v in report.items() if k != "seconds"}


class Cell(NamedTuple):  # what Share.run needs of the audit's _Cell
    name: str
    seed: int
    key: dict
    path: Path
    done: dict | None = None
    attack: object = KD()  # its cost orders the claims
    reference: tuple | None = None  # the one-sided flags halve it
    mirror: bool = False


def grid(folder: Path, n: int = 6, **key) -> list[Cell]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Cell("kd", s, {"attack": "kd", "seed": s, "epochs": 1, **key}, folder / f"kd-seed{s}.json") for s in range(n)]


def alone(todo, i):
    return [todo[i]]


def refresh(c: Cell) -> Cell:
    return c._replace(done=json.loads(c.path.read_text())) if c.path.exists() else c


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_claim(cell: Cell, n: int = 1, **info) -> Path:
    path = cell.path.with_name(f"{cell.path.stem}.claim-{n}")
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                "heartbeat": time.time(), "by": "test", "key": cell.key, **info}))
    return path


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One thread, as each of 2 workers gets of this test's 2 (and faster on 2 shared cores than 2)."""
    with threads(1):
        yield


@pytest.fixture
def quick_claims(monkeypatch):
    monkeypatch.setenv("NASTY_CLAIM_TIMEOUT", "0.5")  # a heartbeat every 0.05 s


# --------------------------------------------------------------------------- claims


def test_a_group_is_claimed_whole_or_not_at_all_and_released(tmp_path):
    todo = grid(tmp_path, 3)
    claims = scale.Claims(scale.Share(writer=True))
    held = claims.take(todo[:2])
    assert held is not None and sorted(p.name for p in tmp_path.iterdir()) == ["kd-seed0.claim-1", "kd-seed1.claim-1"]
    info = json.loads((tmp_path / "kd-seed0.claim-1").read_text())
    assert (info["pid"], info["host"], info["key"]) == (os.getpid(), socket.gethostname(), todo[0].key)
    assert {"started", "heartbeat"} <= set(info)
    # another process (here: a live claim of this pid) holds kd-seed1: the group of 1 and 2 is not taken, 2 stays free
    assert claims.take(todo[1:]) is None and not (tmp_path / "kd-seed2.claim-1").exists()
    held.release()
    assert not list(tmp_path.iterdir())


def test_the_heartbeat_is_rewritten_while_a_claim_is_held(tmp_path, quick_claims):
    cell = grid(tmp_path, 1)[0]
    with scale.Claims(scale.Share(writer=True)).take([cell]):
        first = json.loads((tmp_path / "kd-seed0.claim-1").read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / "kd-seed0.claim-1").read_text())["heartbeat"] > first
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("holder,taken,why", [
    ({"pid": "dead"}, True, "(its process is gone)"),  # same machine, no such process: at once
    ({"host": "elsewhere"}, False, None),  # another machine, a fresh heartbeat: alive, nothing said
    ({"host": "elsewhere", "heartbeat": -0.3}, False, "is claimed by pid"),  # late: alive, said once how to clear it
    ({"host": "elsewhere", "heartbeat": -10}, True, "(no heartbeat for 10 s, more than NASTY_CLAIM_TIMEOUT=0.5)"),
])
def test_a_stale_claim_is_taken_over_with_a_note_and_a_live_one_is_not(tmp_path, quick_claims, holder, taken, why):
    import warnings

    cell = grid(tmp_path, 1)[0]
    holder = {k: dead_pid() if v == "dead" else time.time() + v if k == "heartbeat" else v for k, v in holder.items()}
    write_claim(cell, **holder)
    claims = scale.Claims(scale.Share(writer=True))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        held = claims.take([cell])
        again = None if taken else claims.take([cell])
    notes = [str(n.message) for n in seen if issubclass(n.category, NastyWarning)]
    assert all("\n" not in n for n in notes)
    if not taken:
        assert held is None and again is None and len(notes) == (why is not None)
        if why:
            assert notes[0].startswith("cell kd-seed0 is claimed by pid") and why in notes[0]
            assert f"remove {tmp_path / 'kd-seed0.claim-*'} to take it now" in notes[0]
        return
    assert held is not None and (tmp_path / "kd-seed0.claim-2").exists()
    assert len(notes) == 1 and notes[0].startswith("cell kd-seed0: took over the claim of pid") and why in notes[0]
    assert claims.take([cell]) is None  # a second taker meets the new, live claim
    held.release()
    assert not list(tmp_path.iterdir())  # the stale claim went with it


def test_a_claim_being_written_is_alive_until_it_is_old(tmp_path, quick_claims):
    cell = grid(tmp_path, 1)[0]
    empty = cell.path.with_name("kd-seed0.claim-1")
    empty.write_text("")
    claims = scale.Claims(scale.Share(writer=True))
    assert claims.take([cell]) is None
    os.utime(empty, (time.time() - 10, time.time() - 10))
    with pytest.warns(NastyWarning, match="an unreadable claim"):
        held = claims.take([cell])
    held.release()


def test_a_live_claim_of_other_settings_is_another_audit_in_out(tmp_path):
    cell = grid(tmp_path / "cells", 1)[0]
    write_claim(cell, key={**cell.key, "epochs": 2})
    with pytest.raises(NastyError, match=r"another audit with other settings is training cell kd-seed0 there now "
                                         r"\(pid \d+ on .*; epochs differs: 2 there, 1 now\)") as e:
        scale.Claims(scale.Share(writer=True)).take([cell])
    assert "\n" not in str(e.value)


def test_claim_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("NASTY_CLAIM_TIMEOUT", "soon")
    with pytest.raises(NastyError, match="NASTY_CLAIM_TIMEOUT=soon is not a number of seconds"):
        scale.claim_timeout()


# --------------------------------------------------------------------------- the shared loop


def test_processes_share_the_cells_each_trained_once(tmp_path):
    """Two sharers (threads here: to the claims they are two holders, the same pid alive) train
    every cell once between them, and both return the whole grid."""
    todo, trained, lock = grid(tmp_path), [], threading.Lock()

    def train(cells, who):
        time.sleep(0.05)
        for c in cells:
            c.path.write_text(json.dumps({"by": who}))
            with lock:
                trained.append((c.seed, who))
        return {c.path: {"by": who} for c in cells}

    results = {}

    def run(who):
        results[who] = scale.Share(writer=who == "a", poll=0.01).run(
            todo, group=alone, train=lambda cells: train(cells, who), refresh=refresh)

    threads = [threading.Thread(target=run, args=(w,)) for w in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for s, _ in trained) == list(range(6))  # each cell once
    assert {w for _, w in trained} == {"a", "b"}
    for who in "ab":
        assert [c.done["by"] for c in results[who]] == [json.loads(c.path.read_text())["by"] for c in todo]
    assert sorted(p.name for p in tmp_path.iterdir()) == [c.path.name for c in todo]  # no claim left


def test_a_group_is_trained_with_the_cells_the_files_say_now(tmp_path):
    """Claimed, the group is read again: a cell finished since the plan is taken as it is."""
    todo = grid(tmp_path, 3)
    todo[1].path.write_text(json.dumps({"by": "other"}))  # finished by another process after this one planned
    calls = []

    def train(cells):
        calls.append([c.seed for c in cells])
        for c in cells:
            c.path.write_text(json.dumps({"by": "me"}))
        return {c.path: {"by": "me"} for c in cells}

    done = scale.Share(writer=True).run(todo, group=lambda t, i: [c for c in t[i:] if c.done is None],
                                        train=train, refresh=refresh)
    assert calls == [[0, 2]] and [c.done["by"] for c in done] == ["me", "other", "me"]


def test_shared_cells_are_claimed_costliest_first_the_plan_order_on_a_tie(tmp_path):
    from attacks import create_attack
    from attacks.baselines import Scratch

    plan = [("scratch", Scratch(), {}), ("kd", create_attack("kd"), {}), ("kd-sweep", create_attack("kd-sweep"), {}),
            ("kd", create_attack("kd"), {"mirror": True}), ("hard-label", create_attack("hard-label"), {}),
            ("kd-sweep", create_attack("kd-sweep"), {})]
    todo = [Cell(name, s, {"attack": name, "seed": s}, tmp_path / f"{name}-{s}.json", attack=attack, **one_sided)
            for s, (name, attack, one_sided) in enumerate(plan)]
    costs = [scale.cell_cost(c) for c in todo]
    assert costs[2] == costs[5] > costs[1] > costs[0] and costs[3] == costs[1] / 2
    order = []

    def train(cells):
        order.extend(c.seed for c in cells)
        return {c.path: {"seed": c.seed} for c in cells}

    done = scale.Share(writer=True).run(todo, group=alone, train=train, refresh=lambda c: c)
    assert order == sorted(range(6), key=lambda s: -costs[s])  # stable: the two sweeps in the plan's order
    assert [c.done["seed"] for c in done] == list(range(6))  # returned in the plan's order, every cell done


def test_a_failure_is_recorded_for_the_run_and_tried_again_by_the_next(tmp_path):
    todo = grid(tmp_path, 1)
    failed = lambda cells: {c.path: {"key": c.key, "seconds": 0.0, "runs": [], "failed": "diverged"} for c in cells}
    since = time.time()
    first = scale.Share(writer=False, since=since).run(todo, group=alone, train=failed, refresh=refresh)
    assert first[0].done["failed"] == "diverged" and (tmp_path / "kd-seed0.failed").exists()
    # another process of the same run counts it as failed, without training it again
    same = scale.Share(writer=True, since=since).run(todo, group=alone, train=lambda c: pytest.fail("trained again"),
                                                     refresh=refresh)
    assert same[0].done == first[0].done
    # a later run tries again; a success clears the record

    def ok(cells):
        for c in cells:
            c.path.write_text("{}")
        return {c.path: {} for c in cells}

    later = scale.Share(writer=True).run(todo, group=alone, train=ok, refresh=refresh)
    assert later[0].done == {} and not (tmp_path / "kd-seed0.failed").exists()


# --------------------------------------------------------------------------- bad input


def test_bad_devices_are_one_line(teachers, tmp_path, monkeypatch):
    base = ["audit", "--teacher", str(teachers["root"] / "nasty"), "--reference", str(teachers["root"] / "normal"),
            "--out", str(tmp_path), "--quiet", "--seeds", "1", "--epochs", "1"]
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 where there is none)
    words = "no CUDA device is available here" if not torch.cuda.is_available() else "CUDA device(s) here"
    for extra, said in ((["--devices", f"cpu,{missing}"], f"--devices {missing}: {words}"),
                        (["--devices", "tpu:0"], "--devices 'tpu:0' is not a device"),
                        (["--devices", ","], "give a comma-separated list"),
                        (["--devices", "cpu,cpu", "--device", "cpu"], "give --device or --devices, not both")):
        res = CliRunner().invoke(main, base + extra)
        assert res.exit_code in (1, 2) and said in res.output, res.output
        assert "Traceback" not in res.output and any(said in line for line in res.output.splitlines())
    assert not (tmp_path / "cells").exists()  # refused before any worker started
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(NastyError, match="`devices` starts its own processes; under torchrun leave it out"):
        audit(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", out=tmp_path,
              devices="cpu,cpu", **SMALL)


def test_a_dead_process_leaves_its_cell_to_the_next_which_goes_on_from_its_saved_state(teachers, tmp_path,
                                                                                       monkeypatch, one_thread):
    """A process killed while training kd-seed0 (its epoch 1 saved, its claim left): another process
    of the run takes the cell over, with a note, and ends where one process alone ends."""
    settings = {**SMALL, "attacks": ["kd"], "students": ["mlp"], "seeds": (0,), "epochs": 2, "checkpoint_seconds": 0,
                "device": "cpu"}
    kw = {"teacher": teachers["root"] / "nasty", "reference": teachers["root"] / "normal", **settings}
    whole = audit(out=tmp_path / "whole", **kw)
    real = audit_mod.run_cells

    def killed_after_epoch_1(attack, *a, save=None, **k):
        def save_then_die(states):
            save(states)
            if attack.name == "kd":
                raise SystemExit  # the process ends here (its claim is put back below, as a SIGKILL leaves it)
        return real(attack, *a, save=save_then_die, **k)

    out = tmp_path / "shared"
    monkeypatch.setattr(audit_mod, "run_cells", killed_after_epoch_1)
    monkeypatch.setattr(scale, "_ACTING", scale.Share(writer=False))
    with pytest.raises(SystemExit):
        audit(out=out, **kw)
    key = json.loads((tmp_path / "whole" / "cells" / "kd-seed0.json").read_text())["key"]
    write_claim(Cell("kd", 0, key, out / "cells" / "kd-seed0.json"), pid=dead_pid())
    assert (out / "cells" / "kd-seed0.partial.pt").exists() and not (out / "report.json").exists()
    monkeypatch.setattr(audit_mod, "run_cells", real)
    monkeypatch.setattr(scale, "_ACTING", scale.Share(writer=True))
    with pytest.warns(NastyWarning, match=r"cell kd-seed0: took over the claim of pid \d+ on .* \(its process is gone\)"):
        report = audit(out=out, **kw)
    assert json.loads((out / "cells" / "kd-seed0.json").read_text())["resumed_from_epoch"] == 1
    assert numbers(report) == numbers(whole) and json.loads((out / "report.json").read_text())["runs"] == whole["runs"]
    assert not list((out / "cells").glob("*.claim-*"))


# --------------------------------------------------------------------------- 2 processes = 1 process


@pytest.fixture(scope="module")
def one_process(teachers, tmp_path_factory):
    """The small grid in this process, on one thread (what each of 2 workers gets of this test's 2)."""
    out = tmp_path_factory.mktemp("one")
    with threads(1):
        return audit(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", out=out,
                     device="cpu", **SMALL)


def test_two_worker_processes_write_the_report_of_one(teachers, one_process, tmp_path):
    assert torch.get_num_threads() == 2  # tests/conftest.py: the 2 workers get 1 thread each, as one_process ran
    out = tmp_path / "two"
    report = audit(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", out=out,
                   devices="cpu,cpu", **SMALL)
    assert numbers(report) == numbers(one_process)
    assert numbers(json.loads((out / "report.json").read_text())) == numbers(json.loads(json.dumps(one_process)))
    assert sorted(p.name for p in (out / "cells").iterdir() if not p.name.endswith(".images.safetensors")) == sorted(
        f"{a}-seed{s}.json" for a in ("scratch", "label-smoothing", *SMALL["attacks"]) for s in SMALL["seeds"])


def test_a_worker_killed_mid_grid_leaves_its_cells_to_the_other(teachers, one_process, tmp_path):
    """SIGKILL one of two workers as soon as it holds a claim: the other (or the writer) takes its cell
    over at once (same machine, the pid gone, or a zombie its parent has not reaped yet: not after
    NASTY_CLAIM_TIMEOUT), and the report is still that of one process."""
    out = tmp_path / "killed"
    killed = []

    def kill_first_worker():
        while not killed:
            for claim in (out / "cells").glob("*.claim-*") if (out / "cells").exists() else ():
                try:
                    pid = json.loads(claim.read_text())["pid"]
                except (OSError, ValueError, KeyError):
                    continue
                if pid != os.getpid():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:  # it ended meanwhile: the next claim
                        continue
                    killed.append(pid)
                    return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_first_worker, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    with pytest.warns(NastyWarning, match="ended with exit code -9; its cells are taken over here"):
        report = audit(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", out=out,
                       devices="cpu,cpu", **SMALL)
    assert killed and numbers(report) == numbers(one_process)
    assert time.perf_counter() - t0 < scale.claim_timeout()  # nobody waited for the dead one's heartbeat
    assert not list((out / "cells").glob("*.claim-*"))


@pytest.mark.slow
def test_torchrun_ranks_write_the_report_of_one_process(teachers, one_process, tmp_path):
    """torchrun --nproc-per-node 2 on the CPU (no process group needed): rank 0 writes the same report."""
    out = tmp_path / "ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "nasty", "audit",
           "--teacher", str(teachers["root"] / "nasty"), "--reference", str(teachers["root"] / "normal"),
           "--out", str(out), "--device", "cpu", "--quiet", "--no-plots", "--seeds", "0,1", "--epochs", "1",
           "--students", "tiny-cnn,mlp", "--attacks", ",".join(SMALL["attacks"])]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert numbers(json.loads((out / "report.json").read_text())) == numbers(json.loads(json.dumps(one_process)))
    assert p.stdout.count("Worst case per student") == 1  # rank 0 alone prints the summary


@pytest.mark.slow
def test_compare_over_two_workers_is_the_comparison_of_one_process(teachers, tmp_path):
    """nasty compare --devices cpu,cpu: the workers share every audit's cells (the baselines copied
    whole into the second audit while both read), and the writer's compare.json is one process's."""
    from attacks.compare import compare

    kw = {"reference": teachers["root"] / "normal", "teachers": [teachers["root"] / "nasty", teachers["root"] / "normal"],
          **SMALL, "attacks": ["kd"], "plots": False}
    with threads(1):
        one = compare(out=tmp_path / "one", device="cpu", **kw)
    two = compare(out=tmp_path / "two", devices="cpu,cpu", **kw)
    assert json.loads((tmp_path / "two" / "compare.json").read_text())["rows"] == json.loads(json.dumps(one["rows"]))
    assert two["rows"] == one["rows"]


def test_a_failure_record_that_is_not_one_is_ignored(tmp_path):
    todo = grid(tmp_path, 1)
    for text in ("", "[]", '{"key": 1}', json.dumps({"key": todo[0].key, "failed": "x", "time": "soon"})):
        (tmp_path / "kd-seed0.failed").write_text(text)
        assert scale.Share(writer=True, since=0)._failure(todo[0]) is None


def test_bad_settings_fail_before_any_worker_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "spread", lambda *a, **k: pytest.fail("workers started"))
    with pytest.raises(NastyError, match="`alpha` must be in"):
        audit(teacher=tmp_path / "t", reference=tmp_path / "r", out=tmp_path / "out", devices="cpu,cpu", alpha=2)


def test_a_claim_released_while_it_is_looked_at_is_free_and_nothing_is_said(tmp_path, monkeypatch):
    import warnings

    cell = grid(tmp_path, 1)[0]
    claim = write_claim(cell)
    real = scale._read_claim
    monkeypatch.setattr(scale, "_read_claim", lambda p: claim.unlink(missing_ok=True) or real(p))  # its holder lets go now
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        held = scale.Claims(scale.Share(writer=True)).take([cell])
    assert held is not None
    held.release()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_a_process_ended_but_not_reaped_is_not_alive():
    """A worker SIGKILLed while its parent waits on another stays a zombie until reaped: its claim is stale."""
    from nasty.safety import alive

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{p.pid}/stat").read_bytes().rpartition(b")")[2].split()[0] != b"Z":
        time.sleep(0.01)
    assert not alive(p.pid)
    p.wait()
    assert not alive(p.pid) and alive(os.getpid())
