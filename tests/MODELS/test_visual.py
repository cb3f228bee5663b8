"""The 224-pixel towers: BadEncoder's key layouts, sizes, attention pooling against torch's MHA, every
accepted file layout, the --model / --encoder_usage_info rules and the one-line mismatch errors."""
import pytest
import torch
import torch.nn.functional as F

from MODELS import build_model, load_encoder, save_checkpoint
from MODELS.checkpoint import file_family
from MODELS.clip import AttentionPool2d
from MODELS.names import resolve_model
from UTILS.errors import UserError
from tests.precision import calibrated as calibrate

SIDE = 224


def calibrated(name: str, seed: int = 0):
    """A random-weight tower with data-set BatchNorm statistics (tests/precision.py)."""
    torch.manual_seed(seed)
    return calibrate(build_model(name), SIDE)


@pytest.mark.parametrize("name, params, dim", [("imagenet_resnet50", 25_557_032, 2048), ("clip_rn50", 38_316_896, 1024)])
def test_full_size_towers_have_the_published_sizes_and_key_names(name, params, dim):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == params  # torchvision's resnet50 / CLIP RN50's visual
    assert model.feature_dim == dim
    keys = model.state_dict()
    assert all(k.startswith("visual.") for k in keys)
    if name == "clip_rn50":
        for key in ("visual.conv3.weight", "visual.bn3.running_var", "visual.layer1.0.downsample.0.weight",
                    "visual.layer4.2.conv3.weight", "visual.attnpool.q_proj.bias", "visual.attnpool.c_proj.weight"):
            assert key in keys
        assert keys["visual.attnpool.positional_embedding"].shape == (7 * 7 + 1, 2048)
        assert keys["visual.attnpool.c_proj.weight"].shape == (1024, 2048)
        assert keys["visual.conv1.weight"].shape == (32, 3, 3, 3)
    else:
        for key in ("visual.conv1.weight", "visual.layer1.0.downsample.1.running_mean", "visual.layer3.5.bn3.weight"):
            assert key in keys
        assert keys["visual.conv1.weight"].shape == (64, 3, 7, 7)
        assert keys["visual.fc.weight"].shape == (1000, 2048)
        assert keys["visual.layer2.0.conv2.weight"].shape == (128, 128, 3, 3)


@pytest.mark.parametrize("name", ["imagenet_tiny", "clip_tiny"])
def test_forward_gives_normalised_features_and_no_head(name):
    model = calibrated(name)
    x = torch.rand(3, 3, SIDE, SIDE)
    with torch.no_grad():
        feature, out = model(x)
        raw = model.f(x)
    assert feature.shape == (3, model.feature_dim) and torch.equal(feature, out)
    assert torch.allclose(feature, F.normalize(raw, dim=1))
    assert model.f is model.visual and not hasattr(model, "g")
    cos = feature @ feature.T
    assert cos[0, 1] < 0.9999  # calibrated: different images, different features


