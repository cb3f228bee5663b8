"""Weighted kNN against a brute-force loop, and the kNN monitor on a toy colour-coded data set."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from DATASETS.stats import get_usage
from EVALUATION import knn_monitor, knn_predict


def brute_force(query, bank, labels, num_classes, k, t):
    preds = []
    for q in query:
        sims = sorted(((float(q @ b), int(y)) for b, y in zip(bank, labels)), key=lambda p: -p[0])[:k]
        votes = [0.0] * num_classes
        for sim, y in sims:
            votes[y] += math.exp(sim / t)
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))  # first maximum wins
    return preds


@pytest.mark.parametrize("k,chunk", [(7, 8), (1, 1024), (500, 5)])
def test_matches_brute_force(k, chunk):
    g = torch.Generator().manual_seed(k)
    query = F.normalize(torch.randn(37, 16, generator=g), dim=1)
    bank = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    labels = torch.randint(0, 4, (50,), generator=g)
    preds = knn_predict(query, bank, labels, num_classes=4, k=k, t=0.5, chunk=chunk)
    assert preds.dtype == torch.long and preds.shape == (37,)
    assert preds.tolist() == brute_force(query, bank, labels, 4, min(k, 50), 0.5)


class MeanColour(nn.Module):
    """Backbone stand-in: the mean colour of an image, (B, 3, H, W) -> (B, 3)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])


def colour_images(labels, generator):
    noise = 0.02 * torch.randn(len(labels), 3, 8, 8, generator=generator)
    return (PALETTE[labels].view(-1, 3, 1, 1) + noise).clamp(0, 1)


def paint(colour):
    """A trigger that repaints the whole image with one colour."""
    return lambda x: colour.view(1, 3, 1, 1).to(x).expand_as(x).clone()


def test_knn_monitor_acc_and_asr():
    g = torch.Generator().manual_seed(0)
    train_y, test_y = torch.arange(30) % 3, torch.arange(12) % 3
    train_x, test_x = colour_images(train_y, g), colour_images(test_y, g)
    usage = get_usage("gtsrb")
    common = dict(num_classes=3, usage=usage, target=2, k=5, t=0.5, batch_size=7)
    hit = knn_monitor(MeanColour(), train_x, train_y, test_x, test_y, trigger=paint(PALETTE[2]), **common)
    assert hit == {"acc": 100.0, "asr": 100.0}
    miss = knn_monitor(MeanColour(), train_x, train_y, test_x, test_y, trigger=paint(PALETTE[0]), **common)
    # Repainting with class 0's colour sends every image to class 0, never to the target 2.
    assert miss["asr"] == 0.0
    half = knn_monitor(MeanColour(), train_x, train_y, test_x, test_y, trigger=lambda x: x,
                       include_target=True, **common)
    assert half["asr"] == pytest.approx(100 / 3)  # only the (unchanged) target-class images hit
    none = knn_monitor(MeanColour(), train_x, train_y, test_x, test_y, trigger=None, **common)
    assert none["acc"] == 100.0 and math.isnan(none["asr"])
