"""SimCLR encoder: BadEncoder key names, output shapes, normalised outputs, seeded construction."""
import pytest
import torch
from torch import nn

from MODELS import MODEL_NAMES, build_model
from MODELS.names import SIMCLR_NAMES
from UTILS.errors import UserError

FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet18_small": 128, "tiny": 64}


def test_resnet18_keys_match_badencoder_layout():
    model = build_model("resnet18")
    keys = list(model.state_dict())
    assert keys[0] == "f.f.0.weight"
    for key in ["f.f.1.running_mean", "f.f.3.0.conv1.weight", "f.f.3.1.bn2.bias",
                "f.f.4.0.downsample.0.weight", "f.f.4.0.downsample.1.running_var",
                "f.f.6.1.conv2.weight", "g.0.weight", "g.1.running_mean", "g.3.weight", "g.3.bias"]:
        assert key in keys, key
    assert "g.0.bias" not in keys  # the first head Linear has no bias
    assert not any(k.startswith(("f.f.2.", "f.f.7.", "f.f.8")) for k in keys)  # relu, avgpool: no state
    assert [type(m) for m in model.f.f] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Sequential, nn.Sequential,
                                           nn.Sequential, nn.Sequential, nn.AdaptiveAvgPool2d]
    conv1 = model.f.f[0]
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride, conv1.padding) == \
        (3, 64, (3, 3), (1, 1), (1, 1)) and conv1.bias is None
    assert [type(m) for m in model.g] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert model.g[0].weight.shape == (512, 512) and model.g[3].weight.shape == (128, 512)


@pytest.mark.parametrize("name", ["resnet18_small", "tiny"])
def test_small_models_follow_the_same_key_pattern(name):
    keys = set(build_model(name).state_dict())
    for key in ["f.f.0.weight", "f.f.1.running_mean", "f.f.3.0.conv1.weight", "f.f.3.0.bn2.weight",
                "f.f.4.0.downsample.0.weight", "f.f.4.0.downsample.1.bias", "f.f.6.0.conv2.weight",
                "g.0.weight", "g.1.running_var", "g.3.bias"]:
        assert key in keys, key


@pytest.mark.parametrize("name", SIMCLR_NAMES)  # the 224-pixel towers: tests/MODELS/test_visual.py
def test_output_shapes_and_normalisation(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    assert model.feature_dim == FEATURE_DIM[name]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feature, out = model(x)
        raw = model.f(x)
    assert feature.shape == (2, FEATURE_DIM[name]) and out.shape == (2, 128)
    assert raw.shape == (2, FEATURE_DIM[name])
    torch.testing.assert_close(feature.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(feature, torch.nn.functional.normalize(raw, dim=-1))


def test_train_mode_forward_and_backward():
    model = build_model("tiny").train()
    _, out = model(torch.rand(4, 3, 32, 32))
    out.sum().backward()
    assert model.f.f[0].weight.grad is not None


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = build_model("tiny").state_dict()
    torch.manual_seed(3)
    b = build_model("tiny").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_model_lists_names():
    with pytest.raises(UserError) as err:
        build_model("vgg16", flag="--model")
    message = str(err.value)
    assert "--model vgg16" in message and all(n in message for n in MODEL_NAMES)