def test_attention_pool_equals_torch_multi_head_attention():
    torch.manual_seed(0)
    pool = AttentionPool2d(grid=7, embed_dim=64, heads=4, output_dim=32)
    for lin in (pool.q_proj, pool.k_proj, pool.v_proj):
        torch.nn.init.normal_(lin.bias)
    x = torch.randn(2, 64, 7, 7)
    # the reference: CLIP's formulation, the whole (hw+1)-token sequence through torch's MHA, row 0 kept
    seq = x.reshape(2, 64, 49).permute(2, 0, 1)
    seq = torch.cat([seq.mean(dim=0, keepdim=True), seq], dim=0) + pool.positional_embedding[:, None, :]
    ref, _ = F.multi_head_attention_forward(
        query=seq, key=seq, value=seq, embed_dim_to_check=64, num_heads=4, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    assert torch.allclose(pool(x), ref[0], atol=1e-5)


def _layouts(model):
    visual = model.state_dict()
    bare = model.visual.state_dict()
    return {
        "visual (backdoored file)": {"state_dict": visual, "epoch": 3},
        "bare (clean file)": {"state_dict": bare},
        "module.visual (DataParallel)": {"state_dict": {"module." + k: v for k, v in visual.items()}},
        "bare, no wrapper": dict(bare),
    }


@pytest.mark.parametrize("name", ["imagenet_tiny", "clip_tiny"])
@pytest.mark.parametrize("layout", ["visual (backdoored file)", "bare (clean file)", "module.visual (DataParallel)",
                                    "bare, no wrapper"])
def test_every_badencoder_layout_loads(tmp_path, name, layout):
    model = calibrated(name)
    path = tmp_path / "enc.pth"
    torch.save(_layouts(model)[layout], path)
    loaded = load_encoder(path, name, "cpu")
    x = torch.rand(2, 3, SIDE, SIDE)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_imagenet_file_without_its_unused_classifier_loads(tmp_path):
    model = calibrated("imagenet_tiny")
    state = {k: v for k, v in model.visual.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": state}, tmp_path / "no_fc.pth")
    loaded = load_encoder(tmp_path / "no_fc.pth", "imagenet_tiny", "cpu")
    x = torch.rand(2, 3, SIDE, SIDE)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_saved_checkpoint_keeps_visual_keys(tmp_path):
    path = save_checkpoint(tmp_path / "model_1.pth", build_model("clip_tiny"), epoch=1)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.startswith("visual.") for k in state) and file_family(state) == "clip"


@pytest.mark.parametrize("saved, wanted, found, expected", [
    ("tiny", "clip_tiny", "32-pixel SimCLR encoder", "--encoder_usage_info CLIP (--model clip_tiny) expects a CLIP RN50"),
    ("clip_tiny", "imagenet_tiny", "CLIP image tower", "--encoder_usage_info imagenet (--model imagenet_tiny)"),
    ("imagenet_tiny", "clip_tiny", "ImageNet ResNet", "--encoder_usage_info CLIP"),
    ("clip_tiny", "tiny", "CLIP image tower", "for this file pass --encoder_usage_info CLIP"),
    ("imagenet_tiny", "resnet18", "ImageNet ResNet", "for this file pass --encoder_usage_info imagenet"),
])
def test_a_file_of_another_family_fails_in_one_line(tmp_path, saved, wanted, found, expected):
    path = save_checkpoint(tmp_path / "enc.pth", build_model(saved), epoch=0)
    with pytest.raises(UserError) as err:
        load_encoder(path, wanted, "cpu", flag="--pretrained_encoder")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--pretrained_encoder {path}")
    assert found in message and expected in message


def test_same_family_other_size_names_the_missing_keys(tmp_path):
    path = save_checkpoint(tmp_path / "enc.pth", build_model("clip_tiny"), epoch=0)
    with pytest.raises(UserError, match=r"does not match --model clip_rn50: missing visual\.layer1\.1\."):
        load_encoder(path, "clip_rn50", "cpu")


@pytest.mark.parametrize("model, usage, expected", [
    ("resnet18", "imagenet", ("imagenet_resnet50", "imagenet")),
    ("resnet18", "CLIP", ("clip_rn50", "clip")),
    ("resnet18", "clip", ("clip_rn50", "clip")),
    ("clip_tiny", "CLIP", ("clip_tiny", "clip")),
    ("imagenet_resnet50", "imagenet", ("imagenet_resnet50", "imagenet")),
    ("resnet34", "cifar10", ("resnet34", "cifar10")),
    ("resnet18", "stl10", ("resnet18", "stl10")),
])
def test_usage_picks_the_architecture_as_the_original(model, usage, expected):
    assert resolve_model(model, usage) == expected


@pytest.mark.parametrize("model, usage, words", [
    ("resnet34", "CLIP", "--model resnet34 contradicts --encoder_usage_info CLIP"),
    ("imagenet_resnet50", "CLIP", "expected --model clip_rn50"),
    ("clip_rn50", "cifar10", "expected --encoder_usage_info CLIP"),
    ("imagenet_tiny", "stl10", "expected --encoder_usage_info imagenet"),
    ("resnet18", "clip2", "--encoder_usage_info clip2: unknown usage info; expected one of"),
    ("vit", "CLIP", "--model vit: unknown model"),
])
def test_contradictions_are_one_line(model, usage, words):
    with pytest.raises(UserError) as err:
        resolve_model(model, usage)
    assert words in str(err.value) and "\n" not in str(err.value)
