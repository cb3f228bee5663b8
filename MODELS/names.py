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
VIT_NAMES = ("clip_vit_b32", "clip_vit_b16", "clip_vit_tiny")  # CLIP's vision transformers (MODELS.clip_vit)
VISUAL_NAMES = ("imagenet_resnet50", "clip_rn50", "clip_vit_b32", "clip_vit_b16", "imagenet_tiny", "clip_tiny",
                "clip_vit_tiny")
MODEL_NAMES = SIMCLR_NAMES + VISUAL_NAMES
DEFAULT_MODEL = "resnet18"  # every script's --model default, as in the original

# usage key -> (the architecture the original builds for it, every architecture of that family)
USAGE_MODELS = {
    "imagenet": ("imagenet_resnet50", ("imagenet_resnet50", "imagenet_tiny")),
    "clip": ("clip_rn50", ("clip_rn50", "clip_tiny") + VIT_NAMES),
}
# What each 224-pixel family is, for messages.
FAMILY_TEXT = {
    "imagenet": "an ImageNet SimCLR ResNet-50 (2048-d, BadEncoder's imagenet encoder)",
    "clip": "a CLIP image tower (BadEncoder's RN50, or a ViT-B/32 or ViT-B/16)",
}
# What each kind of tower is (a family may hold several: CLIP's ResNet and its vision transformer), for messages.
TOWER_TEXT = {
    "imagenet": FAMILY_TEXT["imagenet"],
    "clip": "a CLIP RN50 image tower (ModifiedResNet, 1024-d, BadEncoder's CLIP encoder)",
    "clip_vit": "a CLIP vision transformer (ViT-B/32 or ViT-B/16, 512-d)",
}


def family_of(model: str) -> str | None:
    """'imagenet' or 'clip' for a 224-pixel tower, None for a 32-pixel SimCLR encoder."""
    for key, (_, members) in USAGE_MODELS.items():
        if model in members:
            return key
    return None


def tower_kind(model: str) -> str | None:
    """'imagenet', 'clip' (the ResNet) or 'clip_vit' for a 224-pixel tower, None for a 32-pixel SimCLR encoder."""
    return "clip_vit" if model in VIT_NAMES else family_of(model)


def published(usage: str) -> tuple[str, ...]:
    """The architectures of a 224-pixel usage that match published files (not the test-only ``*_tiny``)."""
    return tuple(m for m in USAGE_MODELS[usage][1] if not m.endswith("_tiny"))


def either(names: tuple[str, ...]) -> str:
    """'a', 'a or b', 'a, b or c': choices in a message."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def resolve_model(model: str, usage: str, flag: str = "--model") -> tuple[str, str]:
    """(architecture, usage key) for ``--model`` and ``--encoder_usage_info``.

    The original picks the architecture from ``--encoder_usage_info`` alone (imagenet -> ResNet-50,
    CLIP -> the RN50 tower) and ignores ``--model``; so ``--model resnet18`` (the default, and what
    the original's command lines pass) means "the one the usage implies" (for CLIP: the RN50, unless the
    checkpoint's keys name a vision transformer: ``load_encoder(by_keys=True)`` decides). Any other disagreement
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
                 f"{TOWER_TEXT[tower_kind(model)]} for 224-pixel inputs; expected --encoder_usage_info "
                 f"{'CLIP' if own == 'clip' else 'imagenet'} (or a 32-pixel --model)")
        return model, key
    default, members = wanted
    if model == DEFAULT_MODEL:
        return default, key
    if model not in members:
        fail(f"{flag} {model} contradicts --encoder_usage_info {usage}: that usage selects "
             f"{FAMILY_TEXT[key]}; expected --model {either(published(key))} (or leave --model at {DEFAULT_MODEL})")
    return model, key
