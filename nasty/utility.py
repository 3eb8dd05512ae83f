"""What a served model is worth to an honest user, beyond its top-1 accuracy.

Computed from the *served* outputs (the logits after the model's output transform, e.g. top-k,
reverse-sigmoid, rounding or temperature: :mod:`nasty.defences`), whose softmax is what a client
reads, on the test set:

    p(x) = softmax(z_served(x))

    nll  = mean_i -log p_{y_i}(x_i)                 (nats; lower is better)
    ece  = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|  (15 equal-width bins of the confidence
                                                      max_c p_c(x) over (0, 1]; a fraction in [0, 1])
    top5 = 100 * mean_i [y_i among the min(5, C) largest p(x_i)]   (percent)

Robust NLL: a served answer may put ``-inf`` (or a gap of 1000 logits, as :class:`nasty.defences.TopK`
does) on classes outside its top k, or a probability rounded to 0. The log-probabilities are
taken with ``log_softmax`` (never ``log(softmax)``), non-finite logits are first replaced (``-inf``
by a very negative finite number, ``nan`` by it too, ``+inf`` by a very large one), and each
log-probability is clamped below at ``log(1e-12)``: a sample whose true class was cut off costs at
most ``-log(1e-12)`` = 27.63 nats, not infinity. So a top-1 server's NLL is 27.63 times its error
rate (plus the rest), a finite number that still ranks it far below an honest model.

Each function is pure (tensors in, numbers out); :func:`utility` collects a model's served
logits on the test set and applies them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ECE_BINS", "NLL_FLOOR", "served_log_probs", "nll", "ece", "topk_accuracy", "utility_metrics", "utility"]

ECE_BINS = 15
NLL_FLOOR = 1e-12  # the smallest probability a log is taken of: NLL per sample is at most -log(1e-12) = 27.63
_BIG = 1e4  # a logit gap far beyond anything softmax can resolve in float32


def served_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)``, finite everywhere and at least ``log(NLL_FLOOR)``."""
    z = logits.detach().float()
    z = torch.nan_to_num(z, nan=-_BIG, posinf=_BIG, neginf=-_BIG)
    # rows of all -inf (all replaced by -_BIG) stay uniform; a row mixing +inf and finite stays peaked
    return F.log_softmax(z, dim=-1).clamp_min(math.log(NLL_FLOOR))


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class, in nats (see the module doc)."""
    return float(-served_log_probs(logits).gather(1, labels.view(-1, 1)).mean())


def ece(logits: torch.Tensor, labels: torch.Tensor, *, bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``bins`` equal-width confidence bins of (0, 1]: the
    size-weighted mean gap between a bin's accuracy and its mean confidence (a fraction)."""
    p = served_log_probs(logits).exp()
    conf, pred = p.max(dim=1)
    correct = (pred == labels).float()
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur (>= 1/C)
    which = (conf * bins).ceil().long().clamp(1, bins) - 1
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += float(inside.float().mean()) * abs(float(correct[inside].mean()) - float(conf[inside].mean()))
    return total


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, *, k: int = 5) -> float:
    """Percent of samples whose true class is among the ``min(k, C)`` highest scores."""
    k = min(k, logits.shape[1])
    top = served_log_probs(logits).topk(k, dim=1).indices
    return 100.0 * float((top == labels.view(-1, 1)).any(dim=1).float().mean())


def utility_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{"nll", "ece", "top5"}`` of served ``logits`` for ``labels`` (rounded for a report)."""
    return {"nll": round(nll(logits, labels), 4), "ece": round(ece(logits, labels), 4),
            "top5": round(topk_accuracy(logits, labels, k=5), 4)}


@torch.no_grad()
def utility(model, data, *, device, batch_size: int = 1000) -> dict[str, float]:
    """:func:`utility_metrics` of ``model``'s answers (through its output transform, if it is a
    served model) on ``data``'s test set, in eval mode."""
    from .accel import autocast

    device = torch.device(device)
    was_training = model.training
    model.eval()
    zs, ys = [], []
    for x, y in data.batches("test", batch_size=batch_size, device=device):
        with autocast(device):
            zs.append(model(x).float().cpu())
        ys.append(y.cpu())
    model.train(was_training)
    return utility_metrics(torch.cat(zs), torch.cat(ys))


UTILITY_HEADER = ["served NLL", "ECE", "top-5"]  # nats, a fraction of 1 (15 bins), percent


def utility_cells(measured: dict | None) -> list[str]:
    """A teacher's ``utility`` (report.json) as table cells; ``-`` where it was not measured (an older report)."""
    if not isinstance(measured, dict):
        return ["-"] * len(UTILITY_HEADER)
    return [f"{v:.{d}f}" if isinstance(v, (int, float)) else "-"
            for v, d in ((measured.get("nll"), 3), (measured.get("ece"), 3), (measured.get("top5"), 2))]
