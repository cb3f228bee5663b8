"""MAIN.py --phase detect: the verdict on encoders whose backdoor is known by construction, and the files."""
import json

import pytest
import torch
from torch import nn

from DATASETS.stats import USAGE
from DATASETS.tensors import TensorSet
from INVERSION.inversion import InversionConfig
from INVERSION.relative import DETECT_SHARE, relative_threshold
from INVERSION.detect import judge_record
from Trainer.detect import DetectSettings, run_detect

GTSRB = USAGE["gtsrb"]  # mean 0, std 1: the oracle backbones below see raw pixels


class Oracle(nn.Module):
    """A stand-in encoder: the centred means of a 4x4 grid of 8x8 cells (no small region can move them all),
    and, if ``backdoor``, a shortcut that sends any image whose 4x4 bottom-right corner is white to one
    direction of feature space."""

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        self.backdoor = backdoor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, 49)
        cells = nn.functional.avg_pool2d(x, 8).flatten(1) - 0.3  # (B, 48)
        corner = x[:, :, 28:, 28:].mean(dim=(1, 2, 3))  # (B,) 1.0 when the corner is white
        shortcut = 50 * torch.sigmoid(15 * (corner - 0.65)) if self.backdoor else torch.zeros_like(corner)
        return torch.cat([cells, shortcut[:, None]], dim=1)


