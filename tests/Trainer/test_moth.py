"""The moth run's own duties beyond the early stop: one-time warnings about the threshold."""
import torch

from DATASETS.stats import get_usage
from DATASETS.tensors import TensorSet
from INVERSION.inversion import InversionConfig
from MODELS.simclr import build_model
from Trainer.common import seed_offset
from Trainer.moth import IterativeInversion, MothSettings


def flow(tmp_path, threshold=0.9):
    torch.manual_seed(0)
    data = TensorSet(torch.rand(8, 3, 32, 32), torch.zeros(8, dtype=torch.long), 10)
    settings = MothSettings(epochs=1, batch_size=4, attack_size=4, harden_lr=1e-3,
                            inversion=InversionConfig(threshold=threshold), patience=2, epsilon=0.0, monitor_every=0)
    return IterativeInversion(build_model("tiny"), data, get_usage("cifar10"), settings, tmp_path, tmp_path)


def test_threshold_warnings_come_once_each_with_the_measured_value(tmp_path, capsys):
    f = flow(tmp_path)
    f.steps.check_threshold(clean_psim=0.95, gt_psim=0.5, warned=f.state.warned)
    err = capsys.readouterr().err
    assert "clean images' own psim is already 0.9500 >= --similarity_threshold 0.9" in err
    assert "raise --similarity_threshold above 0.950" in err
    assert "reach only psim 0.5000 < --similarity_threshold 0.9" in err
    f.steps.check_threshold(clean_psim=0.97, gt_psim=0.4, warned=f.state.warned)
    assert capsys.readouterr().err == ""


def test_no_warning_when_the_threshold_separates_clean_from_stamped(tmp_path, capsys):
    f = flow(tmp_path)
    f.steps.check_threshold(clean_psim=0.3, gt_psim=0.95, warned=f.state.warned)
    # no ground truth: nothing to say
    f.steps.check_threshold(clean_psim=0.3, gt_psim=float("nan"), warned=f.state.warned)
    assert capsys.readouterr().err == ""


def test_seed_zero_keeps_the_papers_counters_and_other_seeds_move_them():
    assert seed_offset(0) == 0
    assert seed_offset(1) != seed_offset(2) and seed_offset(1) > 10**5
