"""Is there value in a teacher's outputs on digit pairs? Plain PyTorch, no audit machinery.

    python bench/digit_pairs_value.py small-cnn 0.1,0.05 tiny-cnn,mlp [ce,kd4,kd1,hl16] [STEPS] [SEEDS]

Trains the teacher on all 6,000 pairs (20 epochs of batch 64: 1,860 steps), then students on a
share of the pairs for the same 1,860 steps (equal steps whatever the share; or STEPS), one per kind:
``ce`` from the labels (cross-entropy); ``kd<T>`` KD (alpha 0.9) at tau T on the teacher's
outputs; ``hl<T>`` the same on its top-1 answers alone (one-hot targets: a labels-only thief).
Seeds 0 and 1 (or SEEDS of them); prints one line per (share, student) with each seed's final test
accuracy, and the mean and std over seeds of KD's best minus the best labels-only kind.
"""

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasty.data import load_dataset  # noqa: E402
from nasty.models import create_model  # noqa: E402
from nasty.trainer import TrainConfig, evaluate, make_optimizer  # noqa: E402


def fit(arch, data, steps, seed, teacher=None, tau=4.0, alpha=0.9, lr=0.05, batch=64, top1=False):
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=data.num_classes, in_chans=1)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=lr).for_steps(steps, len(data.train_y))
    opt, sched = make_optimizer(model.parameters(), cfg)
    done = 0
    for epoch in range(cfg.epochs):
        model.train()
        for x, y in data.batches("train", batch_size=batch, seed=seed, epoch=epoch):
            z = model(x)
            loss = F.cross_entropy(z, y)
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(x)
                    if top1:  # one-hot at any temperature
                        t = F.one_hot(t.argmax(1), t.shape[1]).float() * 1000.0
                kl = F.kl_div(F.log_softmax(z / tau, 1), F.log_softmax(t / tau, 1), log_target=True,
                              reduction="batchmean")
                loss = alpha * tau * tau * kl + (1 - alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
        sched.step()
    model.eval()
    return model, evaluate(model, data, device="cpu")["accuracy"]


def main(teacher_arch="small-cnn", shares="0.1,0.05", students="tiny-cnn,mlp", kinds="ce,kd4,kd1", student_steps="", seeds="2"):
    torch.set_num_threads(1)
    data = load_dataset("digit-pairs")
    steps = 20 * (len(data.train_y) // 64)
    student_steps = int(student_steps or steps)
    t0 = time.perf_counter()
    teacher, acc = fit(teacher_arch, data, steps, 0)
    print(f"teacher {teacher_arch} {acc:.2f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    for share in (float(s) for s in shares.split(",")):
        part = data.subset(share, seed=0)
        for student in students.split(","):
            row = {kind: [fit(student, part, student_steps, seed, None if kind == "ce" else teacher,
                              tau=float(kind[2:]) if kind != "ce" else 1.0, top1=kind.startswith("hl"))[1]
                          for seed in range(int(seeds))]
                   for kind in kinds.split(",")}
            print(share, student, {k: (round(sum(v) / len(v), 2), v) for k, v in row.items()}, flush=True)
            print(share, student, "outputs add", value(row), flush=True)


def value(row: dict) -> str:
    """The best kd kind minus the best labels-only kind (ce, hl), picked by their means; mean and
    std over seeds of the per-seed difference."""
    mean = {k: sum(v) / len(v) for k, v in row.items()}
    outputs = max((k for k in row if k.startswith("kd")), key=mean.get, default=None)
    labels = max((k for k in row if not k.startswith("kd")), key=mean.get, default=None)
    if outputs is None or labels is None:
        return "-"
    diffs = [a - b for a, b in zip(row[outputs], row[labels])]
    m = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else 0.0
    return f"{m:+.2f} +- {sd:.2f} ({outputs} vs {labels})"


if __name__ == "__main__":
    main(*sys.argv[1:])