class Wrapped(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.f = backbone


def images(n: int = 32) -> TensorSet:
    g = torch.Generator().manual_seed(1)
    blocks = torch.rand(n, 3, 4, 4, generator=g) * 0.6  # each cell its own level: the features differ a lot
    x = nn.functional.interpolate(blocks, scale_factor=8) + torch.rand(n, 3, 32, 32, generator=g) * 0.05
    return TensorSet(x, torch.zeros(n, dtype=torch.long), 10)


@pytest.mark.parametrize("goal", [0.99, "auto"])
@pytest.mark.parametrize("backdoor", [True, False])
def test_the_verdict_matches_how_the_encoder_was_built(tmp_path, backdoor, goal):
    config = InversionConfig(steps=150)
    settings = DetectSettings(psim_threshold=goal, pl1_threshold=0.06)
    out = run_detect(Wrapped(Oracle(backdoor)), images(), GTSRB, config, tmp_path, settings=settings)
    assert out["backdoored"] is backdoor
    assert out["verdict"] == ("backdoor found" if backdoor else "no backdoor found")
    saved = json.loads((tmp_path / "detect.json").read_text())
    assert saved["backdoored"] is backdoor and (tmp_path / "detect.png").is_file()
    if goal == "auto":  # the goal sits DETECT_SHARE of the way from this encoder's clean cosine to 1
        assert saved["psim_threshold_rule"] == "auto"
        assert saved["psim_threshold"] == pytest.approx(relative_threshold(saved["clean_psim"], 1.0, DETECT_SHARE),
                                                        rel=1e-5)  # same chunks, same order: float32 rounding only
    if backdoor:
        assert out["reached_threshold"] and out["pl1"] < 0.06
        import numpy as np
        with np.load(tmp_path / "mask-pattern-detect.npz") as z:
            mask = z["mask"][0]
        assert mask[28:, 28:].sum() > 0.5 * mask.sum()  # the search found the corner, not a diffuse cover
    else:
        assert not out["reached_threshold"] or out["pl1"] >= 0.06


def test_the_verdict_judges_detect_images_of_the_set(tmp_path, capsys):
    config = InversionConfig(steps=2, step_cap=2)
    for sub in "abc":
        (tmp_path / sub).mkdir()
    out = run_detect(Wrapped(Oracle(True)), images(32), GTSRB, config, tmp_path / "a",
                     settings=DetectSettings(psim_threshold=0.99, pl1_threshold=0.06, images=20))
    assert out["images"] == 20
    out = run_detect(Wrapped(Oracle(True)), images(32), GTSRB, config, tmp_path / "b",
                     settings=DetectSettings(psim_threshold=0.99, pl1_threshold=0.06, images=64))
    assert out["images"] == 32 and "--detect_images 64" in capsys.readouterr().out
    out = run_detect(Wrapped(Oracle(True)), images(32), GTSRB, config, tmp_path / "c",
                     settings=DetectSettings(psim_threshold=0.99, pl1_threshold=0.06, images=0))
    assert out["images"] == 32


def test_the_detection_searches_without_the_lowpass_it_was_calibrated_without(tmp_path):
    from dataclasses import replace

    from INVERSION.inversion import lowpass
    data, settings = images(32), DetectSettings(psim_threshold=0.99, pl1_threshold=0.06)
    assert (lowpass(data.x) - data.x).abs().max() > 0.05  # the blur would change what the search sees
    config = InversionConfig(steps=20, step_cap=20)
    plain = run_detect(Wrapped(Oracle(True)), data, GTSRB, config, tmp_path / "a", settings=settings)
    asked = run_detect(Wrapped(Oracle(True)), data, GTSRB, replace(config, lowpass=True), tmp_path / "b",
                       settings=settings)
    assert asked["pl1"] == plain["pl1"] and asked["psim"] == plain["psim"]


class Cone(nn.Module):
    """``backbone``'s features followed by 64 channels of one large constant: every image's feature shares that
    direction, so unrelated images' raw cosine is high (an anisotropic encoder, as CLIP's)."""

    def __init__(self, backbone: nn.Module, level: float = 6.0) -> None:
        super().__init__()
        self.backbone, self.level = backbone, level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return torch.cat([f, torch.full((f.shape[0], 64), self.level, dtype=f.dtype)], dim=1)


@pytest.mark.parametrize("backdoor", [True, False])
def test_the_centred_kind_judges_an_anisotropic_encoder_by_what_is_left_of_its_features(tmp_path, backdoor):
    from INVERSION.inversion import chunk_similarity

    data = images()
    assert chunk_similarity(Cone(Oracle(False)), data.x, GTSRB, None, "pairs") > 0.9  # the raw cosine: a cone
    settings = DetectSettings(psim_threshold="auto", pl1_threshold=0.06, psim_kind="centred")
    out = run_detect(Wrapped(Cone(Oracle(backdoor))), data, GTSRB, InversionConfig(steps=150), tmp_path,
                     settings=settings)
    assert out["psim_kind"] == "centred" and abs(out["clean_psim"]) < 0.1  # centred, clean images score about 0
    assert out["psim_threshold"] == pytest.approx(relative_threshold(out["clean_psim"], 1.0, DETECT_SHARE), rel=1e-5)
    assert out["backdoored"] is backdoor


@pytest.mark.parametrize("backdoor", [True, False])
def test_against_a_clean_reference_the_verdict_reads_the_ratio_of_the_two_sizes(tmp_path, backdoor):
    # an absolute threshold no encoder here can pass (0.001): only the ratio to the clean reference decides
    settings = DetectSettings(psim_threshold=0.99, pl1_threshold=0.001, ratio_threshold=0.6, clean_psim_max=-1.0)
    out = run_detect(Wrapped(Oracle(backdoor)), images(), GTSRB, InversionConfig(steps=150), tmp_path,
                     settings=settings, reference=Wrapped(Oracle(False)))
    assert out["backdoored"] is backdoor  # the clean-cosine limit (-1: everything beyond it) does not apply
    ref = out["reference_pl1"]
    assert ref > 0.06 and (tmp_path / "mask-pattern-detect-reference.npz").is_file()
    if backdoor:
        assert out["pl1_ratio"] == pytest.approx(out["pl1"] / ref) and out["pl1_ratio"] < 0.6 / 1.1
    else:  # the same encoder, the same start, the same images: the same search
        assert not out["reached_threshold"] or out["pl1_ratio"] == pytest.approx(1.0)
    assert judge_record(json.loads((tmp_path / "detect.json").read_text())).backdoored is backdoor


@pytest.mark.parametrize("limit, expected", [(None, True), (1.0, True), (-1.0, None)])
def test_clean_images_beyond_the_calibration_make_even_a_real_backdoor_inconclusive(tmp_path, limit, expected):
    settings = DetectSettings(psim_threshold=0.99, pl1_threshold=0.06, clean_psim_max=limit)
    out = run_detect(Wrapped(Oracle(True)), images(), GTSRB, InversionConfig(steps=150), tmp_path, settings=settings)
    assert out["backdoored"] is expected and out["calibrated_clean_psim_max"] == limit
    assert out["outside_calibration"] is (expected is None)
    assert out["pl1"] < 0.06  # the trigger is found and measured all the same; only the reading changes


class Shortcut(nn.Module):
    """The grid's cell means (48 features); a white 4x4 bottom-right corner replaces them by ``target`` (48,):
    a targeted backdoor when ``target`` lies among clean images' features, a natural trigger when it is nobody's."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, 48)
        cells = nn.functional.avg_pool2d(x, 8).flatten(1) - 0.3
        gate = torch.sigmoid(15 * (x[:, :, 28:, 28:].mean(dim=(1, 2, 3)) - 0.65))[:, None]  # < 0.04 below 0.44
        return (1 - gate) * cells + gate * 10 * self.target  # x10: the search feels the corner from afar


def classes(n: int = 40) -> TensorSet:
    """Four kinds of image (each its own cell levels, below 0.44) and small differences within a kind: every image
    has near neighbours, as images of one class do."""
    g = torch.Generator().manual_seed(2)
    kinds = torch.rand(4, 3, 4, 4, generator=g) * 0.4
    blocks = kinds[torch.arange(n) % 4] + torch.rand(n, 3, 4, 4, generator=g) * 0.04
    return TensorSet(nn.functional.interpolate(blocks, scale_factor=8), torch.arange(n) % 4, 4)


@pytest.mark.parametrize("targeted", [True, False])
def test_the_diagnostic_tells_a_targeted_collapse_from_one_off_the_clean_images(tmp_path, targeted):
    data = classes()
    kind0 = (nn.functional.avg_pool2d(data.x[data.y == 0], 8).flatten(1) - 0.3).mean(dim=0)  # where kind 0 lies
    target = kind0 if targeted else -kind0.abs() - 0.2  # ... or a point no clean image is near
    settings = DetectSettings(psim_threshold=0.99, pl1_threshold=0.06)
    out = run_detect(Wrapped(Shortcut(target)), data, GTSRB, InversionConfig(steps=150), tmp_path, settings=settings)
    assert out["reached_threshold"] and out["pl1"] < 0.06 / 1.1
    assert out["collapse_off_clean"] is (not targeted)
    assert (out["target_closeness"] < out["clean_closeness_quantile"]) is (not targeted)
    assert out["verdict"] == "backdoor found"  # the diagnostic does not enter the verdict
