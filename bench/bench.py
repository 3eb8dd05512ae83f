"""Speed figures of the toolkit, as ratios measured in one run on one machine.

    python bench/bench.py --quick                      # < 3 minutes on 2 CPU cores
    python bench/bench.py --json bench/results/bench_cpu.json
    python bench/bench.py --device cuda --json bench/results/bench_h100.json

1. hardening step / normal step: the real trainer (``nasty.trainer.fit``), same model and
   batch (CIFAR ResNet-18, batch 128), median over epochs after a warm-up epoch.
2. data path: images/s delivered by ``TensorData.batches`` (uint8 in memory; crop, flip and
   normalise as batched ops on the device) vs a torchvision ``DataLoader`` over PIL images with
   ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``
   (2 workers), at CIFAR shape (50,000 synthetic 3x32x32 images).
3. hardening epoch: images/s of (1) vs the same hardening step fed by that DataLoader, with 2
   workers, with 4 (as the public code configures it) and with as many workers as cores.
4. audit: seconds per student-epoch with 1, 2 and 4 students sharing one teacher forward per
   batch per teacher, and how much faster that is than training the students one at a time;
   then, per zoo student, the KD cells of 3 seeds (6 students of one architecture) trained in an
   eager loop, one cell per seed, vs as one batched ensemble (``torch.func``:
   ``run_cells(ensemble=True)``) and, on a GPU, vs the seeds in one run with each student's steps
   replayed as CUDA graphs (``run_cells(graphs=True)``) and vs the whole step as one graph per
   epoch (``run_cells(graphs="step")``, the audit's default there: its epochs include 3 eager
   warm-up steps and a capture, a larger share of a short bench epoch than of a 390-step CIFAR
   one); per steady epoch (a two-epoch run less a one-epoch run) and for a one-epoch run whole.
5. the paper's CIFAR-10 table, estimated from measured steps: normal + nasty ResNet-18 for 160
   epochs, then students cnn, resnetc20, resnetc32 and resnet18, each from scratch, with label
   smoothing and by KD from the normal and the nasty teacher (one shared teacher forward per
   batch per teacher), 160 epochs, 3 seeds; 390 steps of batch 128 per epoch.
6. ``nasty demo`` wall time (skipped with ``--quick``).

With ``--json``, the file is rewritten after each section (``"partial": true`` until the end),
so a run stopped by a time limit keeps what it measured; the ensemble figures come second.

Numbers are medians over repetitions after warm-up. Synthetic images are random pixels:
speed does not depend on what the pixels show.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from nasty.accel import autocast, layout, prepare
from nasty.data import TensorData
from nasty.models import create_model
from nasty.objectives import self_undermining_loss
from nasty.trainer import TrainConfig, fit, frozen_logits, make_optimizer, objective_for, resolve_device

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def synthetic(n: int, *, shape=(3, 32, 32), num_classes: int = 10, test: int = 8, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return TensorData(name="synthetic", train_x=x, train_y=y, test_x=x[:test], test_y=y[:test],
                      classes=tuple(str(i) for i in range(num_classes)), mean=MEAN[: shape[0]], std=STD[: shape[0]],
                      pad=4, flip=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, run, *, warm_up) -> float:
    """Seconds of ``run()`` after ``warm_up()`` (cuDNN picks its kernels there), the device synchronised
    around it."""
    warm_up()
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- 1. trainer steps


def trainer_step_seconds(arch, device, *, batch_size, steps, repeats, compile=False, harden=False) -> float:
    """Median seconds per step of ``fit`` over ``repeats`` epochs of ``steps`` steps (after one warm-up
    epoch), read from its per-epoch log; the test set is one batch of 8 images, so evaluation is noise."""
    data = synthetic(steps * batch_size)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=3)
    reference = create_model(arch, num_classes=10, in_chans=3).eval() if harden else None
    objective = objective_for("nasty", omega=0.04, tau=4.0) if harden else None
    cfg = TrainConfig(epochs=repeats + 1, batch_size=batch_size, lr=0.05)
    with tempfile.TemporaryDirectory() as out:
        fit(model, data, config=cfg, objective=objective, reference=reference, device=device, out=out, quiet=True,
            compile=compile)
        done = [json.loads(line)["seconds"] for line in open(Path(out) / "metrics.jsonl")]
    per_epoch = [b - a for a, b in zip(done, done[1:])]  # the first epoch is the warm-up
    return statistics.median(per_epoch) / steps


# ----------------------------------------------------------------------------- 2. data paths


class PILImages(torch.utils.data.Dataset):
    """What the public training scripts do: HWC uint8 images, one PIL image per sample."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x, self.y, self.transform = x.permute(0, 2, 3, 1).numpy(), y.numpy(), transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def dataloader(data: TensorData, *, batch_size, device, workers=2):
    """The public code's way: PIL images, torchvision transforms, ``workers`` processes. More
    workers than cores is on purpose here (4, as the public code configures it): torch's warning
    about it is left out."""
    from torchvision import transforms as T

    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    return torch.utils.data.DataLoader(PILImages(data.train_x, data.train_y, tf), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
                                       persistent_workers=workers > 0)


