import json
import os

import pytest
import torch

from nasty import checkpoint as ckpt
from nasty.errors import CheckpointError, ModelError
from nasty.models import create_model


def _model(arch="tiny-cnn", **kw):
    torch.manual_seed(0)
    return create_model(arch, num_classes=10, in_chans=1, **kw)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_release_roundtrip_with_card_and_sha(tmp_path):
    m = _model()
    card = ckpt.save_release(tmp_path, m, {"arch": "tiny-cnn", "num_classes": 10, "input_shape": [1, 8, 8]})
    assert card["sha256"] == ckpt.sha256_file(tmp_path / "model.safetensors")
    assert json.loads((tmp_path / "card.json").read_text())["sha256"] == card["sha256"]
    loaded, got = ckpt.load_model(tmp_path)
    assert _same(m, loaded) and not loaded.training and got["arch"] == "tiny-cnn"
    # the safetensors file alone carries arch and class count in its metadata
    alone = tmp_path / "copy.safetensors"
    alone.write_bytes((tmp_path / "model.safetensors").read_bytes())
    assert _same(m, ckpt.load_model(alone)[0])
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # no temporary files left behind


def test_modified_weights_do_not_match_the_card(tmp_path):
    ckpt.save_release(tmp_path, _model(), {"arch": "tiny-cnn", "num_classes": 10, "input_shape": [1, 8, 8]})
    ckpt.save_release(tmp_path / "other", _model("mlp"), {"arch": "mlp", "num_classes": 10})
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        ckpt.load_model(tmp_path)


def test_plain_state_dict_needs_weights_only_and_arch(tmp_path):
    m = _model()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, path)  # DDP-style keys
    with pytest.raises(ModelError, match="pass `arch`"):
        ckpt.load_model(path)
    loaded, _ = ckpt.load_model(path, arch="tiny-cnn", num_classes=10, in_chans=1)
    assert _same(m, loaded)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating the file proves the payload ran


def test_pickle_payload_refused_unless_unsafe(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _model().state_dict(), "extra": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="`unsafe_pickle`"):
        ckpt.load_model(path, arch="tiny-cnn", num_classes=10, in_chans=1)
    assert not marker.exists()
    ckpt.load_model(path, arch="tiny-cnn", num_classes=10, in_chans=1, unsafe_pickle=True)
    assert marker.exists()  # with the flag, the user accepted to run it


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, (10**12).to_bytes(8, "little") + b"{}"])
def test_broken_safetensors_give_one_line_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as e:
        ckpt.load_model(path, arch="tiny-cnn")
    assert "\n" not in str(e.value)


def test_truncated_safetensors(tmp_path):
    ckpt.save_release(tmp_path, _model(), {"arch": "tiny-cnn", "num_classes": 10})
    data = (tmp_path / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        ckpt.load_model(cut)


def test_weights_for_another_arch_name_the_mismatch(tmp_path):
    ckpt.save_release(tmp_path, _model(), {"num_classes": 10})  # no arch recorded
    with pytest.raises(ModelError) as e:
        ckpt.load_model(tmp_path / "model.safetensors", arch="mlp", num_classes=10, in_chans=1)
    msg = str(e.value)
    assert "the architecture mlp" in msg and "missing" in msg and "unexpected" in msg and "\n" not in msg
    torch.save(_model().state_dict(), tmp_path / "plain.pt")  # nothing recorded: only the shapes can tell
    with pytest.raises(ModelError, match="2 of another shape.*head.weight"):
        ckpt.load_model(tmp_path / "plain.pt", arch="tiny-cnn", num_classes=3, in_chans=1)


def test_recorded_class_count_must_match_dataset(tmp_path):
    ckpt.save_release(tmp_path, _model(), {"arch": "tiny-cnn", "num_classes": 10, "input_shape": [1, 8, 8]})
    with pytest.raises(ModelError, match="10 classes but the dataset has 100"):
        ckpt.load_model(tmp_path, num_classes=100)
    with pytest.raises(ModelError, match="1-channel input but the dataset has 3"):
        ckpt.load_model(tmp_path, in_chans=3)


def test_torchvision_state_dict_with_original_key_names(tmp_path):
    import torchvision

    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10)
    torch.save(plain.state_dict(), tmp_path / "released.pth")
    ours, _ = ckpt.load_model(tmp_path / "released.pth", arch="tv:resnet18", num_classes=10, in_chans=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), ours(x), atol=1e-5)


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "card.json"
    ckpt.write_json(target, {"v": 1})

    def boom(p):
        open(p, "w").write("{half")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left"):
        ckpt.atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]
