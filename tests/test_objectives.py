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


def test_conditional_mi_by_hand():
    from nasty.objectives import cmim_loss, conditional_mi

    # two samples of class 0, one of class 2 (alone: its centroid is itself, adds 0)
    z = [[2.0, 0.5, -1.0], [0.0, 1.5, 0.3], [1.0, 1.0, 4.0]]
    y = [0, 0, 2]
    tau = 2.0
    p = [_softmax(r, tau) for r in z]
    q = [(a + b) / 2 for a, b in zip(p[0], p[1])]
    want = (_kl(p[0], q) + _kl(p[1], q) + 0.0) / 3
    got = conditional_mi(torch.tensor(z), torch.tensor(y), tau)
    assert math.isclose(float(got), want, rel_tol=1e-5)
    taus = (1.0, 4.0)
    cmi = []
    for t in taus:
        p = [_softmax(r, t) for r in z]
        q = [(a + b) / 2 for a, b in zip(p[0], p[1])]
        cmi.append((_kl(p[0], q) + _kl(p[1], q)) / 3)
    ce = sum(_ce(r, c) for r, c in zip(z, y)) / 3
    loss, terms = cmim_loss(torch.tensor(z), torch.tensor(y), weight=0.7, taus=taus)
    assert math.isclose(float(loss), ce + 0.7 * sum(cmi) / 2, rel_tol=1e-5)
    assert math.isclose(float(terms["cmi"]), sum(cmi) / 2, rel_tol=1e-5)


def test_cmi_is_zero_on_collapsed_clusters_and_its_gradient_collapses_them():
    from nasty.objectives import cmim_loss, conditional_mi

    y = torch.tensor([0, 0, 1, 1, 1])
    same = torch.tensor([[3.0, 0.0, 1.0]] * 2 + [[0.0, 2.0, -1.0]] * 3)
    assert float(conditional_mi(same, y, 4.0)) < 1e-7
    # weight 0 is cross-entropy
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cmim_loss(z, y, weight=0.0)[0], torch.nn.functional.cross_entropy(z, y))
    # the gradient is finite and not zero, and a step down it concentrates the clusters
    z.requires_grad_(True)
    loss, terms = cmim_loss(z, y, weight=1.0)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    w = z.detach().clone().requires_grad_(True)
    cmi = conditional_mi(w, y, 1.0)
    cmi.backward()
    assert float(conditional_mi(w.detach() - 1.0 * w.grad, y, 1.0)) < float(cmi.detach())
    # extreme logits stay finite
    big = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    loss, _ = cmim_loss(big, torch.tensor([0, 0]), weight=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
