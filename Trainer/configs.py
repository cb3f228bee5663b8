"""Validated run configurations, one per entry script, and the flags several scripts share.

Field names are the argparse dests of the original flags, so ``config_from_args(Config, args)`` maps a
command line onto a config. RECEIVE's three scripts: ``MainConfig`` (MAIN.py), ``UnlearnConfig``
(Unlearn-trigger.py), ``DownstreamConfig`` (training_downstream_classifier.py). The scripts that make
the encoders to defend follow BadEncoder's flag names and defaults: ``PretrainConfig``
(pretraining_encoder.py), ``BadEncoderConfig`` (badencoder.py); flags BadEncoder lacks are ours. Then the
demo's and the report's: ``DemoConfig`` (demo.py), ``ReportConfig`` (report.py). No torch here: the
flags are checked before it is imported."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Sequence, Type, TypeVar

from DATASETS.names import DATASET_NAMES
from MODELS.names import DEFAULT_MODEL, resolve_model
from Trainer.filenames import DEFAULT_TRIGGER
from INVERSION.defaults import INIT_COST, MONITOR_EVERY, PSIM, RE_LR, RE_STEPS, SIMILARITY_THRESHOLD
from UTILS.device_flags import device_choice, gpu_index
from UTILS.errors import fail
from UTILS.seeds import MAIN_SEEDS, UNLEARN_SEEDS, global_seed

C = TypeVar("C")

# The original MAIN.py's defaults (paths of its authors' machine): kept so its flags mean the same.
DEFAULT_MAIN_ENCODER = "ckpts/reference_be/cifar10/stl10_backdoored_encoder/model_200.pth"
DEFAULT_REFERENCE_FILE = "reference/cifar10/truck.npz"
MAIN_PHASES = ("moth", "nc", "detect")
# --knn-k / --knn-t: the kNN monitor's neighbours and temperature (the original scripts' defaults), shared by every
# script with a monitor; pretraining_encoder.py also takes --knn-t as SimCLR's temperature (Trainer/pretrain.py).
KNN_K = 200
KNN_T = 0.5
# MAIN.py --phase detect (ours, after DECREE): the mean pairwise cosine the stamped images' features must reach,
# and the relative trigger size (PL1 = mask L1 / (H*W)) below which the verdict reads "backdoor found".
# DETECT_PL1: the geometric midpoint, at the default settings, between the largest backdoored PL1 (0.047) and the
# smallest clean PL1 (0.0645) of the 16 encoders bench/detect.py measured (two architectures; docs/DETECTION.md).
# DETECT_PSIM "auto": DECREE's 0.99, relative to the encoder (INVERSION.relative.DETECT_SHARE); a number: fixed.
DETECT_PSIM = "auto"
DETECT_PL1 = 0.055
# --detect_psim_kind: the cosine the goal is on. "pairs" is DECREE's, on the features as they are; "centred" takes
# them minus the judged clean images' mean feature (INVERSION.relative.CentredFeatures), so that a direction every
# image shares (an anisotropic encoder's cone, as CLIP's) counts for nothing and clean images score about 0 on
# every encoder. Its threshold was set by DETECT_PL1's rule on the tuned families' encoders on disk (synthetic seeds
# 0-4 rebuilt and lowcontrast resnet18_small, bench/detect_kinds.py): the geometric midpoint between the largest
# backdoored PL1 (ASR >= 50 %: 0.0261) and the smallest clean one (0.0656), before any held-out encoder was judged
# with it (docs/DETECTION.md, "Centred"). Judged then on 49 held-out encoders, it ordered them within each family
# but gave 16 wrong verdicts (pairs: 1), so pairs stays the default.
DETECT_PSIM_KINDS = ("pairs", "centred")
DETECT_PSIM_KIND = "pairs"
DETECT_PL1_BY_KIND = {"pairs": DETECT_PL1, "centred": 0.041}
# --detect_reference: a clean encoder of the same family (architecture, training data), judged the same way on the
# same images; the verdict then reads PL1 / its PL1. Thresholds by the DETECT_PL1 rule on the tuned synthetic
# encoders, each judged against the clean encoders of the four other seeds (docs/DETECTION.md, "Against a clean
# reference"): pairs, backdoored 0.22-0.52 and clean 0.85-1.18 -> 0.67; centred, 0.20-0.40 and 0.85-1.17 -> 0.58.
DETECT_RATIO_BY_KIND = {"pairs": 0.67, "centred": 0.58}
# The judged clean images' own pair-mean cosine (the detection's psim before any trigger) on the encoders
# --detect_pl1's default is known to hold for: 0.57-0.64 over the clean and backdoored encoders of the tuned
# families (bench/generalise.py: synthetic, lowcontrast; seeds 0-2), 0.65 with a margin. Above it the images
# already agree more than on any of them, and there small natural triggers make them agree fully without a
# backdoor: of the four clean encoders measured above it (nearsame at 0.69, greydigits at 0.73-0.77) three were
# called backdoored at PL1 0.008-0.041, while two strong backdoors of greydigits (0.81-0.82) needed 0.071-0.081.
# The PL1 threshold then says nothing, so the verdict is "inconclusive" (INVERSION.detect.judge; docs/DETECTION.md,
# "Outside the calibration"). A user's own --detect_pl1 is their own calibration and lifts this limit.
CALIBRATED_CLEAN_PSIM_MAX = 0.65
# The inverted trigger grows with the number of images it must collapse (about +0.01 PL1 per doubling in
# bench/detect.py), so the verdict judges a fixed number of images, the number the threshold was measured on.
DETECT_IMAGES = 100


def add_runtime_flags(parser: argparse.ArgumentParser, gpu: str, seed: int, seed_help: str | None = None) -> None:
    """Flags every script shares: --gpu/--seed (original), --device/--data_dir (ours), safety switches."""
    parser.add_argument("--gpu", default=gpu, help="CUDA device index, as in the original (used by --device auto)")
    parser.add_argument("--seed", type=int, default=seed, help=seed_help)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: cuda:<gpu> if available)")
    parser.add_argument("--data_dir", default="data", help="where datasets live (torchvision or BadEncoder npz layout)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run in the same dirs")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")


def add_asr_flag(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--asr_include_target`` (ours): BadEncoder's ASR convention, target-class images counted."""
    parser.add_argument("--asr_include_target", action="store_true",
                        help=f"{note}count target-class images in ASR, as BadEncoder's published figures do")


