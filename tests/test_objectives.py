import math

import torch

from nasty.objectives import kd_loss, kl_tau, self_undermining_loss


def _softmax(z, tau):
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _ce(z, y):
    return -math.log(_softmax(z, 1.0)[y])


ZT = [2.0, 0.5, -1.0]  # the model being trained (student in KD, nasty teacher in hardening)
ZR = [0.0, 1.5, 0.3]  # the frozen reference (teacher in KD, adversary in hardening)


def test_kl_tau_by_hand():
    tau = 4.0
    want = _kl(_softmax(ZT, tau), _softmax(ZR, tau))
    got = kl_tau(torch.tensor([ZT]), torch.tensor([ZR]), tau)
    assert math.isclose(float(got), want, rel_tol=1e-5)
    assert float(kl_tau(torch.tensor([ZT]), torch.tensor([ZT]), tau)) < 1e-7


def test_kd_loss_by_hand():
    alpha, tau = 0.9, 4.0
    # KL(p_T || p_S): the teacher's distribution comes first
    want = alpha * tau**2 * _kl(_softmax(ZR, tau), _softmax(ZT, tau)) + (1 - alpha) * _ce(ZT, 0)
    loss, terms = kd_loss(torch.tensor([ZT]), torch.tensor([ZR]), torch.tensor([0]), alpha=alpha, tau=tau)
    assert math.isclose(float(loss), want, rel_tol=1e-5)
    assert math.isclose(float(terms["ce"]), _ce(ZT, 0), rel_tol=1e-5)


def test_self_undermining_loss_by_hand():
    omega, tau = 0.04, 4.0
    # CE(z_T, y) - omega * tau^2 * KL(p_T || p_A)
    want = _ce(ZT, 1) - omega * tau**2 * _kl(_softmax(ZT, tau), _softmax(ZR, tau))
    loss, terms = self_undermining_loss(torch.tensor([ZT]), torch.tensor([ZR]), torch.tensor([1]), omega=omega, tau=tau)
    assert math.isclose(float(loss), want, rel_tol=1e-5)
    assert math.isclose(float(terms["kl"]), _kl(_softmax(ZT, tau), _softmax(ZR, tau)), rel_tol=1e-5)


def test_batch_mean_and_omega_zero_is_cross_entropy():
    z, zr, y = torch.randn(5, 7), torch.randn(5, 7), torch.randint(0, 7, (5,))
    loss, _ = self_undermining_loss(z, zr, y, omega=0.0, tau=4.0)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(z, y))
    rows = torch.stack([kl_tau(z[i : i + 1], zr[i : i + 1], 3.0) for i in range(5)])
    assert torch.allclose(kl_tau(z, zr, 3.0), rows.mean())


def test_gradient_flows_only_through_the_trained_model():
    z = torch.randn(4, 10, requires_grad=True)
    zr = torch.randn(4, 10, requires_grad=True)
    y = torch.randint(0, 10, (4,))
    loss, _ = self_undermining_loss(z, zr, y, omega=0.1, tau=4.0)
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert zr.grad is None
    z.grad = None
    loss, _ = kd_loss(z, zr, y, alpha=0.9, tau=4.0)
    loss.backward()
    assert z.grad.abs().sum() > 0 and zr.grad is None


def test_self_undermining_pushes_away_from_the_adversary():
    # one gradient step on the nasty logits must increase KL(p_T || p_A)
    zr = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    z = zr.clone().add_(0.01).requires_grad_(True)
    y = torch.tensor([0])
    before = float(kl_tau(z.detach(), zr, 4.0))
    loss, _ = self_undermining_loss(z, zr, y, omega=1.0, tau=4.0)
    loss.backward()
    with torch.no_grad():
        after = float(kl_tau(z - 0.5 * z.grad, zr, 4.0))
    assert after > before
