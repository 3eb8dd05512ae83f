"""Peak memory of one audit step's students on the CPU: KD from two ResNetC-20 teachers into
resnetc20, resnetc32 and cnn (6 students), 512 CIFAR-shaped images, batch 128, one epoch.

    python bench/student_memory.py [label]

Prints the growth of the peak resident size (VmHWM, reset at the start) over the resident size
at the start, and the seconds. Linux only (it reads /proc/self).
"""

from __future__ import annotations

import sys
import time

import torch

from attacks import create_attack
from attacks.base import run_students
from bench import synthetic  # bench/bench.py, beside this file
from fuzz import reset_peak_rss, status_mb  # bench/fuzz.py
from nasty.models import create_model
from nasty.trainer import TrainConfig


def main(label: str = "") -> None:
    torch.manual_seed(0)
    data = synthetic(512)
    teachers = {s: create_model("resnetc20", num_classes=10, in_chans=3).eval() for s in ("normal", "nasty")}
    reset_peak_rss()  # VmHWM := VmRSS
    start = status_mb("VmRSS")
    t0 = time.perf_counter()
    run_students(create_attack("kd"), teachers, ["resnetc20", "resnetc32", "cnn"], data,
                 config=TrainConfig(epochs=1, batch_size=128, lr=0.05), device="cpu", ensemble=False)
    print(f"{label}: peak growth {status_mb('VmHWM') - start} MB, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(*sys.argv[1:2])
