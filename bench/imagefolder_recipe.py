"""What the image-folder defaults give on a small folder: 100 classes of 32x32 grey images.

    python bench/imagefolder_recipe.py OUT [EPOCHS] [LR] [ARCH] [noflip]

Builds the folder from the embedded digit pairs (``train/<00..99>/*.png`` from the training pairs,
``val/<00..99>/*.png`` from the test pairs; each 8x16 pair scaled x2 and centred on a 32x32 black
canvas), then trains ``ARCH`` (default cnn, the paper's student: the recipe's resnet18 is too slow for
2 CPU cores, and small-cnn's global pooling after a 10-pixel view cannot tell "12" from "21" at 32 px)
with ``nasty train --dataset imagefolder`` and the recipe's other defaults (batch 128, lr 0.1 unless
``LR``, 0 for the recipe's; the crop padding an eighth of the image: 4 pixels). Prints the test accuracy and train loss
per epoch, and the largest drop of test accuracy between consecutive epochs after the first quarter,
and writes them to ``OUT/imagefolder_recipe_ARCH_EPOCHSepochs[_noflip].json``. ``noflip``: the same without the horizontal
flips (``nasty train --no-flip``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_folder(root: Path) -> Path:
    """The digit pairs as a 100-class folder of 32x32 grey PNGs (written once)."""
    import numpy as np
    from PIL import Image

    from nasty.data import load_dataset

    if (root / "done").exists():
        return root
    data = load_dataset("digit-pairs")
    for split, x, y in (("train", data.train_x, data.train_y), ("val", data.test_x, data.test_y)):
        for i, (img, label) in enumerate(zip(x.numpy(), y.numpy())):
            big = img[0].repeat(2, axis=0).repeat(2, axis=1)  # 16x32
            canvas = np.zeros((32, 32), dtype=np.uint8)
            canvas[8:24] = big
            d = root / split / data.classes[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(canvas, mode="L").save(d / f"{i}.png")
    (root / "done").write_text("")
    return root


def main(out: str, epochs: int = 20, lr: float | None = None, arch: str = "cnn", flip: str = "") -> None:
    from nasty.runs import train

    suffix = "noflip" if flip == "noflip" else ""
    out = Path(out)
    folder = build_folder(out / "folder")
    run = out / f"{arch}-{epochs}epochs-lr{lr or 'recipe'}{'-' + suffix if suffix else ''}"
    t0 = time.perf_counter()
    card = train(dataset="imagefolder", data_root=folder, arch=arch, epochs=epochs, lr=lr, flip=not suffix, out=run,
                 resume=True, device="cpu", quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    accs = [r["test_accuracy"] for r in rows]
    drops = [accs[i - 1] - accs[i] for i in range(max(1, len(accs) // 4), len(accs))]
    result = {"arch": arch, "epochs": epochs, "lr": card["lr"], "flip": card["flip"], "final": accs[-1],
              "train_seconds": card["seconds"],  # the run's own, over every resume
              "per_epoch": [{"epoch": r["epoch"], "test_acc": r["test_accuracy"], "train_loss": r["train_loss"]} for r in rows],
              "largest_drop": max(drops) if drops else 0.0, "seconds": round(time.perf_counter() - t0, 1)}  # this call's
    for r in result["per_epoch"]:
        print(f"epoch {r['epoch']}: test {r['test_acc']:.2f}  train loss {r['train_loss']:.3f}")
    print(f"{arch} {epochs} epochs lr {lr or 'recipe'}: final {result['final']}, largest drop after the first "
          f"quarter {result['largest_drop']:.2f} points, {result['seconds']} s")
    (out / f"imagefolder_recipe_{arch}_{epochs}epochs{'_' + suffix if suffix else ''}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], *(int(args[1]),) if len(args) > 1 else (),
         *(float(args[2]),) if len(args) > 2 else (), *(args[3:5]))
