"""Serving-time defences: what a released model answers = its weights + an output transform.

    model = Defended(net, transform=create_transform({"name": "topk", "k": 2}))
    z = model(x)            # the released answer, as logits (log-probabilities for the transforms
                            # that work on probabilities); softmax(z) is what a client sees

The transform lives in the run's ``card.json`` (``output_transform``) and is applied wherever the
teacher answers: :func:`nasty.checkpoint.load_model`, the audit's teacher forward, the
diagnostics and ``nasty export``. So what is served is what was audited.

| name | settings | what the client gets | argmax kept |
|---|---|---|---|
| ``topk`` | ``k`` | the k largest logits; every other class far below (Stingy Teacher, Ma et al. 2022) | yes |
| ``reverse-sigmoid`` | ``beta``, ``gamma`` | probabilities perturbed by ``beta * (sigmoid(gamma * logit(p)) - 1/2)``, renormalised (Lee et al. 2019, as in IBM ART) | not always |
| ``round`` | ``decimals`` | probabilities rounded to ``decimals`` places | not on ties |
| ``temperature`` | ``t`` | softmax(z / t) | yes |
| ``chain`` | ``steps`` | the steps in order, each on the one before's answer | where every step keeps it |

A chain stacks defences: ``{"name": "chain", "steps": [{"name": "topk", "k": 2}, {"name": "round",
"decimals": 1}]}`` serves the two largest probabilities, rounded to one decimal.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import NastyError

__all__ = ["Transform", "TopK", "ReverseSigmoid", "Round", "Temperature", "Chain", "TRANSFORMS", "create_transform",
           "Defended", "describe", "defence_of"]

_FLOOR = 1e-12  # log of a probability rounded or clipped to zero


class Transform(nn.Module):
    """Logits in, released logits out; ``spec()`` is what the card records."""

    name = ""
    keeps_argmax = True

    def spec(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training"}}


class TopK(Transform):
    name = "topk"

    def __init__(self, *, k: int):
        super().__init__()
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise NastyError(f"topk: k must be a whole number >= 1, got {k!r}")
        self.k = k

    def forward(self, z):
        k = min(self.k, z.shape[-1])
        top = z.topk(k, dim=-1)
        # the rest far below the k-th (finite, so KL stays defined): 1000 logits is e^-50 even at tau 20
        out = torch.full_like(z, 0).add_(top.values[..., -1:] - 1000.0)
        return out.scatter(-1, top.indices, top.values)


class ReverseSigmoid(Transform):
    name = "reverse-sigmoid"
    keeps_argmax = False

    def __init__(self, *, beta: float = 1.0, gamma: float = 0.1):
        super().__init__()
        for key, v in (("beta", beta), ("gamma", gamma)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                raise NastyError(f"reverse-sigmoid: {key} must be a finite number >= 0, got {v!r}")
        self.beta, self.gamma = float(beta), float(gamma)

    def forward(self, z):
        p = z.float().softmax(-1).clamp(1e-6, 1 - 1e-6)
        perturbed = (p - self.beta * (torch.sigmoid(self.gamma * torch.logit(p)) - 0.5)).clamp(0.0, 1.0)
        total = perturbed.sum(-1, keepdim=True)
        p = torch.where(total > 0, perturbed / total.clamp_min(_FLOOR), torch.full_like(p, 1.0 / p.shape[-1]))
        return p.clamp_min(_FLOOR).log()


class Round(Transform):
    name = "round"
    keeps_argmax = False

    def __init__(self, *, decimals: int = 2):
        super().__init__()
        if not (isinstance(decimals, int) and not isinstance(decimals, bool) and 0 <= decimals <= 8):
            raise NastyError(f"round: decimals must be a whole number in 0..8, got {decimals!r}")
        self.decimals = decimals

    def forward(self, z):
        p = torch.round(z.float().softmax(-1), decimals=self.decimals)
        return p.clamp_min(_FLOOR).log()


class Temperature(Transform):
    name = "temperature"

    def __init__(self, *, t: float = 1.0):
        super().__init__()
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0):
            raise NastyError(f"temperature: t must be a finite number > 0, got {t!r}")
        self.t = float(t)

    def forward(self, z):
        return z / self.t


class Chain(Transform):
    """Several transforms, each applied to the answer of the one before (a stack of defences)."""

    name = "chain"

    def __init__(self, *, steps: list):
        super().__init__()
        if not (isinstance(steps, (list, tuple)) and len(steps) >= 2):
            raise NastyError(f"chain: steps must be a list of at least 2 transforms, got {str(steps)[:80]!r}")
        if any(isinstance(step, dict) and step.get("name") == self.name for step in steps):
            raise NastyError("chain: a step cannot itself be a chain; list its steps instead")
        if any(step is None for step in steps):
            raise NastyError("chain: every step must be a transform, got none (null) among them")
        self.steps = nn.ModuleList(create_transform(step) for step in steps)
        self.keeps_argmax = all(step.keeps_argmax for step in self.steps)

    def spec(self) -> dict:
        return {"name": self.name, "steps": [step.spec() for step in self.steps]}

    def forward(self, z):
        for step in self.steps:
            z = step(z)
        return z


TRANSFORMS: dict[str, type[Transform]] = {c.name: c for c in (TopK, ReverseSigmoid, Round, Temperature, Chain)}


def create_transform(spec: dict | None) -> Transform | None:
    """A transform from its card entry (``{"name": "topk", "k": 2}``); ``None`` for none.
    Anything unknown or malformed is a one-line :class:`NastyError`."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise NastyError(f"output_transform must be an object with a 'name', got {str(spec)[:80]!r}")
    name = spec["name"]
    if name not in TRANSFORMS:
        raise NastyError(f"output_transform: unknown transform {name[:40]!r}; choose from {', '.join(TRANSFORMS)}")
    settings = {k: v for k, v in spec.items() if k != "name"}
    import inspect

    known = [p for p in inspect.signature(TRANSFORMS[name].__init__).parameters if p != "self"]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise NastyError(f"output_transform {name}: no setting {unknown[0][:40]!r}; it has {', '.join(known)}")
    return TRANSFORMS[name](**settings)


