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
    # The original RECEIVE's util.py statistics for 'imagenet' (BadEncoder itself feeds its ImageNet
    # encoder raw [0, 1] pixels: docs/DIFFERENCES.md).
    "imagenet": UsageInfo("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224),
    # OpenAI CLIP's statistics, as BadEncoder's CLIP transforms apply them (the original RECEIVE has no
    # 'CLIP' entry: its lookup fails). The flag value is 'CLIP', as in both originals; any case works.
    "clip": UsageInfo("clip", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), 224),
    # Per-channel pixel mean/std of the generated `synthetic` train split (10,000 images,
    # GENERATOR_VERSION 2), measured once; constants so normalisation never reads a data file.
    "synthetic": UsageInfo("synthetic", (0.4128, 0.4162, 0.4162), (0.2285, 0.2549, 0.2234), 32),
}
# The names as the flag is usually written (the originals spell CLIP in capitals).
USAGE_NAMES = tuple("CLIP" if k == "clip" else k for k in USAGE)


def usage_key(name: str, flag: str = "--encoder_usage_info") -> str:
    """The canonical (lower-case) key of a usage name ('CLIP' -> 'clip'); unknown names fail."""
    key = str(name).strip().lower()
    if key not in USAGE:
        fail(f"{flag} {name}: unknown usage info; expected one of {', '.join(USAGE_NAMES)}")
    return key


def get_usage(name: str, flag: str = "--encoder_usage_info") -> UsageInfo:
    """Look up a usage key (any case); unknown keys fail with the list of known ones."""
    return USAGE[usage_key(name, flag)]
