"""bench/bench.py runs end to end (at toy sizes) and writes the JSON the table of docs/speed.md comes from."""

import json
from pathlib import Path

import pytest

from conftest import bench_script

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    return bench_script("bench")


@pytest.mark.slow
def test_bench_quick_at_small_size_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # resnetc20, 4 steps an epoch: the bench's real shapes at a small size
    _bench().main(["--quick", "--device", "cpu", "--arch", "resnetc20", "--steps", "4", "--images", "2048",
                   "--audit-images", "256", "--ensemble-images", "256", "--json", str(out)])
    r = json.loads(out.read_text())
    for key in ("harden_step_ratio", "data_path_speedup", "epoch_speedup_vs_dataloader"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert r["demo_seconds"] is None and "CPU" in r["device"]
    # both steps timed (which is faster is a speed ratio: under a loaded machine the hardening step's one
    # extra forward measured 0.94x the normal step, so the ratio is the bench's to report, not a test's)
    assert r["details"]["harden_step_s"] > 0 and r["details"]["normal_step_s"] > 0
    rows = r["details"]["audit"]["rows"]
    assert [len(row["students"]) for row in rows] == [1, 2, 4]
    ens = r["details"]["ensemble"]
    assert [row["student"] for row in ens["rows"]] == ["cnn", "resnetc20"] and ens["members"] == 6
    assert all(row["loop_s_per_student_epoch"] > 0 and row["speedup"] > 0 for row in ens["rows"])
    assert {"2", "4"} <= set(r["epoch_speedup_vs_dataloader_by_workers"])  # the public code's 4 workers too
    e = r["details"]["cifar10_table"]
    assert e["students"] == ["cnn", "resnetc20", "resnetc32", "resnet18"] and e["epochs"] == 160 and e["seeds"] == 3
    assert 0 < e["teachers_hours"] < e["total_hours"] == r["cifar10_table_hours"]
    assert e["student_step_s"]["resnetc32"] > e["student_step_s"]["cnn"]  # 32 layers against 4
    assert "hardening step / normal step" in capsys.readouterr().out


def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    import os
    import subprocess
    import sys

    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: bench/gpu_check.sh would run the whole check (run it by hand)")
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "gpu")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no CUDA device" in res.stdout
    doc = json.loads((tmp_path / "gpu" / "gpu_check.json").read_text())
    assert [s["step"] for s in doc["steps"]] == ["environment"] and doc["steps"][0]["status"].startswith("skipped")
    assert "no CUDA device" in (tmp_path / "gpu" / "gpu_check.log").read_text()


def test_bench_cut_short_keeps_what_it_measured(tmp_path, monkeypatch):
    """A lent GPU's time limit can stop bench.py mid-way: the JSON holds every figure measured so far."""
    bench = _bench()
    monkeypatch.setattr(bench, "trainer_step_seconds", lambda arch, device, *, harden=False, **k: 0.2 if harden else 0.1)
    monkeypatch.setattr(bench, "ensemble_seconds", lambda device, **k: {"rows": [{"student": "cnn", "speedup": 2.0}]})

    def cut(*a, **k):
        raise KeyboardInterrupt  # the time limit, during the data-path figures

    monkeypatch.setattr(bench, "ours_images_per_second", cut)
    out = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--quick", "--device", "cpu", "--images", "256", "--json", str(out)])
    r = json.loads(out.read_text())
    assert r["partial"] is True and r["details"]["harden_step_s"] == 0.2 and r["details"]["normal_step_s"] == 0.1
    assert r["details"]["ensemble"]["rows"][0]["speedup"] == 2.0


def test_only_ensemble_measures_the_named_students_and_nothing_else(tmp_path, monkeypatch):
    """What bench/gpu_check.sh runs for the four zoo students: the ensemble figures alone."""
    bench = _bench()
    seen = {}

    def never(*a, **k):
        raise AssertionError("--only-ensemble measured a trainer step")

    def ensemble(device, *, students, images, **k):
        seen.update(students=students, images=images)
        return {"members": 6, "images": images,
                "rows": [{"student": s, "loop_s_per_student_epoch": 2.0, "ensemble_s_per_student_epoch": 1.0,
                          "speedup": 2.0} for s in students]}

    monkeypatch.setattr(bench, "trainer_step_seconds", never)
    monkeypatch.setattr(bench, "ensemble_seconds", ensemble)
    out = tmp_path / "zoo.json"
    bench.main(["--device", "cpu", "--only-ensemble", "--ensemble-students", "cnn,resnet18", "--ensemble-images", "64",
                "--json", str(out)])
    r = json.loads(out.read_text())
    assert seen == {"students": ("cnn", "resnet18"), "images": 64}
    assert r["partial"] is False and [row["student"] for row in r["details"]["ensemble"]["rows"]] == ["cnn", "resnet18"]


