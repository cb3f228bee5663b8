"""Validated configurations of the scripts that *make* the encoders to defend and of the demo.

Field names are the argparse dests, so ``config_from_args(Config, args)`` maps a command line onto a
config, as for the three RECEIVE scripts (Trainer/configs.py). Flag names and defaults follow
BadEncoder's ``pretraining_encoder.py`` and ``badencoder.py``; flags BadEncoder lacks are ours.
"""
from __future__ import annotations

from dataclasses import dataclass

from DATASETS.names import DATASET_NAMES
from DATASETS.usage import USAGE
from MODELS.names import MODEL_NAMES
from Trainer.configs import Common, check_choice, check_device_flags, check_positive, check_ratio, check_size
from Trainer.filenames import DEFAULT_TRIGGER
from UTILS.errors import fail


def _check_monitor(task: str, every: int, knn_k: int, knn_t: float) -> None:
    """The kNN monitor's flags (only checked when the monitor is on)."""
    if every < 0:
        fail(f"--monitor_every {every}: expected 0 (off) or a positive number of epochs")
    if every > 0:
        check_choice(task, DATASET_NAMES, "--downstreamTask")
        check_positive(knn_k, "--knn-k")
        check_positive(knn_t, "--knn-t")


def _check_common_training(cfg) -> None:
    """Flags shared by the two encoder-making scripts."""
    cfg.check_runtime()
    check_choice(cfg.model, MODEL_NAMES, "--model")
    check_choice(cfg.encoder_usage_info, tuple(USAGE), "--encoder_usage_info")
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
    knn_t: float = 0.5
    knn_k: int = 200
    encoder_usage_info: str = "cifar10"
    data_ratio: float = 1.0
    downstreamTask: str = ""
    monitor_every: int = 1
    save_every: int = 50

    def validate(self) -> "PretrainConfig":
        _check_common_training(self)
        check_choice(self.pretraining_dataset, DATASET_NAMES, "--pretraining_dataset")
        if self.batch_size < 2:
            fail(f"--batch_size {self.batch_size}: expected at least 2 (BatchNorm in the projection head cannot "
                 f"train on batches of one image, and NT-Xent needs another image as a negative)")
        check_positive(self.weight_decay, "--weight_decay", allow_zero=True)
        check_positive(self.knn_t, "--knn-t")
        self.downstreamTask = self.downstreamTask or self.pretraining_dataset
        _check_monitor(self.downstreamTask, self.monitor_every, self.knn_k, self.knn_t)
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
    knn_t: float = 0.5
    knn_k: int = 200
    downstreamTask: str = ""
    monitor_every: int = 1
    save_every: int = 0
    asr_include_target: bool = False

    def validate(self) -> "BadEncoderConfig":
        _check_common_training(self)
        check_choice(self.shadow_dataset, DATASET_NAMES, "--shadow_dataset")
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
        _check_monitor(self.downstreamTask, self.monitor_every, self.knn_k, self.knn_t)
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


PRESET_NAMES = ("ci", "default")  # Trainer/demo.py holds their settings


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
        check_choice(self.preset, PRESET_NAMES, "--preset")
        check_device_flags(self.device, self.gpu)
        if not 0 <= self.seed <= 4:
            fail(f"--seed {self.seed}: expected 0..4 (MAIN.py's seed list has five entries)")
        if not 0 <= self.target <= 9:
            fail(f"--target {self.target}: expected a class index 0..9 of synthetic_down")
        return self


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
        if not self.out and not self.run:
            fail("--out: required (the folder that receives the figures and report.md)")
        if not (self.run or self.moth_log or self.unlearn_log or self.nc_log or self.table):
            fail("--moth_log: name a demo --run folder, or at least one of --moth_log, --unlearn_log, --nc_log "
                 "or --table to draw from")
        return self
