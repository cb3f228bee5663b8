"""Data: normalisation statistics, trigger formats, dataset loaders, the embedded synthetic set,
and batched tensor augmentations. See docs/DESIGN.md for the conventions."""
from __future__ import annotations

from UTILS.lazy import lazy_exports

# name -> the module that defines it. Imported on first use, so that a light submodule (the names
# the command line is checked against) does not pull in torch through this package.
_EXPORTS = {
    "adjust_brightness": "DATASETS.augment",
    "adjust_contrast": "DATASETS.augment",
    "adjust_hue": "DATASETS.augment",
    "adjust_saturation": "DATASETS.augment",
    "color_jitter": "DATASETS.augment",
    "grayscale": "DATASETS.augment",
    "hflip": "DATASETS.augment",
    "random_crop": "DATASETS.augment",
    "random_grayscale": "DATASETS.augment",
    "random_resized_crop": "DATASETS.augment",
    "simclr_view": "DATASETS.augment",
    "simclr_views": "DATASETS.augment",
    "unlearn_view": "DATASETS.augment",
    "DATASET_NAMES": "DATASETS.names",
    "NUM_CLASSES": "DATASETS.names",
    "ImageSet": "DATASETS.loaders",
    "load_split": "DATASETS.loaders",
    "resize_images": "DATASETS.loaders",
    "take_ratio": "DATASETS.loaders",
    "to_tensor": "DATASETS.loaders",
    "USAGE": "DATASETS.usage",
    "UsageInfo": "DATASETS.usage",
    "get_usage": "DATASETS.usage",
    "normalize": "DATASETS.stats",
    "CLASS_NAMES": "DATASETS.synthetic",
    "GroundTruthTrigger": "DATASETS.triggers",
    "InvertedTrigger": "DATASETS.triggers",
    "load_trigger": "DATASETS.triggers",
    "save_ground_truth_trigger": "DATASETS.triggers",
    "stamp": "DATASETS.triggers",
    "white_square_trigger": "DATASETS.triggers",
}
__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
