"""Objectives past the paper's, measured on digits with validation only (issue 13, item 3).

    python bench/objective_variants.py '[{"omega":0.05},{"omega":0.1,"taus":[1,2,4,8]},{"omega":0.05,"extra":["mlp","tiny"]}]'

One normal small-cnn teacher (seed 0) trained on 80% of the digits training set; the other 20%
is the validation split every number here is scored on (the test set is read only for the
``test_cost`` column). Each variant hardens a small-cnn from scratch against it with

    CE - omega * mean_adversaries mean_taus tau^2 KL(p_tau(z_T) || p_tau(z_A))

where the adversaries are the normal teacher plus, with ``extra``, normally trained student-sized
models (``mlp``, ``tiny``: tiny-cnn), and ``taus`` several temperatures at once; ``init:
teacher`` fine-tunes the normal teacher instead. Then tiny-cnn and mlp students (2 seeds) are
distilled from it at tau 4 (the defender's) and tau 1 (a thief's pick), alpha 0.9, and compared
with the same students from scratch. One JSON line per variant.
"""
import json
import sys
import time
import torch, torch.nn.functional as F
from nasty.data import load_dataset
from nasty.models import create_model
from nasty.trainer import TrainConfig, fit, evaluate, objective_for
from nasty.objectives import kl_tau

torch.set_num_threads(1)
data = load_dataset("digits")
fitd, val = data.split_validation(0.2, seed=0)
def net(a, seed):
    torch.manual_seed(seed); return create_model(a, num_classes=10, in_chans=1)
cfg = lambda seed, ep=20: TrainConfig(epochs=ep, batch_size=64, lr=0.05, seed=seed)

def acc(m, d): return evaluate(m, d, device="cpu")["accuracy"]

def nasty_obj(omega, taus, n_adv):
    def f(z, y, refs):
        ce = F.cross_entropy(z, y)
        kls = [sum(t*t*kl_tau(z, r, t) for t in taus)/len(taus) for r in refs.unbind(0)]
        kl = sum(kls)/len(kls)
        return ce - omega*kl, {"ce": ce.detach(), "kl": kl.detach()}
    return f

class Stack(torch.nn.Module):
    def __init__(self, ms): super().__init__(); self.ms = torch.nn.ModuleList(ms)
    def forward(self, x): return torch.stack([m(x) for m in self.ms])

t0=time.time()
normal = net("small-cnn", 0); fit(normal, fitd, config=cfg(0), quiet=True)
advs = {"mlp": net("mlp", 100), "tiny": net("tiny-cnn", 100)}
for m in advs.values(): fit(m, fitd, config=cfg(100), quiet=True)
print("normal val", acc(normal, val), "test", acc(normal, data), "t", time.time()-t0, flush=True)
students = ["tiny-cnn", "mlp"]
base = {}
for s in students:
    for seed in (0,1):
        base[(s,"scratch",seed)] = fit(net(s, seed), val, config=cfg(seed), quiet=True)["accuracy"]
print("base", base, time.time()-t0, flush=True)

def probe(teacher, tau):
    out = {}
    for s in students:
        out[s] = sum(fit(net(s, seed), val, config=cfg(seed), objective=objective_for("kd", alpha=0.9, tau=tau), reference=teacher, quiet=True)["accuracy"] for seed in (0,1))/2
    return out

variants = json.loads(sys.argv[1])
for v in variants:
    t1 = time.time()
    refs = [normal] + [advs[a] for a in v.get("extra", [])]
    torch.manual_seed(0)
    m = net("small-cnn", 0)
    if v.get("init") == "teacher": m.load_state_dict(normal.state_dict())
    ep = v.get("epochs", 20)
    fit(m, fitd, config=TrainConfig(epochs=ep, batch_size=64, lr=v.get("lr", 0.05), seed=0),
        objective=nasty_obj(v["omega"], v.get("taus", [4]), len(refs)), reference=Stack(refs), quiet=True)
    th = time.time()-t1
    r = {"v": v, "val_cost": acc(normal, val)-acc(m, val), "test_cost": acc(normal, data)-acc(m, data), "harden_s": round(th,1)}
    r["kd4"] = probe(m, 4.0); r["kd1"] = probe(m, 1.0)
    r["below4"] = {s: sum(base[(s,"scratch",k)] for k in (0,1))/2 - r["kd4"][s] for s in students}
    r["below1"] = {s: sum(base[(s,"scratch",k)] for k in (0,1))/2 - r["kd1"][s] for s in students}
    r["t"] = round(time.time()-t1,1)
    print(json.dumps(r), flush=True)
