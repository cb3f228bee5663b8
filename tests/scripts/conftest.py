"""Fixtures for the entry-script tests: tiny generated datasets in BadEncoder's npz layout, a tiny
encoder checkpoint and the ground-truth trigger, all written in the real formats."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from DATASETS.triggers import save_ground_truth_trigger
from MODELS.checkpoint import save_checkpoint
from MODELS.simclr import build_model

ROOT = Path(__file__).resolve().parents[2]


def _write_split(folder: Path, n_train: int, n_test: int, classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % classes
        # class-dependent brightness so a kNN has something to find
        x = (rng.integers(0, 80, size=(n, 32, 32, 3)) + (y * 17)[:, None, None, None]).clip(0, 255)
        np.savez(folder / f"{split}.npz", x=x.astype(np.uint8), y=y.astype(np.int64).reshape(-1, 1))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A directory with data/, trigger/ and a tiny encoder, shared by the pipeline tests."""
    root = tmp_path_factory.mktemp("ws")
    _write_split(root / "data" / "cifar10", 64, 20, 10, 0)
    _write_split(root / "data" / "stl10", 40, 30, 10, 1)
    save_ground_truth_trigger(root / "trigger" / "trigger_pt_white_21_10_ap_replace.npz")
    torch.manual_seed(0)
    save_checkpoint(root / "encoder.pth", build_model("tiny"), epoch=1)
    return root


def run_cli(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run an entry script through its command line, as a user would."""
    env = dict(os.environ, RECEIVE_NO_PROGRESS="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def load_script(script: str):
    """Import an entry script as a module (Unlearn-trigger.py has a dash in its name)."""
    spec = importlib.util.spec_from_file_location(script.replace("-", "_").removesuffix(".py"), ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