def test_student_step_variants_time_each_way(tmp_path):
    """bench/student_step_variants.py at toy size on the CPU (the CUDA-graph ways need a GPU and are left out)."""
    out = tmp_path / "variants.json"
    bench_script("student_step_variants").main(
        ["--device", "cpu", "--archs", "cnn", "--members", "2", "--batch-size", "4", "--steps", "1", "--repeats", "1",
         "--variants", "loop,loop_fused,graphed,wholestep,wholestep_fused,ensemble,ensemble_fp32", "--teachers", "cnn",
         "--json", str(out)])
    r = json.loads(out.read_text())
    assert r["errors"] == {} and set(r["ms_per_member_step"]["cnn"]) == {"loop", "loop_fused", "ensemble", "ensemble_fp32"}
    assert all(ms > 0 for ms in r["ms_per_member_step"]["cnn"].values())
    assert r["teacher_ms"]["cnn"]["batch"] == 4 and r["teacher_ms"]["cnn"]["eager"] > 0  # graphed: GPU only


def test_step_graph_diff_agrees_with_itself_on_the_cpu(tmp_path):
    """bench/step_graph_diff.py (the GPU diagnostic of the captured step) at toy size on the CPU, where
    nothing is captured: the three ways train the same students bit for bit, loss by loss."""
    out = tmp_path / "diff.json"
    bench_script("step_graph_diff").main(["--device", "cpu", "--epochs", "1", "--variants", "fp32", "--seeds", "2",
                                          "--sources", "2", "--json", str(out)])
    row = json.loads(out.read_text())["variants"]["fp32"]
    assert row["steps"] > 4 and row["first_step_parted"] is None and row["max_rel_loss_diff"] == 0.0
    assert row["max_param_diff"] == 0.0 and row["max_param_diff_plain_vs_eager"] == 0.0
    assert row["accuracy_eager"] == row["accuracy_captured"] == row["accuracy_plain_loop"]
    assert len(row["accuracy_eager"]) == 8  # 2 seeds x 2 teachers x 2 students


def test_the_table_shows_every_way_a_gpu_run_measures():
    """What bench.py prints at the end of a GPU run (before it writes the final JSON): the CUDA-graph
    and whole-step rows of the ensemble figures and a CIFAR-10 estimate for each way."""
    bench = _bench()
    row = {"student": "resnetc20", "loop_s_per_student_epoch": 1.0, "ensemble_s_per_student_epoch": 0.4,
           "speedup": 2.5, "graphs_s_per_student_epoch": 0.5, "graphs_speedup": 2.0,
           "wholestep_s_per_student_epoch": 0.25, "wholestep_speedup": 4.0}
    estimate = {"total_hours": 9.0, "teachers_hours": 0.4, "audit_hours": 8.6, "students": ["resnetc20"],
                "epochs": 160, "seeds": 3}
    d = {"arch": "resnet18", "batch_size": 128, "harden_step_s": 0.015, "normal_step_s": 0.011,
         "data_img_s": 4e5, "data_img_s_dataloader": 1e4, "harden_img_s": 8533.3, "harden_img_s_dataloader": 6500.0,
         "harden_step_s_dataloader_by_workers": {"2": 0.0197, "4": 0.016}, "audit": {"rows": [], "images": 1024},
         "ensemble": {"members": 6, "images": 2048, "rows": [row]}, "cifar10_table": estimate,
         "cifar10_table_graphs": {**estimate, "total_hours": 4.5, "audit_hours": 4.1},
         "cifar10_table_wholestep": {**estimate, "total_hours": 2.5, "audit_hours": 2.1},
         "torch": "2.11", "seconds": 120.0}
    r = {"harden_step_ratio": 1.31, "data_path_speedup": 40.0, "epoch_speedup_vs_dataloader": 1.31,
         "epoch_speedup_vs_dataloader_by_workers": {"2": 1.31, "4": 1.08}, "demo_seconds": None,
         "device": "NVIDIA H100", "details": d}
    text = bench.table(r)
    assert "CUDA graphs, 6 resnetc20" in text and "whole step as one graph, 6 resnetc20" in text
    assert "CIFAR-10 table, CUDA graphs (estimate)" in text and "CIFAR-10 table, whole step as one graph" in text
    assert "2.5 h" in text and "4.00x" in text
