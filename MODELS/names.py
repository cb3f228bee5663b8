"""The encoder architectures ``--model`` names, and how ``--encoder_usage_info`` picks one, without
importing torch (checked before the slow imports)."""
from __future__ import annotations

from DATASETS.usage import usage_key
from UTILS.errors import fail

# 32-pixel SimCLR encoders (f.f.* / g.* keys): the CIFAR family, plus the small test models.
SIMCLR_NAMES = ("resnet18", "resnet34", "resnet50", "resnet18_small", "tiny")
# 224-pixel image towers without a projection head, saved under BadEncoder's module name ``visual``.
# The ``*_tiny`` variants are test-only: the same key structure, narrower and shallower, so the
# whole pipeline runs at 224 pixels on a CPU in seconds. They match no published file.
VISUAL_NAMES = ("imagenet_resnet50", "clip_rn50", "imagenet_tiny", "clip_tiny")
MODEL_NAMES = SIMCLR_NAMES + VISUAL_NAMES
DEFAULT_MODEL = "resnet18"  # every script's --model default, as in the original

# usage key -> (the architecture the original builds for it, every architecture of that family)
USAGE_MODELS = {
    "imagenet": ("imagenet_resnet50", ("imagenet_resnet50", "imagenet_tiny")),
    "clip": ("clip_rn50", ("clip_rn50", "clip_tiny")),
}
# What each 224-pixel family is, for messages.
FAMILY_TEXT = {
    "imagenet": "an ImageNet SimCLR ResNet-50 (2048-d, BadEncoder's imagenet encoder)",
    "clip": "a CLIP RN50 image tower (ModifiedResNet, 1024-d, BadEncoder's CLIP encoder)",
}


def family_of(model: str) -> str | None:
    """'imagenet' or 'clip' for a 224-pixel tower, None for a 32-pixel SimCLR encoder."""
    for key, (_, members) in USAGE_MODELS.items():
        if model in members:
            return key
    return None


def resolve_model(model: str, usage: str, flag: str = "--model") -> tuple[str, str]:
    """(architecture, usage key) for ``--model`` and ``--encoder_usage_info``.

    The original picks the architecture from ``--encoder_usage_info`` alone (imagenet -> ResNet-50,
    CLIP -> the RN50 tower) and ignores ``--model``; so ``--model resnet18`` (the default, and what
    the original's command lines pass) means "the one the usage implies". Any other disagreement
    (``--model resnet34 --encoder_usage_info CLIP``, ``--model clip_rn50 --encoder_usage_info cifar10``)
    is a one-line error. The usage key comes back canonical ('CLIP' -> 'clip').
    """
    key = usage_key(usage)
    if model not in MODEL_NAMES:
        fail(f"{flag} {model}: unknown model; expected one of {', '.join(MODEL_NAMES)}")
    wanted = USAGE_MODELS.get(key)
    own = family_of(model)
    if wanted is None:
        if own is not None:
            fail(f"{flag} {model} contradicts --encoder_usage_info {usage}: {model} is "
                 f"{FAMILY_TEXT[own]} for 224-pixel inputs; expected --encoder_usage_info "
                 f"{'CLIP' if own == 'clip' else 'imagenet'} (or a 32-pixel --model)")
        return model, key
    default, members = wanted
    if model == DEFAULT_MODEL:
        return default, key
    if model not in members:
        fail(f"{flag} {model} contradicts --encoder_usage_info {usage}: that usage selects "
             f"{FAMILY_TEXT[key]}; expected --model {default} (or leave --model at {DEFAULT_MODEL})")
    return model, key
