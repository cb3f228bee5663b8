"""Data: normalisation statistics, trigger formats, dataset loaders, the embedded synthetic set,
and batched tensor augmentations. See docs/DESIGN.md for the conventions."""
from DATASETS.augment import (adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, color_jitter,
                              grayscale, hflip, random_crop, random_grayscale, random_resized_crop, simclr_view,
                              simclr_views, unlearn_view)
from DATASETS.loaders import DATASET_NAMES, NUM_CLASSES, ImageSet, load_split, resize_images, take_ratio, to_tensor
from DATASETS.stats import USAGE, UsageInfo, get_usage, normalize
from DATASETS.synthetic import CLASS_NAMES
from DATASETS.triggers import (GroundTruthTrigger, InvertedTrigger, load_trigger, save_ground_truth_trigger, stamp,
                               white_square_trigger)

__all__ = [
    "UsageInfo", "USAGE", "get_usage", "normalize",
    "stamp", "GroundTruthTrigger", "InvertedTrigger", "load_trigger", "white_square_trigger",
    "save_ground_truth_trigger",
    "ImageSet", "DATASET_NAMES", "NUM_CLASSES", "load_split", "take_ratio", "to_tensor", "resize_images",
    "CLASS_NAMES",
    "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "grayscale", "color_jitter",
    "random_grayscale", "hflip", "random_crop", "random_resized_crop", "simclr_view", "simclr_views",
    "unlearn_view",
]
