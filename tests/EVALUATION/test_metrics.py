"""ACC/ASR percentages on hand-made examples, with and without target-class images."""
import math

import pytest
import torch

from EVALUATION import accuracy, attack_success_rate, backdoor_subset
from EVALUATION.metrics import asr_selection


def test_backdoor_subset():
    labels = torch.tensor([0, 1, 2, 1, 0])
    assert backdoor_subset(labels, 1).tolist() == [True, False, True, False, True]
    assert backdoor_subset(labels, 1, include_target=True).tolist() == [True] * 5


def test_accuracy():
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 50.0
    assert math.isnan(accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)))
    with pytest.raises(ValueError):
        accuracy(torch.tensor([1, 2]), torch.tensor([1]))


def test_attack_success_rate_excludes_target_images_by_default():
    # true:  0  1  1  2  2  3   (target 1 -> four non-target images: indices 0, 3, 4, 5)
    # pred:  1  1  1  1  0  3   -> hits among them: index 0 and 3 -> 2 of 4 = 50 %
    true = torch.tensor([0, 1, 1, 2, 2, 3])
    preds = torch.tensor([1, 1, 1, 1, 0, 3])
    assert attack_success_rate(preds, true, target=1) == 50.0
    # BadEncoder's convention counts all six: 4 of 6 predicted as the target.
    assert attack_success_rate(preds, true, target=1, include_target=True) == pytest.approx(400 / 6)


def test_attack_success_rate_only_target_images():
    assert math.isnan(attack_success_rate(torch.tensor([3, 3]), torch.tensor([3, 3]), target=3))
    assert attack_success_rate(torch.tensor([3, 0]), torch.tensor([3, 3]), target=3, include_target=True) == 50.0


def test_asr_selection_by_mode():
    labels = torch.tensor([0, 1, 2, 1])
    keep, want = asr_selection(labels, 1)
    assert keep.tolist() == [True, False, True, False] and want.tolist() == [1, 1, 1, 1]
    keep, want = asr_selection(labels, 1, include_target=True)
    assert keep.tolist() == [True] * 4 and want.tolist() == [1, 1, 1, 1]
    keep, want = asr_selection(labels, 1, mode="targeted")  # each stamped image must keep its own label
    assert keep.tolist() == [True] * 4 and want.tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError):
        asr_selection(labels, 1, mode="other")


def _auroc_by_pairs(positive, negative):
    """The definition: the share of (positive, negative) pairs the score orders rightly, ties a half."""
    total = 0.0
    for p in positive:
        for n in negative:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(positive) * len(negative))


def test_auroc_matches_the_pair_count():
    from EVALUATION.metrics import auroc

    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        pos = torch.randint(0, 6, (7,), generator=g).tolist()  # small integers: many ties
        neg = torch.randint(0, 6, (5,), generator=g).tolist()
        assert auroc(pos, neg) == pytest.approx(_auroc_by_pairs(pos, neg))
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auroc([1.0], [1.0]) == 0.5
    assert math.isnan(auroc([], [1.0]))