def add_amp_flag(parser: argparse.ArgumentParser) -> None:
    """``--amp`` (ours): bf16 autocast + channels_last for the encoder; off = exact float32."""
    parser.add_argument("--amp", action="store_true",
                        help="encoder forward/backward in bfloat16 autocast with channels_last (CUDA with bf16, "
                             "or CPU); losses and trigger stay float32. Off by default: exact float32")


def config_from_args(cls: Type[C], args: argparse.Namespace) -> C:
    """A ``cls`` config from the parsed flags that are its fields (others are ignored)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def check_choice(value: str, choices: Sequence[str], flag: str) -> None:
    """One line naming ``flag`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        fail(f"{flag} {value}: expected one of {', '.join(choices)}")


def check_ratio(value: float, flag: str) -> None:
    """One line naming ``flag`` unless ``value`` is a share in (0, 1]."""
    if not (value > 0 and value <= 1) or math.isnan(value):
        fail(f"{flag} {value}: expected a share in (0, 1]")


def check_positive(value: float, flag: str, allow_zero: bool = False) -> None:
    """One line naming ``flag`` unless ``value`` is a finite positive (or, with ``allow_zero``, non-negative)
    number."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok or math.isnan(value) or math.isinf(value):
        fail(f"{flag} {value}: expected a {'non-negative' if allow_zero else 'positive'} number")


# Sizes are bounded so that a typo (--attack_size 1000000000) is one line, not an allocation of terabytes;
# what is left (a large size on a small machine) runs out of memory, which cli_entry reports in one line.
MAX_SIZE = 1_000_000
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


def check_size(value: int, flag: str, most: int = MAX_SIZE) -> None:
    """A positive count (images, units) of at most ``most``."""
    check_positive(value, flag)
    if value > most:
        fail(f"{flag} {value}: expected at most {most:,} (the tensors it sizes must fit in memory)")


def check_seed(seed: int, seeds: Sequence[int] = ()) -> None:
    """``--seed``: an index into ``seeds`` where the original takes it so, else any seed torch accepts."""
    global_seed(seed, seeds)  # an index outside the list: one line
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        fail(f"--seed {seed}: expected an integer from -2**63 to 2**64-1 (what torch's generator takes)")


def check_device_flags(device: str, gpu: str) -> None:
    """--device and --gpu are read before torch is imported (UTILS.device_flags)."""
    device_choice(device)
    gpu_index(gpu)


@dataclass
class Common:
    """The flags every stage script shares (device, seed, data, overwrite/resume), with their defaults."""

    SEEDS = ()  # not a field: a config whose --seed indexes a list of seeds names the list here

    gpu: str = "0"
    seed: int = 0
    device: str = "auto"
    data_dir: str = "data"
    overwrite: bool = False
    resume: bool = False

    def check_runtime(self) -> None:
        """--overwrite/--resume, --device/--gpu and --seed: the flags of add_runtime_flags."""
        if self.overwrite and self.resume:
            fail("--overwrite and --resume: choose one (replace the earlier run, or continue it)")
        check_device_flags(self.device, self.gpu)
        check_seed(self.seed, self.SEEDS)

    def check_common(self, dataset_field: str) -> None:
        """What every stage's validate() checks first: the runtime flags, the dataset flag (the config field
        ``dataset_field``), and --model with --encoder_usage_info (imagenet/CLIP picks the architecture, as
        in the original: MODELS.names)."""
        self.check_runtime()
        check_choice(getattr(self, dataset_field), DATASET_NAMES, "--" + dataset_field)
        requested = self.model
        self.model, self.encoder_usage_info = resolve_model(self.model, self.encoder_usage_info)
        # --model left at its default: a CLIP checkpoint's keys may still choose its tower (a ViT) when it is
        # read (Trainer.common.load_stage_encoder). Not a field: settings and fingerprints keep their lines.
        self.model_by_keys = getattr(self, "model_by_keys", False) or (
            requested == DEFAULT_MODEL and self.model != requested)


def check_monitor(cfg) -> None:
    """The kNN monitor's flags: --monitor_every (0 = off), --knn-k, --knn-t, and --downstreamTask when it is on."""
    check_positive(cfg.monitor_every, "--monitor_every", allow_zero=True)
    check_positive(cfg.knn_k, "--knn-k")
    check_positive(cfg.knn_t, "--knn-t")
    if cfg.monitor_every > 0:
        check_choice(cfg.downstreamTask, DATASET_NAMES, "--downstreamTask")


PSIM_CHOICES = ("original", "pairs", "centred")  # MAIN.py --psim (INVERSION.inversion, INVERSION.relative)
LOWPASS_CHOICES = ("off", "on")  # MAIN.py --lowpass (INVERSION.inversion.lowpass)


def threshold_value(value: float | str, flag: str) -> float | str:
    """A similarity threshold flag as given: "auto" (any case), or a number; anything else fails with one line."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            return float(value)
        except ValueError:
            fail(f"{flag} {value}: expected a cosine similarity in (0, 1] or 'auto'")
    return float(value)


@dataclass
class MainConfig(Common):
    """MAIN.py's flags: inversion (--re_*), hardening, early stop, the kNN monitor and --phase."""

    SEEDS = MAIN_SEEDS

    phase: str = "moth"
    dataset: str = "cifar10"
    model: str = "resnet18"
    batch_size: int = 32
    epochs: int = 2
    log_dir: str = "MSE-test-loss"
    results_dir: str = "ckpts"
    knn_t: float = KNN_T
    knn_k: int = KNN_K
    pretrained_encoder: str = DEFAULT_MAIN_ENCODER
    harden_lr: float = 1e-3
    re_lr: float = RE_LR
    data_ratio: float = 0.01
    encoder_usage_info: str = "cifar10"
    attack_threshold: float = 0.99
    similarity_threshold: float | str = SIMILARITY_THRESHOLD  # a cosine, or "auto" (INVERSION.relative)
    init_cost: float = INIT_COST
    pair: str = "0-0"
    attack_size: int = 32
    re_steps: int = RE_STEPS
    re_steps_cap: int = 0
    micro_batch: int = 0
    downstreamTask: str = "stl10"
    epsilon: float = 1e-3
    patience: int = 7
    reference_label: int = 9
    trigger_file: str = DEFAULT_TRIGGER
    reference_file: str = DEFAULT_REFERENCE_FILE
    source_label: int = -1
    psim: str = PSIM
    lowpass: str = "off"
    monitor_every: int = MONITOR_EVERY
    asr_include_target: bool = False
    amp: bool = False
    detect_psim: float | str = DETECT_PSIM
    detect_psim_kind: str = DETECT_PSIM_KIND
    detect_pl1: float | None = None  # None: the calibrated default of --detect_psim_kind (DETECT_PL1_BY_KIND)
    detect_images: int = DETECT_IMAGES
    detect_reference: str = ""  # a clean encoder to judge against ('': the absolute threshold)

    @property
    def detect_threshold(self) -> float:
        """The verdict's PL1 threshold: --detect_pl1, or the default calibrated for --detect_psim_kind."""
        return DETECT_PL1_BY_KIND[self.detect_psim_kind] if self.detect_pl1 is None else self.detect_pl1

    @property
    def detect_calibrated(self) -> bool:
        """True when the verdict uses the calibrated threshold of its kind, so our calibration's limits apply (a
        user's own threshold is their own calibration; the default's value given explicitly counts as the default)."""
        return self.detect_threshold == DETECT_PL1_BY_KIND[self.detect_psim_kind]

    def validate(self) -> "MainConfig":
        """Every flag of MAIN.py, in one-line errors; returns self."""
        self.check_common("dataset")
        check_choice(self.phase, MAIN_PHASES, "--phase")
        check_choice(self.psim, PSIM_CHOICES, "--psim")
        check_choice(self.lowpass, LOWPASS_CHOICES, "--lowpass")
        self.similarity_threshold = threshold_value(self.similarity_threshold, "--similarity_threshold")
        self.detect_psim = threshold_value(self.detect_psim, "--detect_psim")
        check_monitor(self)
        if not self.pretrained_encoder:
            fail("--pretrained_encoder: required (path to the encoder checkpoint to inspect)")
        check_ratio(self.data_ratio, "--data_ratio")
        for flag, value in (("--epochs", self.epochs), ("--re_steps", self.re_steps),
                            ("--patience", self.patience), ("--harden_lr", self.harden_lr), ("--re_lr", self.re_lr)):
            check_positive(value, flag)
        check_size(self.batch_size, "--batch_size")
        check_size(self.attack_size, "--attack_size")
        check_positive(self.init_cost, "--init_cost", allow_zero=True)
        check_positive(self.epsilon, "--epsilon", allow_zero=True)
        check_positive(self.re_steps_cap, "--re_steps_cap", allow_zero=True)
        check_positive(self.micro_batch, "--micro_batch", allow_zero=True)
        if 0 < self.re_steps_cap < self.re_steps:
            fail(f"--re_steps_cap {self.re_steps_cap}: below --re_steps {self.re_steps}; expected 0 "
                 f"(the stall rule) or a cap of at least --re_steps")
        if self.attack_size < 2:
            fail(f"--attack_size {self.attack_size}: expected at least 2 (similarity is measured between pairs)")
        cosines = [("--similarity_threshold", self.similarity_threshold), ("--detect_psim", self.detect_psim)]
        for flag, value in [(f, v) for f, v in cosines if v != "auto"]:
            if not 0 < value <= 1:
                fail(f"{flag} {value}: expected a cosine similarity in (0, 1]")
        check_choice(self.detect_psim_kind, DETECT_PSIM_KINDS, "--detect_psim_kind")
        if self.detect_pl1 is not None and not 0 < self.detect_pl1 <= 1:
            fail(f"--detect_pl1 {self.detect_pl1}: expected a share of the image's pixels in (0, 1]")
        check_positive(self.detect_images, "--detect_images", allow_zero=True)
        if self.detect_images == 1:
            fail("--detect_images 1: expected 0 (all) or at least 2 (similarity is measured between pairs)")
        return self


@dataclass
class UnlearnConfig(Common):
    """Unlearn-trigger.py's flags: the inverted trigger, the unlearning loss (--portion, --beta) and its epochs."""

    SEEDS = UNLEARN_SEEDS

    # The original's defaults; the fields it lacks are ours (--monitor_every 1 = its kNN check after
    # every epoch). --results_dir '' is the current directory (the original's os.mkdir('') fails on it).
    gpu: str = "2"
    results_dir: str = ""
    phase: str = "moth"
    dataset: str = "cifar10"
    downstreamTask: str = "svhn"
    model: str = "resnet18"
    pretrained_encoder: str = "clean_enc.pth"
    batch_size: int = 128
    beta: float = 1.0
    epochs: int = 2
    lr: float = 1e-4
    data_ratio: float = 1.0
    encoder_usage_info: str = "cifar10"
    log_dir: str = "MSE-test-loss"
    reference_label: int = 0
    trigger_file: str = DEFAULT_TRIGGER
    re_mask_pattern: str = ""
    knn_t: float = KNN_T
    knn_k: int = KNN_K
    portion: float = 1.0
    input_type: str = "poisoned_encoder"
    init_sim_bn_update: str = "on"
    monitor_every: int = 1
    asr_include_target: bool = False
    amp: bool = False

    def validate(self) -> "UnlearnConfig":
        """Every flag of Unlearn-trigger.py, in one-line errors; returns self."""
        self.check_common("dataset")
        # The original runs only --phase moth with --input_type poisoned_encoder; anything else prints
        # "Option [...] is not supported!" (or, for --phase test, runs a classifier test that cannot work).
        if self.phase != "moth":
            fail(f"--phase {self.phase}: not supported by Unlearn-trigger.py; expected moth "
                 f"(the original's 'test' phase evaluates an encoder as a classifier and cannot run)")
        if self.input_type != "poisoned_encoder":
            fail(f"--input_type {self.input_type}: not supported; expected poisoned_encoder "
                 f"(the original unlearns only a poisoned encoder)")
        check_choice(self.init_sim_bn_update, ("on", "off"), "--init_sim_bn_update")
        check_monitor(self)
        if not self.pretrained_encoder:
            fail("--pretrained_encoder: required (path to the encoder to clean)")
        if not self.re_mask_pattern:
            fail("--re_mask_pattern: required (the inverted trigger, e.g. <log_dir>/mask-pattern-best.npz)")
        check_ratio(self.data_ratio, "--data_ratio")
        check_ratio(self.portion, "--portion")
        for flag, value in (("--epochs", self.epochs), ("--lr", self.lr)):
            check_positive(value, flag)
        check_size(self.batch_size, "--batch_size")
        if self.batch_size < 2:
            fail(f"--batch_size {self.batch_size}: expected at least 2 (BatchNorm in the projection head "
                 f"cannot train on batches of one image)")
        check_positive(self.beta, "--beta", allow_zero=True)
        return self


ASR_IMAGES = ("test", "train_half")  # --asr_images: the test split (BadEncoder's), or the original's image set
MODES = ("non-targeted", "targeted")


@dataclass
class DownstreamConfig(Common):
    """training_downstream_classifier.py's flags: the encoder, the task, the MLP and how ASR is counted."""

    dataset: str = "cifar10"
    reference_label: int = -1
    trigger_file: str = ""
    # The original's '' crashes (its size/mean tables are indexed with it), and guessing from --dataset
    # would silently normalise a cifar10 encoder evaluated on stl10 (the paper's setting) with STL's
    # statistics; the encoder's own statistics must be named, cifar10 being the README's choice.
    encoder_usage_info: str = "cifar10"
    encoder: str = ""
    model: str = "resnet18"
    lr: float = 1e-4
    nn_epochs: int = 500
    hidden_size_1: int = 512
    hidden_size_2: int = 256
    results_dir: str = "reproduction/cifar10/downstreamclf"  # the original's default (created if absent)
    batch_size: int = 64
    source_label: int = -1
    mode: str = "non-targeted"
    asr_images: str = "test"
    asr_include_target: bool = False
    amp: bool = False

    def validate(self) -> "DownstreamConfig":
        """Every flag of training_downstream_classifier.py, in one-line errors; returns self."""
        self.check_common("dataset")
        check_choice(self.mode, MODES, "--mode")
        check_choice(self.asr_images, ASR_IMAGES, "--asr_images")
        if self.source_label < -1:
            fail(f"--source_label {self.source_label}: expected -1 (off) or a class index of the downstream dataset")
        for flag, value in (("--nn_epochs", self.nn_epochs), ("--lr", self.lr)):
            check_positive(value, flag)
        for flag, value in (("--batch_size", self.batch_size), ("--hidden_size_1", self.hidden_size_1),
                            ("--hidden_size_2", self.hidden_size_2)):
            check_size(value, flag)
        return self


# ---- the scripts that make the encoders to defend (BadEncoder's), the demo and the report ----------------


def _check_common_training(cfg, dataset_field: str) -> None:
    """Flags shared by the two encoder-making scripts."""
    cfg.check_common(dataset_field)
    if not cfg.results_dir:
        fail("--results_dir: required (the folder that receives model_<epoch>.pth)")
    for flag, value in (("--lr", cfg.lr), ("--epochs", cfg.epochs)):
        check_positive(value, flag)
    check_size(cfg.batch_size, "--batch_size")
    check_ratio(cfg.data_ratio, "--data_ratio")
    if cfg.save_every < 0:
        fail(f"--save_every {cfg.save_every}: expected 0 (only the last epoch) or a positive number of epochs")


@dataclass
class PretrainConfig(Common):
    """``pretraining_encoder.py``: SimCLR pre-training."""

    seed: int = 100
    pretraining_dataset: str = "cifar10"
    model: str = "resnet18"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    batch_size: int = 256
    epochs: int = 1000
    results_dir: str = ""
    knn_t: float = KNN_T
    knn_k: int = KNN_K
    encoder_usage_info: str = "cifar10"
    data_ratio: float = 1.0
    downstreamTask: str = ""
    monitor_every: int = 1
    save_every: int = 50

    def validate(self) -> "PretrainConfig":
        """Check the flags (one line on the first bad one); fills --downstreamTask from the pre-training set."""
        _check_common_training(self, "pretraining_dataset")
        if self.batch_size < 2:
            fail(f"--batch_size {self.batch_size}: expected at least 2 (BatchNorm in the projection head cannot "
                 f"train on batches of one image, and NT-Xent needs another image as a negative)")
        check_positive(self.weight_decay, "--weight_decay", allow_zero=True)
        self.downstreamTask = self.downstreamTask or self.pretraining_dataset
        check_monitor(self)
        return self


@dataclass
class BadEncoderConfig(Common):
    """``badencoder.py``: BadEncoder's backdoor injection."""

    seed: int = 100
    lr: float = 1e-3
    batch_size: int = 256
    lambda1: float = 1.0
    lambda2: float = 1.0
    epochs: int = 200
    reference_file: str = ""
    trigger_file: str = DEFAULT_TRIGGER
    shadow_dataset: str = "cifar10"
    pretrained_encoder: str = ""
    encoder_usage_info: str = "cifar10"
    results_dir: str = ""
    model: str = "resnet18"
    data_ratio: float = 1.0
    reference_label: int = -1
    reference_dataset: str = ""
    reference_count: int = 1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    knn_t: float = KNN_T
    knn_k: int = KNN_K
    downstreamTask: str = ""
    monitor_every: int = 1
    save_every: int = 0
    asr_include_target: bool = False

    def validate(self) -> "BadEncoderConfig":
        """Check the flags (one line on the first bad one): the clean encoder and trigger are required."""
        _check_common_training(self, "shadow_dataset")
        if not self.pretrained_encoder:
            fail("--pretrained_encoder: required (the clean encoder to inject the backdoor into)")
        if not self.trigger_file:
            fail("--trigger_file: required (BadEncoder's trigger npz with t and tm; "
                 "make one with python -m DATASETS.triggers)")
        for flag, value in (("--lambda1", self.lambda1), ("--lambda2", self.lambda2),
                            ("--momentum", self.momentum), ("--weight_decay", self.weight_decay)):
            check_positive(value, flag, allow_zero=True)
        self._validate_reference()
        self.downstreamTask = self.downstreamTask or self.reference_dataset or self.shadow_dataset
        check_monitor(self)
        return self

    def _validate_reference(self) -> None:
        """Reference images come from --reference_file, or from class --reference_label of --reference_dataset."""
        if self.reference_file and self.reference_dataset:
            fail("--reference_file and --reference_dataset: choose one source of reference images")
        if not self.reference_file and not self.reference_dataset:
            fail("--reference_file: required (npz with x: (n,32,32,3) uint8), or name --reference_dataset and "
                 "--reference_label to draw the reference images from the target class of a dataset")
        if self.reference_dataset:
            check_choice(self.reference_dataset, DATASET_NAMES, "--reference_dataset")
            if self.reference_label < 0:
                fail(f"--reference_label {self.reference_label}: --reference_dataset needs the target class "
                     f"(a label >= 0)")
        check_size(self.reference_count, "--reference_count")


PRESET_NAMES = ("ci", "default")  # DEMO/presets.py holds their settings


@dataclass
class DemoConfig:
    """``demo.py``: the whole story on the embedded dataset, in one run folder."""

    out: str = ""
    preset: str = "default"
    device: str = "auto"
    gpu: str = "0"
    data_dir: str = "data"
    target: int = 7  # checkerboard: the class whose single reference image the downstream MLP is surest of
    seed: int = 0  # 0..4: one seed for every stage (pre-training, injection, inversion, unlearning, classifier)
    overwrite: bool = False

    def validate(self) -> "DemoConfig":
        """Check the flags (one line on the first bad one): a known preset, a seed of 0..4, a class of
        synthetic_down."""
        check_choice(self.preset, PRESET_NAMES, "--preset")
        check_device_flags(self.device, self.gpu)
        if not 0 <= self.seed <= 4:
            fail(f"--seed {self.seed}: expected 0..4 (MAIN.py's seed list has five entries)")
        if not 0 <= self.target <= 9:
            fail(f"--target {self.target}: expected a class index 0..9 of synthetic_down")
        return self


# demo.py has no --resume (its stages are quick to run again): what an interrupted demo says instead
DEMO_RESUME_HINT = "demo.py has no --resume: run the same command plus --overwrite to start over"


@dataclass
class ReportConfig:
    """``report.py``: redraw the report's figures from the metrics files of any run."""

    run: str = ""
    moth_log: str = ""
    unlearn_log: str = ""
    nc_log: str = ""
    nc_unlearn_log: str = ""
    trigger_file: str = ""
    table: str = ""
    out: str = ""

    def validate(self) -> "ReportConfig":
        """Check that there is an output folder and at least one input to draw from."""
        if not self.out and not self.run:
            fail("--out: required (the folder that receives the figures and report.md)")
        if not (self.run or self.moth_log or self.unlearn_log or self.nc_log or self.table):
            fail("--moth_log: name a demo --run folder, or at least one of --moth_log, --unlearn_log, --nc_log "
                 "or --table to draw from")
        return self
