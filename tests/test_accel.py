"""The CUDA path (bf16 autocast, channels_last) run on the CPU: every branch that a GPU takes,
switched on here by forcing :func:`nasty.accel.enabled`, since our machines have no GPU."""

import pytest
import torch

from nasty import accel
from nasty import checkpoint as ckpt
from nasty.models import create_model, list_models

# the digits nets see 1x8x8 images, the paper's nets 3x32x32
SMALL = {"small-cnn", "tiny-cnn", "mlp", "wide-cnn"}


@pytest.fixture
def cuda_path(monkeypatch):
    monkeypatch.setattr(accel, "enabled", lambda device: True)


def test_off_on_the_cpu_on_for_cuda():
    assert not accel.enabled("cpu") and accel.enabled("cuda") and accel.enabled(torch.device("cuda", 1))
    x = torch.randn(2, 3, 4, 4)
    assert accel.layout(x, "cpu") is x  # the CPU path leaves the layout alone: fp32 numerics unchanged
    with accel.autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def test_the_switch_turns_on_bf16_and_channels_last(cuda_path):
    m = accel.prepare(torch.nn.Conv2d(3, 4, 3), "cpu")
    assert m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
    x = accel.layout(torch.randn(2, 3, 8, 8), "cpu")
    assert x.is_contiguous(memory_format=torch.channels_last)
    with accel.autocast(torch.device("cpu")):
        assert m(x).dtype == torch.bfloat16


@pytest.mark.parametrize("arch", sorted(list_models()))
def test_every_zoo_model_trains_in_bf16_and_channels_last(arch, cuda_path):
    shape = (1, 8, 8) if arch in SMALL else (3, 32, 32)
    kwargs = {"cardinality": 2, "width": 4} if arch == "resnext29" else {}  # the 8x64d net is slow on a CPU
    torch.manual_seed(0)
    ref = create_model(arch, num_classes=10, in_chans=shape[0], **kwargs).eval()
    fast = create_model(arch, num_classes=10, in_chans=shape[0], **kwargs).eval()
    fast.load_state_dict(ref.state_dict())
    accel.prepare(fast, "cpu")
    x = torch.randn(8, *shape)
    with torch.no_grad():
        want = ref(x)
        with accel.autocast(torch.device("cpu")):
            got = fast(accel.layout(x, "cpu")).float()
    assert torch.isfinite(got).all()
    # bf16 keeps about 3 significant digits: the logits agree to a few percent of their scale
    assert (got - want).abs().max() <= 0.05 * want.abs().max() + 0.05, (got - want).abs().max()
    fast.train()
    with accel.autocast(torch.device("cpu")):
        loss = torch.nn.functional.cross_entropy(fast(accel.layout(x, "cpu")).float(), torch.arange(8) % 10)
    loss.backward()
    grads = [p.grad for p in fast.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the checkpoint writer stores channels_last weights (safetensors wants contiguous tensors)
    assert all(t.is_contiguous() for t in ckpt.plain_state_dict(fast).values())


@pytest.mark.slow
def test_train_harden_and_audit_on_the_cuda_path(cuda_path, monkeypatch, tmp_path, digits, teachers):
    """The whole pipeline in bf16 autocast and channels_last: it learns as the fp32 CPU path does
    (the session's teachers), writes checkpoints that load and verify, and resumes."""
    from attacks import create_attack
    from attacks.base import run_students
    from nasty.runs import harden, train
    from nasty.trainer import TrainConfig

    normal = train(dataset="digits", out=tmp_path / "normal", epochs=6, quiet=True, device="cpu")
    assert normal["accuracy"] > 95, normal["accuracy"]
    # the default recipe against the fp32 normal teacher: as accurate and as far from it as the fp32 nasty one
    nasty = harden(teacher=teachers["root"] / "normal", out=tmp_path / "nasty", omega=0.05, quiet=True, device="cpu")
    fp32 = teachers["nasty"]
    assert abs(nasty["accuracy"] - fp32["accuracy"]) <= 1.0, (nasty["accuracy"], fp32["accuracy"])
    assert abs(nasty["kl_to_adversary"] - fp32["kl_to_adversary"]) <= 0.15 * fp32["kl_to_adversary"], \
        (nasty["kl_to_adversary"], fp32["kl_to_adversary"])
    model, card = ckpt.load_model(tmp_path / "nasty")
    # resuming a finished run: nothing retrained, the same weights file
    again = harden(teacher=teachers["root"] / "normal", out=tmp_path / "nasty", omega=0.05, quiet=True, device="cpu",
                   resume=True)
    assert again["sha256"] == card["sha256"] == ckpt.sha256_file(tmp_path / "nasty" / ckpt.WEIGHTS)

    # KD students of both teachers, sharing one teacher forward per batch: bf16 learns what fp32 learns
    pair = {"normal": ckpt.load_model(teachers["root"] / "normal")[0], "nasty": model}

    def students():
        return run_students(create_attack("kd"), pair, ["tiny-cnn", "mlp"], digits,
                            config=TrainConfig(epochs=3, batch_size=64, lr=0.05), device="cpu")

    bf16 = students()
    monkeypatch.undo()
    assert not accel.enabled("cpu")
    fp32 = students()
    assert all(abs(bf16[k] - fp32[k]) <= 3.0 for k in fp32), (bf16, fp32)  # 3 points: 13 of 450 test images