def describe(spec: dict | None) -> str:
    """``topk k=2`` / ``none``: a defence's transform in a few words (reports, plots)."""
    if not spec:
        return "none"
    if spec.get("name") == Chain.name:
        return " then ".join(describe(step) for step in spec.get("steps", ()))
    return " ".join([spec["name"], *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in spec.items() if k != "name")])


def defence_of(card: dict) -> str:
    """A released model's defence in a few words, from its card: its hardening and serving transform
    (``nasty omega 0.05 + topk k=2``, ``cmim weight 1``; ``none`` for a normal model served as it is)."""
    parts = []
    if card.get("kind") == "nasty" and card.get("method") == "cmim":
        weight = card.get("cmi_weight")
        parts.append(f"cmim weight {weight:.3g}" if isinstance(weight, (int, float)) else "cmim")
    elif card.get("kind") == "nasty":
        omega = card.get("omega")
        parts.append(f"nasty omega {omega:.3g}" if isinstance(omega, (int, float)) else "nasty")
    if card.get("output_transform"):
        parts.append(describe(card["output_transform"]))
    return " + ".join(parts) or "none"


class Defended(nn.Module):
    """A model and the transform applied to its answers; features pass through untouched."""

    def __init__(self, model: nn.Module, transform: Transform | None):
        super().__init__()
        self.model, self.transform = model, transform

    def forward(self, x):
        z = self.model(x)
        return z if self.transform is None else self.transform(z)

    @property
    def num_features(self) -> int:
        return self.model.num_features

    def forward_features(self, x):
        return self.model.forward_features(x)

    def forward_head(self, features):
        z = self.model.forward_head(features)
        return z if self.transform is None else self.transform(z)
