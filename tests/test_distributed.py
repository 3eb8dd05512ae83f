"""torchrun + DistributedDataParallel on the CPU (gloo, 2 processes): as good as one process,
rank 0 alone writes, and a killed run resumes to the same model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds processes through /proc")

from nasty import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def _launch(*target, background=False, check=True):
    """``torchrun --standalone --nproc_per_node=2 <target>`` on the CPU, one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, target)]
    # faulthandler: a rank that dies in native code still prints where its Python threads were
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-6000:]
    return p


def _torchrun(*args, background=False):
    """A ``nasty`` command under torchrun; it must succeed."""
    return _launch("-m", "nasty", *args, "--device", "cpu", "--quiet", background=background)


def _kill_every_process_of(out: Path) -> None:
    """SIGKILL every process whose command line names ``out``, as a crash of the whole job would."""
    mark = str(out).encode()
    while True:
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if mark in cmdline.read_bytes():
                    pids.append(int(cmdline.parent.name))
            except OSError:
                continue
        pids = [pid for pid in pids if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _rows(out):
    return [json.loads(line) for line in (out / ckpt.METRICS).read_text().splitlines()]


def _written_once(out, epochs):
    assert [r["epoch"] for r in _rows(out)] == list(range(1, epochs + 1))  # one writer, one row per epoch
    assert not list(out.glob(".*"))  # no temporary or probe files left by any rank
    card = ckpt.read_card(out)
    assert card["epoch"] == epochs and card["sha256"] == ckpt.sha256_file(out / ckpt.WEIGHTS)
    return card


@pytest.fixture(scope="module")
def ddp_runs(teachers, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    _torchrun("train", "--out", root / "normal")
    _torchrun("harden", "--teacher", teachers["root"] / "normal", "--omega", "0.05", "--out", root / "nasty")
    return root


@pytest.mark.slow
def test_two_processes_train_and_harden_as_well_as_one(ddp_runs, teachers):
    normal = _written_once(ddp_runs / "normal", teachers["normal"]["epochs"])
    nasty = _written_once(ddp_runs / "nasty", teachers["nasty"]["epochs"])
    # the same recipe (same global batch, LR, epochs): within one point of the single-process runs
    assert normal["accuracy"] >= teachers["normal"]["accuracy"] - 1.0
    assert nasty["accuracy"] >= teachers["nasty"]["accuracy"] - 1.0
    # and the self-undermining term did its job: as far from the adversary as the single-process nasty teacher
    assert nasty["kl_to_adversary"] >= 0.8 * teachers["nasty"]["kl_to_adversary"]


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_to_the_same_model(ddp_runs, teachers, tmp_path):
    out, ref = tmp_path / "nasty", ddp_runs / "nasty"
    args = ("harden", "--teacher", teachers["root"] / "normal", "--omega", "0.05", "--out", out)
    p = _torchrun(*args, background=True)
    while not (out / ckpt.METRICS).exists() or len(_rows(out)) < 4:
        assert p.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    _kill_every_process_of(out)  # the launcher and both workers (each worker has its own session)
    p.wait()
    saved = ckpt.load_state(out)["epoch"]
    assert 3 <= saved < teachers["nasty"]["epochs"]
    _torchrun(*args, "--resume")
    card = _written_once(out, teachers["nasty"]["epochs"])
    assert card["accuracy"] == ckpt.read_card(ref)["accuracy"]
    a, _ = ckpt.load_weights(out)
    b, _ = ckpt.load_weights(ref)
    assert all((a[k] == b[k]).all() for k in a)  # bit-identical to the uninterrupted 2-process run


@pytest.mark.parametrize("batch_size", [64, 63], ids=["finished", "refused"])
def test_a_rank_leaves_no_gloo_threads_behind(tmp_path, batch_size):
    """After a run, finished or stopped by an error, the process group is really gone: gloo's threads
    left running into interpreter shutdown made a rank abort now and then ('terminate called without
    an active exception')."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        from nasty.errors import NastyError
        from nasty.runs import train
        try:
            train(dataset="digits", epochs=1, batch_size={batch_size}, out={str(tmp_path / "run")!r}, device="cpu",
                  quiet=True)
        except NastyError as e:  # 63 does not split over 2 processes
            assert {batch_size} == 63, e
        else:
            assert {batch_size} != 63, "batch 63 on 2 processes was not refused"
        def gloo_threads():
            names = (open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task"))
            return sorted(n for n in names if "gloo" in n)
        deadline = time.monotonic() + 5
        while gloo_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(os.path.join({str(tmp_path)!r}, "threads-" + os.environ["RANK"]), "w") as f:
            f.write(repr(gloo_threads()))
    """))
    _launch(script)
    assert {r: (tmp_path / f"threads-{r}").read_text() for r in (0, 1)} == {0: "[]", 1: "[]"}


def test_batch_size_must_split_over_the_processes(tmp_path):
    p = _launch("-m", "nasty", "train", "--batch-size", "63", "--out", tmp_path / "x", "--device", "cpu", check=False)
    assert p.returncode != 0
    assert "Error: --batch-size 63 does not split over 2 processes" in p.stderr
    assert not (tmp_path / "x" / ckpt.CARD).exists()
