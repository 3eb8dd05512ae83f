"""Time normal-training and hardening epochs on synthetic CIFAR-shaped data, in one run.

    python bench/step_time.py --arch resnet18 --device cuda --batch-size 128 --images 10240
    python bench/step_time.py --arch small-cnn --device cpu --shape 1,8,8 --images 1347 --batch-size 64

Both loops are the real trainer (``nasty.trainer.fit``) on the same data: the normal loop
with cross-entropy, the hardening loop with the frozen adversary's extra forward pass.
Reports the median epoch time over ``--repeats`` after one warm-up epoch, images/s, and the
ratio harden / normal (the frozen forward should add about a third).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nasty.data import TensorData
from nasty.models import create_model
from nasty.trainer import TrainConfig, evaluate, fit, objective_for, resolve_device


def synthetic(n, shape, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    c = shape[0]
    return TensorData(name="synthetic", train_x=x, train_y=y, test_x=x[:1000], test_y=y[:1000],
                      classes=tuple(str(i) for i in range(num_classes)), mean=(0.5,) * c, std=(0.25,) * c,
                      pad=4 if shape[-1] >= 32 else 0, flip=shape[-1] >= 32)


def epoch_seconds(model, data, cfg, device, reference=None, repeats=3):
    obj = objective_for("nasty", omega=0.04, tau=4.0) if reference is not None else None
    times = []
    for i in range(repeats + 1):  # the first epoch warms up (cudnn autotune, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fit(model, data, config=cfg, objective=obj, reference=reference, device=device, quiet=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0 - _eval_seconds(model, data, device))
    return statistics.median(times)


def _eval_seconds(model, data, device):
    t0 = time.perf_counter()
    evaluate(model, data, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--shape", default="3,32,32")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    shape = tuple(int(v) for v in args.shape.split(","))
    data = synthetic(args.images, shape, args.classes)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05)
    make = lambda: create_model(args.arch, num_classes=args.classes, in_chans=shape[0])  # noqa: E731
    adversary = make().to(device).eval()
    normal = epoch_seconds(make(), data, cfg, device, repeats=args.repeats)
    harden = epoch_seconds(make(), data, cfg, device, reference=adversary, repeats=args.repeats)
    n = (args.images // args.batch_size) * args.batch_size
    out = {"arch": args.arch, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "batch_size": args.batch_size, "images_per_epoch": n,
           "normal_epoch_s": normal, "harden_epoch_s": harden, "normal_img_s": n / normal,
           "harden_img_s": n / harden, "harden_step_ratio": harden / normal}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
