"""The demo's two presets: every knob of a demo run (``demo.py --preset``). ``Trainer/configs.py``'s
PRESET_NAMES lists their names for the flag check, which runs before torch is imported."""
from __future__ import annotations

from dataclasses import dataclass

from INVERSION.defaults import INIT_COST, SIMILARITY_THRESHOLD
from Trainer.configs import KNN_K


@dataclass(frozen=True)
class Preset:
    """Every knob of a demo run; the two presets below are the only ones the CLI offers."""

    model: str
    pretrain: dict
    badencoder: dict
    downstream: dict
    inversion: dict  # MAIN.py flags shared by --phase moth and --phase nc
    moth: dict  # MAIN.py flags of --phase moth only
    unlearn: dict
    detect: dict  # MAIN.py --phase detect flags beyond the data (empty: its defaults, as bench/detect.py judged them)
    knn_k: int = KNN_K  # the scripts' default


PRESETS: dict[str, Preset] = {
    "default": Preset(  # about 7 minutes on 2 idle CPU cores; see docs/DEMO.md for how it was chosen
        model="tiny",
        pretrain={"epochs": 12, "batch_size": 128, "lr": 3e-3, "data_ratio": 1.0},
        badencoder={"epochs": 15, "batch_size": 128, "lr": 0.1, "data_ratio": 0.2, "reference_count": 1},
        downstream={"nn_epochs": 100, "batch_size": 256, "lr": 1e-3},
        inversion={"data_ratio": 0.02, "attack_size": 64, "re_steps": 40, "re_lr": 0.1,
                   "similarity_threshold": SIMILARITY_THRESHOLD, "init_cost": INIT_COST},
        moth={"epochs": 5, "batch_size": 32, "harden_lr": 1e-3, "epsilon": 1e-4, "patience": 6, "monitor_every": 5},
        unlearn={"epochs": 10, "batch_size": 128, "lr": 0.02, "data_ratio": 0.1, "portion": 0.3, "beta": 3.5},
        detect={},
    ),
    "ci": Preset(  # plumbing only: every stage runs, on a few dozen images
        model="tiny",
        pretrain={"epochs": 1, "batch_size": 32, "lr": 1e-3, "data_ratio": 0.02},
        badencoder={"epochs": 1, "batch_size": 32, "lr": 1e-3, "data_ratio": 0.02, "reference_count": 2},
        downstream={"nn_epochs": 2, "batch_size": 128, "lr": 1e-3},
        inversion={"data_ratio": 0.01, "attack_size": 8, "re_steps": 2, "re_lr": 1e-1,
                   "similarity_threshold": SIMILARITY_THRESHOLD, "init_cost": INIT_COST},
        moth={"epochs": 1, "batch_size": 16, "harden_lr": 1e-3, "epsilon": 1e-4, "patience": 3, "monitor_every": 1},
        unlearn={"epochs": 2, "batch_size": 32, "lr": 0.05, "data_ratio": 0.02, "portion": 0.3, "beta": 3.5},
        detect={"re_steps": 2, "re_steps_cap": 2},
        knn_k=20,
    ),
}


def flags(options: dict) -> list[str]:
    """{"re_lr": 0.1} -> ["--re_lr", "0.1"] (knn_k/knn_t keep their dashed names)."""
    out = []
    for key, value in options.items():
        name = key.replace("knn_", "knn-")
        out += [f"--{name}", str(value)]
    return out
