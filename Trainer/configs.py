"""Validated run configurations, one per entry script. Field names are the argparse dests of the
original flags, so ``Config(**vars(args))`` maps a command line onto a config."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Sequence, Type, TypeVar

from DATASETS.names import DATASET_NAMES
from DATASETS.usage import USAGE
from MODELS.names import MODEL_NAMES
from Trainer.filenames import DEFAULT_TRIGGER
from UTILS.device_flags import device_choice, gpu_index
from UTILS.errors import fail

C = TypeVar("C")

MAIN_SEEDS = (1024, 557540351, 157301989, 100, 1234)
UNLEARN_SEEDS = (1024, 557540351, 157301989)
# The original MAIN.py's defaults (paths of its authors' machine): kept so its flags mean the same.
DEFAULT_MAIN_ENCODER = "ckpts/reference_be/cifar10/stl10_backdoored_encoder/model_200.pth"
DEFAULT_REFERENCE_FILE = "reference/cifar10/truck.npz"


def add_runtime_flags(parser: argparse.ArgumentParser, gpu: str, seed: int) -> None:
    """Flags every script shares: --gpu/--seed (original), --device/--data_dir (ours), safety switches."""
    parser.add_argument("--gpu", default=gpu, help="CUDA device index, as in the original (used by --device auto)")
    parser.add_argument("--seed", type=int, default=seed)
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
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def check_choice(value: str, choices: Sequence[str], flag: str) -> None:
    if value not in choices:
        fail(f"{flag} {value}: expected one of {', '.join(choices)}")


def check_ratio(value: float, flag: str) -> None:
    if not (value > 0 and value <= 1) or math.isnan(value):
        fail(f"{flag} {value}: expected a share in (0, 1]")


def check_positive(value: float, flag: str, allow_zero: bool = False) -> None:
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
    if seeds and not 0 <= seed < len(seeds):
        fail(f"--seed {seed}: expected an index 0..{len(seeds) - 1} into the seed list {list(seeds)}")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        fail(f"--seed {seed}: expected an integer from -2**63 to 2**64-1 (what torch's generator takes)")


def check_device_flags(device: str, gpu: str) -> None:
    """--device and --gpu are read before torch is imported (UTILS.device_flags)."""
    device_choice(device)
    gpu_index(gpu)


@dataclass
class Common:
    SEEDS = ()  # not a field: a config whose --seed indexes a list of seeds names the list here

    gpu: str = "0"
    seed: int = 0
    device: str = "auto"
    data_dir: str = "data"
    overwrite: bool = False
    resume: bool = False

    def check_runtime(self) -> None:
        if self.overwrite and self.resume:
            fail("--overwrite and --resume: choose one (replace the earlier run, or continue it)")
        check_device_flags(self.device, self.gpu)
        check_seed(self.seed, self.SEEDS)


@dataclass
class MainConfig(Common):
    SEEDS = MAIN_SEEDS

    phase: str = "moth"
    dataset: str = "cifar10"
    model: str = "resnet18"
    batch_size: int = 32
    epochs: int = 2
    log_dir: str = "MSE-test-loss"
    results_dir: str = "ckpts"
    knn_t: float = 0.5
    knn_k: int = 200
    pretrained_encoder: str = DEFAULT_MAIN_ENCODER
    harden_lr: float = 1e-3
    re_lr: float = 0.5
    data_ratio: float = 0.01
    encoder_usage_info: str = "cifar10"
    attack_threshold: float = 0.99
    similarity_threshold: float = 0.90
    init_cost: float = 5e-2
    pair: str = "0-0"
    attack_size: int = 32
    re_steps: int = 300
    re_steps_cap: int = 0
    downstreamTask: str = "stl10"
    epsilon: float = 1e-3
    patience: int = 7
    reference_label: int = 9
    trigger_file: str = DEFAULT_TRIGGER
    reference_file: str = DEFAULT_REFERENCE_FILE
    source_label: int = -1
    psim: str = "original"
    monitor_every: int = 5
    asr_include_target: bool = False
    amp: bool = False

    def validate(self) -> "MainConfig":
        self.check_runtime()
        check_choice(self.phase, ("moth", "nc"), "--phase")
        check_choice(self.psim, ("original", "pairs"), "--psim")
        check_choice(self.dataset, DATASET_NAMES, "--dataset")
        check_choice(self.model, MODEL_NAMES, "--model")
        check_choice(self.encoder_usage_info, tuple(USAGE), "--encoder_usage_info")
        if self.monitor_every > 0:
            check_choice(self.downstreamTask, DATASET_NAMES, "--downstreamTask")
        if not self.pretrained_encoder:
            fail("--pretrained_encoder: required (path to the encoder checkpoint to inspect)")
        check_ratio(self.data_ratio, "--data_ratio")
        for flag, value in (("--epochs", self.epochs), ("--re_steps", self.re_steps),
                            ("--patience", self.patience), ("--knn-k", self.knn_k),
                            ("--harden_lr", self.harden_lr), ("--re_lr", self.re_lr), ("--knn-t", self.knn_t)):
            check_positive(value, flag)
        check_size(self.batch_size, "--batch_size")
        check_size(self.attack_size, "--attack_size")
        check_positive(self.init_cost, "--init_cost", allow_zero=True)
        check_positive(self.epsilon, "--epsilon", allow_zero=True)
        check_positive(self.re_steps_cap, "--re_steps_cap", allow_zero=True)
        if 0 < self.re_steps_cap < self.re_steps:
            fail(f"--re_steps_cap {self.re_steps_cap}: below --re_steps {self.re_steps}; expected 0 "
                 f"(= 3 x --re_steps) or a cap of at least --re_steps")
        check_positive(self.monitor_every, "--monitor_every", allow_zero=True)
        if self.attack_size < 2:
            fail(f"--attack_size {self.attack_size}: expected at least 2 (similarity is measured between pairs)")
        if not 0 < self.similarity_threshold <= 1:
            fail(f"--similarity_threshold {self.similarity_threshold}: expected a cosine similarity in (0, 1]")
        return self


@dataclass
class UnlearnConfig(Common):
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
    knn_t: float = 0.5
    knn_k: int = 200
    portion: float = 1.0
    input_type: str = "poisoned_encoder"
    init_sim_bn_update: str = "on"
    monitor_every: int = 1
    asr_include_target: bool = False
    amp: bool = False

    def validate(self) -> "UnlearnConfig":
        self.check_runtime()
        # The original runs only --phase moth with --input_type poisoned_encoder; anything else prints
        # "Option [...] is not supported!" (or, for --phase test, runs a classifier test that cannot work).
        if self.phase != "moth":
            fail(f"--phase {self.phase}: not supported by Unlearn-trigger.py; expected moth "
                 f"(the original's 'test' phase evaluates an encoder as a classifier and cannot run)")
        if self.input_type != "poisoned_encoder":
            fail(f"--input_type {self.input_type}: not supported; expected poisoned_encoder "
                 f"(the original unlearns only a poisoned encoder)")
        check_choice(self.dataset, DATASET_NAMES, "--dataset")
        check_choice(self.model, MODEL_NAMES, "--model")
        check_choice(self.encoder_usage_info, tuple(USAGE), "--encoder_usage_info")
        check_choice(self.init_sim_bn_update, ("on", "off"), "--init_sim_bn_update")
        if self.monitor_every > 0:
            check_choice(self.downstreamTask, DATASET_NAMES, "--downstreamTask")
        if not self.pretrained_encoder:
            fail("--pretrained_encoder: required (path to the encoder to clean)")
        if not self.re_mask_pattern:
            fail("--re_mask_pattern: required (the inverted trigger, e.g. <log_dir>/mask-pattern-best.npz)")
        check_ratio(self.data_ratio, "--data_ratio")
        check_ratio(self.portion, "--portion")
        for flag, value in (("--epochs", self.epochs), ("--lr", self.lr), ("--knn-k", self.knn_k),
                            ("--knn-t", self.knn_t)):
            check_positive(value, flag)
        check_size(self.batch_size, "--batch_size")
        if self.batch_size < 2:
            fail(f"--batch_size {self.batch_size}: expected at least 2 (BatchNorm in the projection head "
                 f"cannot train on batches of one image)")
        check_positive(self.beta, "--beta", allow_zero=True)
        check_positive(self.monitor_every, "--monitor_every", allow_zero=True)
        return self


ASR_IMAGES = ("test", "train_half")  # --asr_images: the test split (BadEncoder's), or the original's image set
MODES = ("non-targeted", "targeted")


@dataclass
class DownstreamConfig(Common):
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
        self.check_runtime()
        check_choice(self.dataset, DATASET_NAMES, "--dataset")
        check_choice(self.model, MODEL_NAMES, "--model")
        check_choice(self.encoder_usage_info, tuple(USAGE), "--encoder_usage_info")
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
