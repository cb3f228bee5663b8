"""extract_features: matches a manual loop, applies the trigger before normalising, restores the mode."""
import pytest
import torch
import torch.nn.functional as F

from DATASETS.stats import get_usage, normalize
from EVALUATION import extract_features
from MODELS import build_model


def corner_trigger(x: torch.Tensor) -> torch.Tensor:
    """White 4x4 square in the bottom-right corner, on (B, 3, H, W) images in [0, 1]."""
    x = x.clone()
    x[:, :, -4:, -4:] = 1.0
    return x


@pytest.mark.parametrize("trigger", [None, corner_trigger])
def test_matches_manual_loop_and_restores_train_mode(trigger):
    torch.manual_seed(0)
    model = build_model("tiny")
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))  # non-default running stats: eval vs train mode differ
    usage = get_usage("cifar10")
    images = torch.rand(10, 3, 32, 32)
    feats = extract_features(model.f, images, usage, trigger=trigger, batch_size=3)
    assert model.f.training and all(m.training for m in model.f.modules())
    model.f.eval()
    with torch.no_grad():
        x = images if trigger is None else trigger(images)
        expected = F.normalize(model.f(normalize(x, usage)), dim=1)
    assert feats.shape == (10, 64)
    torch.testing.assert_close(feats, expected)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))


def test_eval_mode_stays_eval_and_no_grad():
    model = build_model("tiny").eval()
    feats = extract_features(model.f, torch.rand(4, 3, 32, 32), get_usage("gtsrb"))
    assert not model.f.training and not feats.requires_grad


def test_trigger_changes_features():
    torch.manual_seed(1)
    backbone = build_model("tiny").f
    images = torch.rand(6, 3, 32, 32)
    usage = get_usage("cifar10")
    clean = extract_features(backbone, images, usage)
    stamped = extract_features(backbone, images, usage, trigger=corner_trigger)
    assert not torch.allclose(clean, stamped)


def test_rejects_uint8_images():
    with pytest.raises(TypeError):
        extract_features(build_model("tiny").f, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), get_usage("cifar10"))


def test_feature_problem_names_what_makes_an_encoder_unjudgeable():
    import torch as t

    from EVALUATION.features import feature_problem

    gen = t.Generator().manual_seed(0)
    good = t.rand(8, 16, generator=gen, dtype=t.float64)
    assert feature_problem(good) is None
    assert "same feature direction" in feature_problem(t.ones(8, 16) * 3.0)
    near = t.ones(8, 16, dtype=t.float64) + 0.005 * t.rand(8, 16, generator=gen, dtype=t.float64)
    assert "nearly the same feature direction" in feature_problem(near)  # all within cosine ~0.99999
    assert "same feature direction" in feature_problem(good[:1].repeat(8, 1) * t.arange(1, 9.0)[:, None])
    assert "zero" in feature_problem(t.zeros(8, 16))
    assert "not finite" in feature_problem(t.cat([good[:7], t.full((1, 16), float("nan"))]))
    assert "1.0e+23" in feature_problem(good * 1e23)
