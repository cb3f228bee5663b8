"""Encoder-relative thresholds: the centred psim against a slow loop, the auto threshold's rule, one round's
preparation (float64 throughout, so every comparison is far above rounding)."""
import itertools

import pytest
import torch
from torch import nn

from DATASETS.stats import UsageInfo
from INVERSION.inversion import InversionConfig, chunk_similarity, psim_ceiling
from INVERSION.relative import AUTO_SHARE, CentredFeatures, feature_centre, prepare_round, relative_threshold

PLAIN = UsageInfo("plain", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 4)


class Flat(nn.Module):
    """Features = the flattened image plus one large shared offset: an anisotropic encoder (float64)."""

    def forward(self, x):
        flat = x.flatten(1)
        return flat + 5.0 * torch.ones_like(flat)


def slow_centred_psim(features, centre):
    z = [f / f.norm() - centre for f in features]
    cos = [float(a @ b / (a.norm() * b.norm())) for a, b in itertools.permutations(z, 2)]
    return sum(cos) / len(cos)


def test_relative_threshold_is_the_share_of_the_way_to_the_ceiling():
    assert relative_threshold(0.6, 1.0, 0.5) == pytest.approx(0.8)
    assert relative_threshold(0.89, 31 / 32) == pytest.approx(0.89 + AUTO_SHARE * (31 / 32 - 0.89))
    assert relative_threshold(0.99, 31 / 32) == 0.99  # at or past the ceiling: nothing left to demand


def test_centred_psim_equals_a_slow_loop_and_removes_the_shared_direction():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 4, 4, dtype=torch.float64)
    backbone = Flat()
    raw = chunk_similarity(backbone, images, PLAIN, None, "pairs")
    assert raw > 0.99  # the shared offset makes every pair of raw features agree
    centre = feature_centre(backbone, images, PLAIN)
    assert centre.dtype == torch.float64
    ours = chunk_similarity(CentredFeatures(backbone, centre), images, PLAIN, None, "pairs")
    feats = backbone(images)
    assert ours == pytest.approx(slow_centred_psim(feats, centre), rel=1e-9)
    assert abs(ours) < 0.3  # centred on their own mean, the shared direction is gone


def test_prepare_round_sets_the_auto_threshold_from_the_clean_psim():
    torch.manual_seed(0)
    images = torch.rand(40, 3, 4, 4, dtype=torch.float64)
    backbone = Flat()
    config = InversionConfig(psim="original", auto_share=AUTO_SHARE)
    same, ready = prepare_round(backbone, images, PLAIN, config)
    assert same is backbone and ready.auto_share == 0.0
    clean = chunk_similarity(backbone, images, PLAIN, None, "original")
    assert ready.threshold == pytest.approx(relative_threshold(clean, psim_ceiling("original", 32)), rel=1e-12)
    fixed = prepare_round(backbone, images, PLAIN, InversionConfig(threshold=0.9))[1]
    assert fixed.threshold == 0.9


def test_prepare_round_centres_on_the_attack_sets_mean_feature():
    torch.manual_seed(0)
    images = torch.rand(32, 3, 4, 4, dtype=torch.float64)
    backbone, config = prepare_round(Flat(), images, PLAIN, InversionConfig(psim="centred", auto_share=AUTO_SHARE))
    assert isinstance(backbone, CentredFeatures) and config.psim == "pairs"
    clean = chunk_similarity(backbone, images, PLAIN, None, "pairs")
    assert abs(clean) < 0.1  # one chunk of all 32 images, centred on its own mean
    assert config.threshold == pytest.approx(relative_threshold(clean, 1.0))