def ours_images_per_second(data, *, batch_size, device, repeats) -> float:
    rates = []
    for epoch in range(repeats + 1):
        sync(device)
        t0, n = time.perf_counter(), 0
        for x, y in data.batches("train", batch_size=batch_size, device=device, seed=0, epoch=epoch):
            n += len(y)
        sync(device)
        if epoch:  # the first pass moves the data to the device
            rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def loader_images_per_second(loader, *, device, batches, repeats, warmup=5) -> float:
    rates = []
    it = iter(loader)
    for _ in range(warmup):  # workers start, pages warm
        next(it)
    for _ in range(repeats):
        sync(device)
        t0, n = time.perf_counter(), 0
        for _ in range(batches):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            n += len(y)
        sync(device)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


# ----------------------------------------------------------------------------- 3. hardening epoch


def loader_harden_seconds_per_step(arch, loader, device, *, steps, warmup=1) -> float:
    """The hardening step of the public code, fed by the DataLoader: same model, loss, optimizer."""
    torch.manual_seed(0)
    model = prepare(create_model(arch, num_classes=10, in_chans=3), device).train()
    adversary = prepare(create_model(arch, num_classes=10, in_chans=3), device).eval()
    opt, _ = make_optimizer(model.parameters(), TrainConfig(epochs=1, batch_size=loader.batch_size, lr=0.05))
    it, times = iter(loader), []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        x, y = next(it)
        x, y = layout(x.to(device, non_blocking=True), device), y.to(device, non_blocking=True)
        ref = frozen_logits(adversary, x, device)
        with autocast(device):
            z = model(x)
        loss, _ = self_undermining_loss(z.float(), ref, y, omega=0.04, tau=4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)  # a mean: an epoch is a sum of steps, data stalls included


# ----------------------------------------------------------------------------- 4. audit


def audit_seconds(device, *, images, batch_size, students_grid, teacher_arch) -> dict:
    """KD from two frozen teachers into S students: together (one teacher forward per batch per
    teacher, shared) vs each student alone; seconds per student-epoch."""
    from attacks import create_attack
    from attacks.base import run_students

    _register_copies(students_grid)
    data = synthetic(images)
    torch.manual_seed(0)
    teachers = {src: create_model(teacher_arch, num_classes=10, in_chans=3).eval() for src in ("normal", "nasty")}
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05)

    def seconds(students):
        kd = lambda s: lambda: run_students(create_attack("kd"), teachers, s, data, config=cfg, device=device)  # noqa: E731
        return timed(device, kd(students), warm_up=kd(students[:1]))

    rows = []
    for students in students_grid:
        together = seconds(students)
        alone = sum(seconds([s]) for s in students) if len(students) > 1 else together
        rows.append({"students": students, "seconds": round(together, 3),
                     "seconds_per_student_epoch": round(together / len(students), 3),
                     "seconds_one_at_a_time": round(alone, 3), "sharing_speedup": round(alone / together, 3)})
    return {"teacher": teacher_arch, "teachers": 2, "images": images, "batch_size": batch_size, "rows": rows}


GPU_WAYS = {"graphs": "CUDA graphs", "wholestep": "whole step as one graph"}  # timed on a GPU only, with their titles


