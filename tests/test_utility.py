"""Utility for honest users: NLL, ECE (15 bins) and top-5 of the served probabilities, by hand."""

import math

import pytest
import torch

from nasty.defences import Defended, TopK, create_transform
from nasty.utility import ECE_BINS, ece, nll, served_log_probs, topk_accuracy, utility, utility_metrics

# served probabilities given directly (logits = log p): two confident answers (one right, one wrong)
# and two hesitant right ones
P = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]
Y = [0, 1, 0, 0]


def _logits(p):
    return torch.tensor(p).log()


def test_nll_by_hand():
    want = -(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.6)) / 4
    assert nll(_logits(P), torch.tensor(Y)) == pytest.approx(want, rel=1e-5)


def test_ece_by_hand():
    # bin (13/15, 14/15]: confidence 0.9, accuracy 1/2; bin (8/15, 9/15]: confidence 0.6, accuracy 1
    want = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert ece(_logits(P), torch.tensor(Y)) == pytest.approx(want, abs=1e-5)
    assert ECE_BINS == 15
    # a perfectly calibrated bin: 3 right and 1 wrong at confidence 0.75
    z = _logits([[0.75, 0.25]] * 4)
    assert ece(z, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-6)


def test_topk_takes_at_most_the_number_of_classes():
    z = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    # the first sample's class 5 is 6th: outside its top 5; the second's class 5 is 2nd
    assert topk_accuracy(z, torch.tensor([5, 5]), k=5) == pytest.approx(50.0)
    assert topk_accuracy(z, torch.tensor([0, 6]), k=1) == pytest.approx(100.0)
    assert topk_accuracy(_logits(P), torch.tensor(Y), k=5) == pytest.approx(100.0)  # 2 classes: top-2


def test_cut_off_classes_cost_a_bounded_nll():
    cap = -math.log(1e-12)
    z = torch.tensor([[0.0, float("-inf"), float("-inf")], [1.0, float("nan"), 0.0]])
    lp = served_log_probs(z)
    assert torch.isfinite(lp).all() and float(lp.min()) == pytest.approx(-cap, rel=1e-6)
    assert nll(z[:1], torch.tensor([1])) == pytest.approx(cap, rel=1e-6)
    assert nll(z[:1], torch.tensor([0])) == pytest.approx(0.0, abs=1e-6)
    # the Stingy Teacher's top-1 (every other class 1000 logits below): capped, not 1000
    served = TopK(k=1)(torch.tensor([[2.0, 1.0, 0.0]]))
    assert nll(served, torch.tensor([1])) == pytest.approx(cap, rel=1e-6)
    m = utility_metrics(served, torch.tensor([1]))
    assert set(m) == {"nll", "ece", "top5"} and all(math.isfinite(v) for v in m.values())


def test_utility_reads_the_served_outputs(digits):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    plain = utility(net, digits, device="cpu")
    stingy = utility(Defended(net, create_transform({"name": "topk", "k": 1})), digits, device="cpu")
    hot = utility(Defended(net, create_transform({"name": "temperature", "t": 0.1})), digits, device="cpu")
    assert stingy["nll"] > plain["nll"] and stingy["top5"] <= plain["top5"]
    assert hot["nll"] != pytest.approx(plain["nll"])
    assert hot["top5"] == pytest.approx(plain["top5"])  # a temperature keeps the ranking
