"""Per-dataset normalisation statistics and input sizes (``--encoder_usage_info``), without torch, so the
command line is checked before the slow imports; ``DATASETS.stats.normalize`` applies them."""
from __future__ import annotations

from dataclasses import dataclass

from UTILS.errors import fail


@dataclass(frozen=True)
class UsageInfo:
    """What ``--encoder_usage_info`` selects: input statistics and image size of an encoder."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int


USAGE: dict[str, UsageInfo] = {
    "cifar10": UsageInfo("cifar10", (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), 32),
    "stl10": UsageInfo("stl10", (0.44087798, 0.42790666, 0.38678814),
                       (0.25507198, 0.24801506, 0.25641308), 32),
    "svhn": UsageInfo("svhn", (0.43768210, 0.44376970, 0.47280442),
                      (0.19803012, 0.20101562, 0.19703614), 32),
    "gtsrb": UsageInfo("gtsrb", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 32),
    "imagenet": UsageInfo("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224),
    # Per-channel pixel mean/std of the generated `synthetic` train split (10,000 images,
    # GENERATOR_VERSION 2), measured once; constants so normalisation never reads a data file.
    "synthetic": UsageInfo("synthetic", (0.4128, 0.4162, 0.4162), (0.2285, 0.2549, 0.2234), 32),
}


def get_usage(name: str, flag: str = "--encoder_usage_info") -> UsageInfo:
    """Look up a usage key; unknown keys fail with the list of known ones."""
    key = str(name).strip().lower()
    if key not in USAGE:
        fail(f"{flag} {name}: unknown usage info; expected one of {', '.join(USAGE)}")
    return USAGE[key]