def ensemble_seconds(device, *, images, batch_size, students, teacher_arch, seeds=(0, 1, 2)) -> dict:
    """Seconds per student-epoch of the KD cells of ``seeds`` (two frozen teachers: two students per
    architecture and seed), trained as the CPU audit trains them (one cell per seed, the students in
    an eager loop: what the audit did on a GPU before issue 16), as one batched ensemble per
    architecture (``run_cells(ensemble=True)``, ``--ensemble on``) and, on a GPU, the seeds in one
    run with each student's steps replayed as CUDA graphs (``graphs=True``) and with the whole step
    replayed as one graph per epoch (``graphs="step"``, how the audit trains them there).

    ``*_s_per_student_epoch`` is the steady epoch: a two-epoch run's time less a one-epoch run's,
    so what a run pays once (building the students and stacks, capturing graphs, evaluating) is
    left out, as it is from the many epochs of a real audit. ``*_s_first_epoch`` is the one-epoch
    run whole (an H100 run of 32 steps showed that capture's share there is large)."""
    from dataclasses import replace

    from attacks import create_attack
    from attacks.base import run_cells, run_students

    data = synthetic(images)
    torch.manual_seed(0)
    teachers = {src: create_model(teacher_arch, num_classes=10, in_chans=3).eval() for src in ("normal", "nasty")}
    members = len(seeds) * len(teachers)

    def loop(arch, d, cfg):
        for seed in seeds:
            run_students(create_attack("kd"), teachers, [arch], d, config=replace(cfg, seed=seed), device=device,
                         graphs=False)

    def ensemble(arch, d, cfg):
        run_cells(create_attack("kd"), teachers, [arch], d, config=cfg, seeds=list(seeds), device=device, ensemble=True)

    def graphs(arch, d, cfg):
        run_cells(create_attack("kd"), teachers, [arch], d, config=cfg, seeds=list(seeds), device=device, graphs=True)

    def wholestep(arch, d, cfg):
        run_cells(create_attack("kd"), teachers, [arch], d, config=cfg, seeds=list(seeds), device=device,
                  graphs="step")

    modes = (("loop", loop), ("ensemble", ensemble))
    if device.type == "cuda":
        modes += (("graphs", graphs), ("wholestep", wholestep))  # GPU_WAYS
    small = synthetic(2 * batch_size)
    rows = []
    for arch in students:
        row = {"student": arch}
        for mode, train in modes:
            spent = {}
            for epochs in (1, 2):  # cuDNN picks its kernels in the first warm-up
                cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.05)
                warm = (lambda: train(arch, small, replace(cfg, epochs=1))) if epochs == 1 else (lambda: None)
                spent[epochs] = timed(device, lambda: train(arch, data, cfg), warm_up=warm)
            row[f"{mode}_s_first_epoch"] = spent[1] / members
            row[f"{mode}_s_per_student_epoch"] = max(spent[2] - spent[1], 1e-9) / members
        row["speedup"] = row["loop_s_per_student_epoch"] / row["ensemble_s_per_student_epoch"]
        for way in GPU_WAYS:  # each student's steps as graphs, and the whole step as one (the audit's GPU default)
            if f"{way}_s_per_student_epoch" in row:
                row[f"{way}_speedup"] = row["loop_s_per_student_epoch"] / row[f"{way}_s_per_student_epoch"]
        rows.append(row)
    return {"teacher": teacher_arch, "teachers": len(teachers), "seeds": len(seeds), "members": members,
            "images": images, "batch_size": batch_size, "rows": rows}


def _register_copies(grid) -> None:
    """Students named ``cnn#2`` etc.: copies of one architecture, so that every step of the grid
    adds the same work (an audit names each architecture once; this is a benchmark's device)."""
    from nasty.models import register_model
    from nasty.models._registry import _MODELS

    for name in {s for row in grid for s in row if "#" in s and s not in _MODELS}:
        arch = name.split("#")[0]
        register_model(name, doc=f"copy of {arch}")(
            lambda *, num_classes, in_chans=3, arch=arch: create_model(arch, num_classes=num_classes, in_chans=in_chans))


# ----------------------------------------------------------------------------- 5. the CIFAR-10 table


CIFAR_STUDENTS = ("cnn", "resnetc20", "resnetc32", "resnet18")


def teacher_forward_seconds(arch, device, *, batch_size, steps) -> float:
    """Seconds of one frozen teacher forward (what KD adds per batch per teacher)."""
    torch.manual_seed(0)
    model = prepare(create_model(arch, num_classes=10, in_chans=3), device).eval()
    x = layout(torch.randn(batch_size, 3, 32, 32, device=device), device)
    run = lambda: [frozen_logits(model, x, device) for _ in range(steps)]  # noqa: E731
    return timed(device, run, warm_up=lambda: frozen_logits(model, x, device)) / steps


