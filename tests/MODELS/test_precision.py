"""--amp: bf16 autocast + channels_last around the encoder, float32 everywhere else."""
import copy
from types import SimpleNamespace

import pytest
import torch

from DATASETS.stats import get_usage
from DATASETS.triggers import InvertedTrigger
from EVALUATION.features import extract_features
import numpy as np

from INVERSION.inversion import InversionConfig, chunk_similarity, invert_trigger, random_start
from MODELS.precision import Autocast, amp_supported, unwrap, with_precision
from MODELS.simclr import build_model

USAGE = get_usage("cifar10")


def test_amp_off_is_the_module_itself():
    model = build_model("tiny")
    assert with_precision(model.f, False) is model.f
    assert unwrap(model.f) is model.f


def test_amp_keeps_parameters_values_and_checkpoint_keys():
    torch.manual_seed(0)
    model = build_model("tiny")
    before = copy.deepcopy(model.state_dict())
    params = list(model.f.parameters())
    wrapped = with_precision(model.f, True)
    assert isinstance(wrapped, Autocast) and unwrap(wrapped) is model.f
    assert with_precision(wrapped, True) is wrapped  # no double wrapping
    assert list(model.f.parameters()) == params  # same Parameter objects: optimisers keep working
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    conv = next(p for p in model.f.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_backbone_output_is_float32_and_close_to_exact():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x = torch.rand(8, 3, 32, 32)
    exact = model.f(x)
    fast = with_precision(copy.deepcopy(model).f, True)(x)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    rel = (fast - exact).norm() / exact.norm()
    assert 0 < rel < 0.05  # bf16 keeps ~3 significant digits; 0 would mean autocast did nothing


def test_simclr_outputs_and_input_gradients_are_float32():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    x = torch.rand(6, 3, 32, 32, requires_grad=True)
    feature, z = with_precision(model, True)(x)
    assert feature.dtype == z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=1), torch.ones(6), atol=1e-5)  # head and normalisation ran in float32
    z.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_cpu_is_supported_and_an_old_gpu_is_refused_with_its_name(monkeypatch):
    assert amp_supported(torch.device("cpu")) == (True, "")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    for major, ok in ((7, False), (8, True), (9, True)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, m=major: SimpleNamespace(major=m))
        supported, why = amp_supported(torch.device("cuda:0"))
        assert supported == ok
        assert ok or why == "Tesla V100 (compute capability 7.x) has no native bfloat16; it needs 8.0 (Ampere) or newer"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inverted_trigger_stays_within_the_stated_tolerance(seed):
    """docs/PERFORMANCE.md's tolerance for one inversion round from the same start: L1 within 5 % and psim
    (re-measured in float32) within 0.01 of the float32 round; and as applied to images, the --amp
    trigger is closer to the float32 one than a float32 trigger from another random start is."""
    torch.manual_seed(100 + seed)
    model = build_model("tiny").eval()
    images = torch.rand(32, 3, 32, 32)
    # the threshold is out of reach, so all 10 steps move the trigger (a best found at step 0 would
    # be the random start itself and compare nothing)
    config = InversionConfig(steps=10, step_cap=10, lr=0.5, threshold=0.9999, init_cost=1e-3)
    triggers = []
    for amp, start in ((False, seed), (True, seed), (False, seed + 100)):
        backbone = with_precision(copy.deepcopy(model).f, amp)
        r = invert_trigger(backbone, images, USAGE, config, random_start(32, np.random.RandomState(start)))
        triggers.append(InvertedTrigger(r.mask, r.pattern))
    exact, fast, other = triggers
    psim = [chunk_similarity(model.f, images, USAGE, t) for t in (exact, fast)]
    assert abs(fast.l1 - exact.l1) <= 0.05 * exact.l1
    assert abs(psim[1] - psim[0]) <= 0.01
    applied = lambda a, b: (a(images) - b(images)).abs().mean().item()  # noqa: E731
    assert 0 < applied(exact, fast) <= 0.5 * applied(exact, other)


def test_the_view_reports_and_keeps_the_encoder_mode():
    model = build_model("tiny")
    model.f.eval()
    view = with_precision(model.f, True)
    assert not view.training  # helpers save this flag and restore it onto the encoder afterwards
    extract_features(view, torch.rand(4, 3, 32, 32), USAGE)
    assert not any(m.training for m in model.f.modules())
    view.train()
    assert view.training and all(m.training for m in model.f.modules())
    view.eval()
    assert not view.training and not any(m.training for m in model.f.modules())


def test_amp_on_a_cpu_without_native_bf16_warns(monkeypatch, capsys):
    import MODELS.precision as precision
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.check_amp(True, torch.device("cpu"))
    err = capsys.readouterr().err
    assert err.startswith("warning: --amp: this CPU has no native bfloat16") and err.count("\n") == 1
    assert not precision.check_amp(False, torch.device("cpu"))
