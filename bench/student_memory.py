"""Peak memory of one audit step's students on the CPU: KD from two ResNetC-20 teachers into
resnetc20, resnetc32 and cnn (6 students), 512 CIFAR-shaped images, batch 128, one epoch.

    python bench/student_memory.py [label]

Prints the growth of the peak resident size (VmHWM, reset at the start) over the resident size
at the start, and the seconds. Linux only (it reads /proc/self).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from attacks import create_attack
from attacks.base import run_students
from bench import synthetic  # bench/bench.py, beside this file
from nasty.models import create_model
from nasty.trainer import TrainConfig


def _status_mb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main(label: str = "") -> None:
    torch.manual_seed(0)
    data = synthetic(512)
    teachers = {s: create_model("resnetc20", num_classes=10, in_chans=3).eval() for s in ("normal", "nasty")}
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = _status_mb("VmRSS")
    t0 = time.perf_counter()
    run_students(create_attack("kd"), teachers, ["resnetc20", "resnetc32", "cnn"], data,
                 config=TrainConfig(epochs=1, batch_size=128, lr=0.05), device="cpu", ensemble=False)
    print(f"{label}: peak growth {_status_mb('VmHWM') - start} MB, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(*sys.argv[1:2])
