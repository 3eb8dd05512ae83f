"""``nasty export``: the released model as a program for serving, output transform included.

    export(teacher="runs/stingy2", out="stingy2.pt2")     # torch.export program
    export(teacher="runs/stingy2", out="stingy2.onnx")    # ONNX, when the onnx package is installed

What is exported is what :func:`nasty.checkpoint.load_model` builds (weights + the card's output
transform), so what is served is what was audited. The batch dimension is dynamic.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .errors import NastyError

__all__ = ["export", "load_exported"]


def export(*, teacher, out, unsafe_pickle: bool = False, batch: int = 2) -> Path:
    """Write ``out`` (``.pt2``: torch.export; ``.onnx``: ONNX) and return its path."""
    out = Path(out)
    if out.suffix not in (".pt2", ".onnx"):
        raise NastyError(f"`out` {out}: the exported file must end in .pt2 (torch.export) or .onnx")
    model, card = ckpt.load_model(ckpt.require_run(teacher, command="export"), unsafe_pickle=unsafe_pickle)
    shape = card.get("input_shape")
    if not shape:
        raise NastyError(f"`teacher` {teacher}: its card records no input_shape, and an export traces the model on "
                         f"an example input of that shape; `nasty import` makes a run that records it")
    example = (torch.zeros(batch, *shape),)
    dims = {"x": {0: torch.export.Dim("batch", min=1)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise NastyError("ONNX export needs the onnx packages: pip install -e '.[onnx]' in a checkout of nasty "
                             "(or export to .pt2)") from None
        ckpt.atomic_write(out, lambda p: torch.onnx.export(model, example, str(p), dynamo=True, input_names=["x"],
                                                           dynamic_shapes=dims))
        return out
    program = torch.export.export(_Named(model), example, dynamic_shapes=dims)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    ckpt.atomic_write(out, lambda p: Path(p).write_bytes(buf.getvalue()))
    return out


def load_exported(path) -> torch.nn.Module:
    """The exported program of ``path`` (.pt2) as a callable module."""
    return torch.export.load(str(path)).module()


class _Named(torch.nn.Module):
    """Gives the input the name ``x`` that the dynamic shapes refer to."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)