def cifar_table_estimate(*, normal_step, harden_step, student_steps: dict, teacher_forward, epochs=160,
                         steps_per_epoch=390, seeds=3) -> dict:
    """Wall seconds of the paper's CIFAR-10 table from per-step seconds: the two teachers, then per
    seed four cells per student (scratch, label smoothing, KD from each teacher), the two KD cells
    sharing the teachers' forwards (one loop, as the audit trains them)."""
    teachers = epochs * steps_per_epoch * (normal_step + harden_step)
    per_batch = 4 * sum(student_steps.values()) + 2 * teacher_forward
    audit = seeds * epochs * steps_per_epoch * per_batch
    return {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "seeds": seeds, "students": list(student_steps),
            "student_step_s": student_steps, "teacher_forward_s": teacher_forward,
            "teachers_hours": teachers / 3600, "audit_hours": audit / 3600, "total_hours": (teachers + audit) / 3600}


# ----------------------------------------------------------------------------- 6. demo


def demo_seconds() -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nasty", "demo", "--out", out, "--quiet"], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
        return time.perf_counter() - t0


# ----------------------------------------------------------------------------- main


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Fewer steps and repetitions, no demo (< 3 min on 2 CPU cores).")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="resnet18", help="Model for the step and epoch figures.")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="torch.compile the trained model in the trainer's loop.")
    ap.add_argument("--no-demo", action="store_true", help="Skip the `nasty demo` timing.")
    ap.add_argument("--images", type=int, default=50_000, help="Images at CIFAR shape for the data-path figures.")
    ap.add_argument("--audit-images", type=int, default=None, help="Images per audit epoch [CPU 2048, quick 1024].")
    ap.add_argument("--ensemble-images", type=int, default=None,
                    help="Images per epoch of the ensemble figures [GPU 16384, quick 2048; CPU 1024, quick 512].")
    ap.add_argument("--steps", type=int, default=None,
                    help="Steps per timed epoch of the step figures [GPU 390, quick 100; CPU 4, quick 2].")
    ap.add_argument("--ensemble-students", default=None,
                    help="Comma-separated students of the ensemble figures [GPU: the four CIFAR students, quick: cnn,resnetc20].")
    ap.add_argument("--only-ensemble", action="store_true",
                    help="Measure the ensemble figures (section 4's second half) only.")
    ap.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    gpu, quick, bs = device.type == "cuda", args.quick, args.batch_size
    # a GPU runs whole CIFAR epochs; 2 CPU cores run a few steps of them
    steps = args.steps or ((100 if quick else 390) if gpu else (2 if quick else 4))
    repeats = 2 if quick else 3
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)  # noqa: E731

    progress = {"partial": True, "device": device_name(device), "details": {"arch": args.arch, "batch_size": bs}}

    def keep(**figures):  # a run cut short (a time limit on a lent GPU) keeps what it measured
        progress["details"].update(figures)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(progress, indent=2) + "\n")

    if not args.only_ensemble:
        log(f"trainer steps: {args.arch}, batch {bs}, {steps} steps x {repeats} epochs, normal then hardening")
        normal = trainer_step_seconds(args.arch, device, batch_size=bs, steps=steps, repeats=repeats,
                                      compile=args.compile)
        harden = trainer_step_seconds(args.arch, device, batch_size=bs, steps=steps, repeats=repeats,
                                      compile=args.compile, harden=True)
        keep(normal_step_s=normal, harden_step_s=harden)
    ensemble_students = (tuple(args.ensemble_students.split(",")) if args.ensemble_students
                         else ("cnn", "resnetc20") if quick or not gpu else CIFAR_STUDENTS)
    ensemble_images = args.ensemble_images or ((2048 if quick else 16384) if gpu else (512 if quick else 1024))
    log(f"audit: KD cells of 3 seeds, the students in a loop vs one batched ensemble per architecture "
        f"({', '.join(ensemble_students)}; {ensemble_images} images)")
    ensemble = ensemble_seconds(device, images=ensemble_images, batch_size=bs, students=ensemble_students,
                                teacher_arch="resnetc20")
    keep(ensemble=ensemble)
    if args.only_ensemble:
        progress["partial"] = False
        keep(seconds=time.perf_counter() - t_start)
        print(_aligned(_ensemble_rows(ensemble)))
        return progress

    log(f"data paths at CIFAR shape ({args.images:,} images)")
    cifar = synthetic(args.images)
    ours_rate = ours_images_per_second(cifar, batch_size=bs, device=device, repeats=repeats)
    loader = dataloader(cifar, batch_size=bs, device=device)
    batches = min(150 if quick else 300, len(cifar.train_y) // bs - 10)
    loader_rate = loader_images_per_second(loader, device=device, batches=batches, repeats=repeats)

    log(f"hardening step fed by the DataLoader: {args.arch}, {steps} steps")
    loader_harden = loader_harden_seconds_per_step(args.arch, loader, device, steps=steps)
    del loader
    keep(data_img_s=ours_rate, data_img_s_dataloader=loader_rate, harden_step_s_dataloader=loader_harden)
    by_workers = {2: loader_harden}
    for workers in sorted({4, os.cpu_count() or 1} - {2}):
        log(f"hardening step fed by the DataLoader with {workers} workers")
        wide = dataloader(cifar, batch_size=bs, device=device, workers=workers)
        by_workers[workers] = loader_harden_seconds_per_step(args.arch, wide, device, steps=steps)
        del wide

    log(f"CIFAR-10 table estimate: student steps of {', '.join(CIFAR_STUDENTS)}, a {args.arch} teacher forward")
    student_steps = {s: (normal if s == args.arch else trainer_step_seconds(s, device, batch_size=bs, steps=steps,
                                                                             repeats=repeats, compile=args.compile))
                     for s in CIFAR_STUDENTS}
    estimate = cifar_table_estimate(normal_step=normal, harden_step=harden, student_steps=student_steps,
                                    teacher_forward=teacher_forward_seconds(args.arch, device, batch_size=bs,
                                                                            steps=steps * repeats))

    keep(harden_step_s_dataloader_by_workers={str(k): v for k, v in by_workers.items()}, cifar10_table=estimate)
    log("audit: KD into 1, 2, 4 students (copies of cnn) from two resnetc20 teachers")
    grid = [["cnn"], ["cnn", "cnn#2"], ["cnn", "cnn#2", "cnn#3", "cnn#4"]]
    audit_images = args.audit_images or (1024 if quick else 2048) * (16 if gpu else 1)
    audit = audit_seconds(device, images=audit_images, batch_size=bs, students_grid=grid, teacher_arch="resnetc20")

    by_way = {}  # on a GPU: per-student CUDA graphs and the whole-step graph (the audit's default), the
    for way in GPU_WAYS if gpu else ():  # students' steps shortened by the measured ratios
        speedups = {row["student"]: row[f"{way}_speedup"] for row in ensemble["rows"] if f"{way}_speedup" in row}
        by_way[way] = cifar_table_estimate(
            normal_step=normal, harden_step=harden, teacher_forward=estimate["teacher_forward_s"],
            student_steps={s: t / speedups.get(s, 1.0) for s, t in student_steps.items()})
        by_way[way][f"{way}_speedups"] = speedups

    demo = None
    if not (quick or args.no_demo or gpu):
        log("nasty demo")
        demo = demo_seconds()

    result = {
        "harden_step_ratio": harden / normal,
        "data_path_speedup": ours_rate / loader_rate,
        "epoch_speedup_vs_dataloader": loader_harden / harden,
        "epoch_speedup_vs_dataloader_by_workers": {str(k): v / harden for k, v in by_workers.items()},
        "cifar10_table_hours": estimate["total_hours"],
        **{f"cifar10_table_hours_{way}": e["total_hours"] for way, e in by_way.items()},
        "demo_seconds": demo,
        "device": device_name(device),
        "details": {
            "arch": args.arch, "batch_size": bs, "steps_per_epoch": steps, "repeats": repeats, "compile": args.compile,
            "normal_step_s": normal, "harden_step_s": harden, "harden_step_s_dataloader": loader_harden,
            "harden_img_s": bs / harden, "harden_img_s_dataloader": bs / loader_harden,
            "data_img_s": ours_rate, "data_img_s_dataloader": loader_rate, "dataloader_workers": 2,
            "harden_step_s_dataloader_by_workers": {str(k): v for k, v in by_workers.items()},
            "cifar10_table": estimate, **{f"cifar10_table_{way}": e for way, e in by_way.items()},
            "cpu_count": os.cpu_count(),
            "audit": audit, "ensemble": ensemble, "quick": quick, "torch": torch.__version__, "python": platform.python_version(),
            "seconds": time.perf_counter() - t_start,
        },
    }
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(r: dict) -> str:
    d = r["details"]
    rows = [
        ("hardening step / normal step", f"{r['harden_step_ratio']:.2f}",
         f"{d['arch']} batch {d['batch_size']}: {d['harden_step_s'] * 1e3:.0f} ms vs {d['normal_step_s'] * 1e3:.0f} ms"),
        ("data path vs DataLoader (PIL, 2 workers)", f"{r['data_path_speedup']:.1f}x",
         f"{d['data_img_s']:,.0f} vs {d['data_img_s_dataloader']:,.0f} images/s"),
        ("hardening epoch vs DataLoader loop", f"{r['epoch_speedup_vs_dataloader']:.2f}x",
         f"{d['harden_img_s']:,.1f} vs {d['harden_img_s_dataloader']:,.1f} images/s"),
    ]
    for workers, ratio in r.get("epoch_speedup_vs_dataloader_by_workers", {}).items():
        if workers != "2":
            rows.append((f"hardening epoch vs DataLoader, {workers} workers", f"{ratio:.2f}x",
                         f"{d['harden_img_s']:,.1f} vs {d['batch_size'] / d['harden_step_s_dataloader_by_workers'][workers]:,.1f}"
                         " images/s"))
    for row in d["audit"]["rows"]:
        rows.append((f"audit, {len(row['students'])} student(s)", f"{row['seconds_per_student_epoch']:.2f} s",
                     f"per student-epoch ({d['audit']['images']} images); one at a time: "
                     f"{row['sharing_speedup']:.2f}x slower"))
    rows += _ensemble_rows(d.get("ensemble", {}))
    if "cifar10_table" in d:
        e = d["cifar10_table"]
        rows.append(("CIFAR-10 table (estimate)", f"{e['total_hours']:.1f} h",
                     f"teachers {e['teachers_hours']:.1f} h + audit {e['audit_hours']:.1f} h ({', '.join(e['students'])}; "
                     f"{e['epochs']} epochs, {e['seeds']} seeds)"))
    for way, title in GPU_WAYS.items():
        if d.get(f"cifar10_table_{way}"):
            e = d[f"cifar10_table_{way}"]
            rows.append((f"CIFAR-10 table, {title} (estimate)", f"{e['total_hours']:.1f} h",
                         f"audit {e['audit_hours']:.1f} h with the students' steps shortened by the ratios above "
                         f"(1.0 where not measured)"))
    rows.append(("nasty demo", "skipped" if r["demo_seconds"] is None else f"{r['demo_seconds']:.1f} s", ""))
    return "\n".join([f"device: {r['device']}, torch {d['torch']}, {d['seconds']:.0f} s in all", "", _aligned(rows)])


def _ensemble_rows(e: dict) -> list[tuple[str, str, str]]:
    """The table's rows of :func:`ensemble_seconds`' figures (none where there are none)."""
    rows = []
    for row in e.get("rows", []):
        rows.append((f"ensemble of {e['members']} {row['student']}", f"{row['speedup']:.2f}x",
                     f"{row['ensemble_s_per_student_epoch']:.3f} s vs {row['loop_s_per_student_epoch']:.3f} s per "
                     f"student-epoch in an eager loop ({e['images']} images; steady epochs)"))
        for way, title in GPU_WAYS.items():
            if f"{way}_speedup" in row:
                rows.append((f"{title}, {e['members']} {row['student']}", f"{row[f'{way}_speedup']:.2f}x",
                             f"{row[f'{way}_s_per_student_epoch']:.3f} s vs {row['loop_s_per_student_epoch']:.3f} s "
                             f"per student-epoch in an eager loop"))
    return rows


def _aligned(rows: list[tuple[str, str, str]]) -> str:
    w = max(len(a) for a, _, _ in rows)
    return "\n".join(f"{a:<{w}}  {b:>8}  {c}" for a, b, c in rows)


if __name__ == "__main__":
    main()
