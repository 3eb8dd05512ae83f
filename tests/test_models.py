import pytest
import torch

from nasty.errors import ModelError
from nasty.models import create_model, list_models

SMALL = {"small-cnn", "wide-cnn", "tiny-cnn", "mlp"}


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_model_exposes_features_and_logits(name):
    kw = {"cardinality": 2, "width": 4} if name == "resnext29" else {}
    in_chans, size = (1, 8) if name in SMALL else (3, 32)
    model = create_model(name, num_classes=7, in_chans=in_chans, **kw).eval()
    x = torch.randn(3, in_chans, size, size)
    with torch.no_grad():
        feats, logits = model.forward_features(x), model(x)
    assert feats.shape == (3, model.num_features) and logits.shape == (3, 7)
    assert torch.allclose(model.forward_head(feats), logits, atol=1e-5)


def test_small_nets_run_on_mnist_size_and_paper_nets_on_grey_input():
    assert create_model("small-cnn", num_classes=10, in_chans=1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert create_model("resnetc20", num_classes=10, in_chans=1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_published_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(create_model("resnet18", num_classes=10)) - 11.17e6) < 0.01e6
    assert abs(count(create_model("resnetc20", num_classes=10)) - 0.27e6) < 0.01e6
    assert abs(count(create_model("resnetc32", num_classes=10)) - 0.46e6) < 0.01e6


def test_torchvision_model_behind_the_contract():
    m = create_model("tv:resnet18", num_classes=5, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    assert m.forward_features(x).shape == (2, 512) and m(x).shape == (2, 5) and m.num_features == 512
    with pytest.raises(ModelError, match="tv:resnet9000"):
        create_model("tv:resnet9000", num_classes=5)


def test_timm_model_behind_the_contract():
    pytest.importorskip("timm")
    m = create_model("timm:resnet18", num_classes=5, in_chans=3).eval()
    x = torch.randn(2, 3, 32, 32)
    assert m.forward_features(x).shape == (2, m.num_features)
    assert torch.allclose(m.forward_head(m.forward_features(x)), m(x), atol=1e-5)
    # a released timm state dict (timm's own key names) loads into our wrapper
    from nasty.checkpoint import fit_state_dict

    fresh = create_model("timm:resnet18", num_classes=5).eval()
    fit_state_dict(fresh, m.body.state_dict(), arch="timm:resnet18")
    assert torch.allclose(fresh(x), m(x), atol=1e-5)


def test_unknown_model_lists_choices():
    with pytest.raises(ModelError, match="unknown architecture 'resnet1000'.*resnet18"):
        create_model("resnet1000", num_classes=10)


def test_register_model_makes_it_creatable():
    from nasty.models import _registry
    from nasty.models.small import TinyCNN

    @_registry.register_model("test-undocumented")
    def undocumented(*, num_classes, in_chans=1):
        return TinyCNN(num_classes=num_classes, in_chans=in_chans)

    try:
        assert list_models()["test-undocumented"] == ""
        assert create_model("test-undocumented", num_classes=4, in_chans=1)(torch.randn(1, 1, 8, 8)).shape == (1, 4)
        with pytest.raises(ValueError, match="registered twice"):
            _registry.register_model("test-undocumented")(undocumented)
    finally:
        del _registry._MODELS["test-undocumented"]
