#!/usr/bin/env python
"""One prepared check for a GPU: every stage on CUDA against the CPU, the bench on CUDA, the recipe, torchrun.

    python bench/gpu_check.py                         # on a CUDA machine: about 5 minutes on one H100
    python bench/gpu_check.py --device cpu --quick    # the same path on a CPU, tiny sizes (what the test runs)

Four parts, each in its own try/except (a failure is a row of the table, the other parts still run), each
skipped when fewer than its estimate of the ``--budget-s`` seconds are left:

1. ``stages``: every entry script through its command line (pretraining_encoder.py, badencoder.py, MAIN.py
   --phase moth/nc/detect, Unlearn-trigger.py, training_downstream_classifier.py) on ``--device`` and on the
   CPU, from the same inputs (the CPU chain's outputs), on the tiny encoder and a small embedded dataset; the
   outputs are compared (the rules are in COMPARISON below);
2. ``bench``: bench/bench.py's rows (inversion step, early-stop distance, unlearning epoch, feature extraction)
   for resnet18 at 32 pixels and bench/encoders224.py's rows for the two 224-pixel towers (clip_rn50,
   imagenet_resnet50), float32 and ``--amp``, each with its peak ``torch.cuda.max_memory_allocated``;
3. ``recipe``: the README's story on resnet18 (pre-train, inject, check, invert, unlearn, evaluate; the demo's
   stages, shortened to a few epochs and rounds), timed per stage;
4. ``torchrun``: pretraining_encoder.py under ``torchrun --nproc_per_node 1`` against the plain run, and a
   process group of one on the device's backend (NCCL on CUDA, gloo on the CPU).

Nothing is downloaded and nothing beyond requirements.txt (less matplotlib) is imported. The table goes to
stdout and to ``--results``/gpu-check-<device>[-quick].txt, its data to the .json beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("RECEIVE_NO_PROGRESS", "1")  # progress bars off: they would interleave with the tables

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COMPARISON = """\
How a stage's run on the device is compared with the same run on the CPU (the same flags and inputs):
- exact: the output files' names, checkpoint and trigger shapes, the number of epochs and rounds. These do
  not depend on float values, so they must be equal.
- decision: a discrete choice made on a float (the round the early stop picks, whether a threshold was
  reached, the detection verdict). Expected equal, but a value near its threshold can fall on either side
  on another device: a differing decision is reported with the values behind it, not as a failure.
- rel (relative difference <= {rel}): the same random draws on both devices (MAIN.py and the downstream
  classifier draw theirs on the CPU), so only float32 rounding differs: another summation order, and cuDNN's
  TF32 convolutions (on by default on Ampere and newer: a 10-bit mantissa, about 1e-3 relative per layer),
  amplified by a few optimiser steps. {rel} is well above that and well below a wrong computation.
- points (absolute difference <= {points} percentage points): kNN and classifier ACC/ASR on {test_images} test
  images move in steps of 100/{test_images} points; {points} points allow a few images to flip.
- stream: pretraining_encoder.py, badencoder.py and Unlearn-trigger.py draw their augmentations on the
  device, so a CUDA run sees other augmentations than the CPU run: only statistics can agree. Their
  losses and kNN numbers get {factor}x the difference between two CPU runs with different seeds (at least the
  rel/points tolerance above). Values before any draw (the unlearning run's epoch-0 similarities and
  kNN) are compared as rel/points.
"""
TOL_REL = 0.05
TOL_POINTS = 5.0
SPREAD_FACTOR = 3.0
# torchrun with one process joins no process group (UTILS.distributed.start), so it computes what the plain
# run computes; only CUDA's run-to-run nondeterminism (atomic adds in some cuDNN backward kernels) remains.
TOL_TORCHRUN = 1e-4
PARTS = ("stages", "bench", "recipe", "torchrun")
# rough seconds each part needs on one H100 (the budget skips a part when less is left)
ESTIMATE_S = {"stages": 90, "bench": 90, "recipe": 90, "torchrun": 30}
TARGET = 3  # backdoor target class of the stage runs (a class of synthetic_down)


# ---------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Sizes:
    """Every size of one mode (``--quick`` or the GPU run)."""

    stage_images: tuple[int, int]     # (train, test) of both embedded sets of the stage comparison
    stage_epochs: int                 # pretraining, BadEncoder and unlearning epochs of the stage runs
    stage_steps: int                  # MAIN.py --re_steps of the stage runs
    stage_attack: int
    stage_nn_epochs: int
    recipe_images: dict               # embedded set -> (train, test) of the recipe
    model32: str                      # the 32-pixel bench model
    towers: tuple[str, ...]           # the 224-pixel bench models
    attack_size: int                  # bench inversion rows (32 pixels)
    data_ratio: float                 # bench rows of the 50,000-image pool (32 pixels)
    size224: int                      # attack size / images of the 224 rows
    bench_flags: tuple[str, ...]      # bench.py flags: repeats, budget, steps


GPU_SIZES = Sizes(stage_images=(256, 128), stage_epochs=2, stage_steps=10, stage_attack=32, stage_nn_epochs=5,
                  recipe_images={"synthetic": (5000, 1000), "synthetic_down": (2000, 1000)},
                  model32="resnet18", towers=("clip_rn50", "imagenet_resnet50"), attack_size=32, data_ratio=0.01,
                  size224=32, bench_flags=("--repeats", "3", "--budget", "4", "--steps", "3"))
QUICK_SIZES = Sizes(stage_images=(64, 32), stage_epochs=1, stage_steps=3, stage_attack=8, stage_nn_epochs=2,
                    recipe_images={"synthetic": (96, 48), "synthetic_down": (96, 48)},
                    model32="tiny", towers=("clip_tiny", "imagenet_tiny"), attack_size=4, data_ratio=0.001,
                    size224=4, bench_flags=("--repeats", "1", "--budget", "0.01", "--steps", "1"))


def recipe_preset(quick: bool):
    """The README's story shortened: the demo's default preset on resnet18 with a few epochs and rounds
    (``--quick``: the tiny model and the demo's ci sizes)."""
    from DEMO.presets import PRESETS

    if quick:
        return replace(PRESETS["ci"], inversion={**PRESETS["ci"].inversion, "data_ratio": 0.5},
                       unlearn={**PRESETS["ci"].unlearn, "data_ratio": 0.5},
                       pretrain={**PRESETS["ci"].pretrain, "data_ratio": 1.0},
                       badencoder={**PRESETS["ci"].badencoder, "data_ratio": 1.0},
                       detect={**PRESETS["ci"].detect, "data_ratio": 0.5}, knn_k=5)
    d = PRESETS["default"]
    return replace(d, model="resnet18",
                   pretrain={**d.pretrain, "epochs": 2, "data_ratio": 1.0},
                   badencoder={**d.badencoder, "epochs": 2, "data_ratio": 0.4},
                   downstream={**d.downstream, "nn_epochs": 20},
                   inversion={**d.inversion, "data_ratio": 0.04},        # 200 of the 5,000 images
                   moth={**d.moth, "epochs": 1},                          # 200 / batch 32: 6 rounds
                   unlearn={**d.unlearn, "epochs": 2, "data_ratio": 0.2},
                   detect={"data_ratio": 0.02})                            # 100 images, as the demo's


# ---------------------------------------------------------------- small helpers

def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float as None (valid JSON), tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def table(columns: tuple[str, ...], rows: list[tuple]) -> str:
    """Fixed-width text table (columns left-aligned)."""
    body = [tuple("" if v is None else str(v) for v in row) for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(tuple("-" * w for w in widths))] + [line(r) for r in body])


def short(value: Any) -> str:
    """A value as one short cell: floats to 4 significant digits, long lists by length and ends."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, float) for v in value):
            cells = [f"{v:.4g}" for v in value]
            return "[" + (", ".join(cells) if len(cells) <= 3 else f"{cells[0]} .. {cells[-1]} ({len(cells)})") + "]"
        return f"{len(value)} items"
    if isinstance(value, dict):
        return f"{len(value)} entries"
    return str(value)


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (a failed run's one-line error), at most 160 characters."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


class Budget:
    """Seconds left of ``--budget-s``; a part starts only when its estimate still fits."""

    def __init__(self, seconds: float, scale: float) -> None:
        self.began, self.seconds, self.scale = time.perf_counter(), seconds, scale

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.began)

    def fits(self, part: str) -> bool:
        return self.left() >= ESTIMATE_S[part] * self.scale


def write_embedded(data_dir: Path, sizes: dict) -> None:
    """The embedded sets at ``sizes`` (name -> (train, test)) in --data_dir's cache layout, so the loaders
    find them current and do not generate the full sets."""
    import numpy as np

    from DATASETS import synthetic
    from UTILS.io import save_npz

    for name, (train, test) in sizes.items():
        for split, n in (("train", train), ("test", test)):
            x, y = synthetic.generate(name, split, n=n)
            save_npz(data_dir / name / f"{split}.npz", x=x, y=y,
                     generator_version=np.asarray(synthetic.GENERATOR_VERSION, dtype=np.int64))


def child_env(threads: int = 1) -> dict:
    """The environment of a stage's process: no progress bars, unbuffered, ``threads`` CPU threads."""
    return dict(os.environ, RECEIVE_NO_PROGRESS="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
                MKL_NUM_THREADS=str(threads))


@dataclass
class Proc:
    """One command line started in the background; its output goes to ``log``."""

    name: str
    argv: list[str]
    log: Path
    began: float = 0.0
    seconds: float = float("nan")
    rc: Optional[int] = None
    handle: Any = None

    def start(self, cwd: Path, env: dict) -> "Proc":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "w")
        self.began = time.perf_counter()
        self.handle = subprocess.Popen(self.argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self

    def wait(self, timeout: float) -> "Proc":
        try:
            self.rc = self.handle.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            self.handle.kill()
            self.handle.wait()
            self.rc = -9
            with open(self.log, "a") as h:
                h.write(f"\ngpu_check: killed after {timeout:.0f} s (--budget-s)\n")
        self.seconds = time.perf_counter() - self.began
        return self

    def error(self) -> str:
        """'' after success, else the log's last line."""
        return "" if self.rc == 0 else f"rc {self.rc}: {last_line(self.log.read_text())}"


def run_together(procs: list[Proc], cwd: Path, timeout: float, threads: int = 1) -> list[Proc]:
    """Start every process, then wait for all (the CPU reference and the device run side by side)."""
    for p in procs:
        p.start(cwd, child_env(threads))
    deadline = time.perf_counter() + timeout
    return [p.wait(deadline - time.perf_counter()) for p in procs]


# ---------------------------------------------------------------- part 1: every stage on the device vs the CPU

STAGE_NAMES = ("pretrain", "badencoder", "moth", "nc", "detect", "unlearn", "downstream")
STREAM_STAGES = ("pretrain", "badencoder", "unlearn")  # draw their augmentations on the device
SCRIPTS = {"pretrain": "pretraining_encoder.py", "badencoder": "badencoder.py", "moth": "MAIN.py", "nc": "MAIN.py",
           "detect": "MAIN.py", "unlearn": "Unlearn-trigger.py", "downstream": "training_downstream_classifier.py"}


def stage_argv(stage: str, ws: Path, out: Path, device: str, seed: int, sz: Sizes) -> list[str]:
    """The command line of ``stage`` writing into ``out/<stage>``; its inputs are the CPU chain's (ws/ref)."""
    ref, dst = ws / "ref", str(out / stage)
    e = sz.stage_epochs
    common = ["--model", "tiny", "--encoder_usage_info", "synthetic", "--data_dir", str(ws / "data"),
              "--device", device, "--gpu", "0"]
    knn = ["--knn-k", "5"]
    trigger = str(ws / "trigger.npz")
    backdoored = str(ref / "badencoder" / f"model_{e}.pth")
    inversion = ["--seed", str(seed), "--dataset", "synthetic", "--pretrained_encoder", backdoored,
                 "--batch_size", "32", "--harden_lr", "1e-3", "--re_lr", "0.1", "--data_ratio", "1.0",
                 "--similarity_threshold", "0.9", "--attack_size", str(sz.stage_attack),
                 "--re_steps", str(sz.stage_steps), "--downstreamTask", "synthetic_down",
                 "--reference_label", str(TARGET), "--trigger_file", trigger, "--init_cost", "5e-2",
                 "--epsilon", "1e-3", "--patience", "100", "--monitor_every", "1"]
    if stage == "pretrain":
        return common + knn + ["--pretraining_dataset", "synthetic", "--downstreamTask", "synthetic_down",
                               "--epochs", str(e), "--batch_size", "32", "--seed", str(100 + seed),
                               "--results_dir", dst]
    if stage == "badencoder":
        return common + knn + ["--pretrained_encoder", str(ref / "pretrain" / f"model_{e}.pth"),
                               "--shadow_dataset", "synthetic", "--trigger_file", trigger,
                               "--reference_dataset", "synthetic_down", "--reference_label", str(TARGET),
                               "--reference_count", "2", "--downstreamTask", "synthetic_down", "--epochs", str(e),
                               "--batch_size", "32", "--lr", "1e-2", "--seed", str(100 + seed), "--results_dir", dst]
    if stage == "moth":
        return common + knn + inversion + ["--phase", "moth", "--epochs", "1", "--log_dir", dst,
                                           "--results_dir", str(out / stage / "ckpt")]
    if stage in ("nc", "detect"):
        extra = ["--monitor_every", "0"] if stage == "detect" else []
        return common + knn + inversion + ["--phase", stage, "--log_dir", dst, "--results_dir", dst] + extra
    if stage == "unlearn":
        return common + knn + ["--seed", str(seed), "--phase", "moth", "--dataset", "synthetic",
                               "--pretrained_encoder", backdoored,
                               "--re_mask_pattern", str(ref / "moth" / "mask-pattern-best.npz"),
                               "--trigger_file", trigger, "--reference_label", str(TARGET),
                               "--downstreamTask", "synthetic_down", "--epochs", str(e), "--batch_size", "32",
                               "--lr", "0.05", "--data_ratio", "1", "--portion", "0.3", "--beta", "3.5",
                               "--results_dir", dst, "--log_dir", dst]
    if stage == "downstream":
        return common + ["--dataset", "synthetic_down", "--trigger_file", trigger,
                         "--encoder", str(ref / "unlearn" / f"Harden_Unlearn_model_{e}.pth"),
                         "--reference_label", str(TARGET), "--nn_epochs", str(sz.stage_nn_epochs),
                         "--batch_size", "32", "--seed", str(100 + seed), "--results_dir", dst]
    raise ValueError(stage)


def read_json(path: Path) -> dict:
    with open(path) as h:
        return json.load(h)  # the stages write NaN for "not measured"; Python's json reads it


def shapes(path: Path) -> dict:
    """{key: (shape, dtype)} of a checkpoint's state_dict or a trigger npz (read on the CPU)."""
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return {k: (tuple(z[k].shape), str(z[k].dtype)) for k in z.files}
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}


def files(folder: Path) -> list[str]:
    """Every file under ``folder``, relative (the lock file a run holds excluded)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def per_epoch(summary: dict, key: str, epoch: int) -> float:
    return float(next(r[key] for r in summary["per_epoch"] if int(r["epoch"]) == epoch))


# stage -> [(check, kind, value(folder))]; kind: exact | decision | rel | points; stream stages' rel/points
# checks marked "~" get the seed-spread tolerance
Check = tuple[str, str, Callable[[Path], Any]]
CHECKS: dict[str, list[Check]] = {
    "pretrain": [
        ("files", "exact", files),
        ("checkpoint shapes", "exact", lambda d: shapes(max(d.glob("model_*.pth")))),
        ("epochs", "exact", lambda d: read_json(d / "pretrain-metrics.json")["epochs"]),
        ("final loss", "rel~", lambda d: read_json(d / "pretrain-metrics.json")["final_loss"]),
        ("final kNN ACC", "points~", lambda d: read_json(d / "pretrain-metrics.json")["final_knn_acc"]),
    ],
    "badencoder": [
        ("files", "exact", files),
        ("checkpoint shapes", "exact", lambda d: shapes(max(d.glob("model_*.pth")))),
        ("kNN ACC before injection", "points", lambda d: per_epoch(read_json(d / "badencoder-metrics.json"),
                                                                   "knn_acc", 0)),
        ("final loss", "rel~", lambda d: read_json(d / "badencoder-metrics.json")["final_loss"]),
        ("final kNN ASR", "points~", lambda d: read_json(d / "badencoder-metrics.json")["final_knn_asr"]),
    ],
    "moth": [
        ("files", "exact", files),
        ("rounds", "exact", lambda d: read_json(d / "metrics.json")["rounds"]),
        ("trigger shapes", "exact", lambda d: shapes(d / "mask-pattern-best.npz")),
        ("hardened encoder shapes", "exact", lambda d: shapes(d / "ckpt" / "Harden_model_1.pth")),
        ("best round", "decision", lambda d: read_json(d / "metrics.json")["best_round"]),
        ("trigger L1 per round", "rel", lambda d: read_json(d / "metrics.json")["l1_per_round"]),
        ("distance per round", "rel", lambda d: read_json(d / "metrics.json")["distance_per_round"]),
    ],
    "nc": [
        ("files", "exact", files),
        ("threshold reached", "decision", lambda d: read_json(d / "metrics-NC.json")["reached_threshold"]),
        ("steps", "decision", lambda d: read_json(d / "metrics-NC.json")["steps"]),
        ("trigger L1", "rel", lambda d: read_json(d / "metrics-NC.json")["l1"]),
        ("psim", "rel", lambda d: read_json(d / "metrics-NC.json")["psim"]),
    ],
    "detect": [
        ("files", "exact", files),
        ("verdict", "decision", lambda d: read_json(d / "detect.json")["verdict"]),
        ("clean psim", "rel", lambda d: read_json(d / "detect.json")["clean_psim"]),
        ("trigger L1", "rel", lambda d: read_json(d / "detect.json")["l1"]),
        ("psim", "rel", lambda d: read_json(d / "detect.json")["psim"]),
    ],
    "unlearn": [
        ("files", "exact", files),
        ("checkpoint shapes", "exact", lambda d: shapes(max(d.glob("Harden_Unlearn_model_*.pth")))),
        ("epoch-0 init sim", "rel", lambda d: read_json(d / "unlearn-metrics.json")["init_sim"]),
        ("epoch-0 kNN ACC", "points", lambda d: per_epoch(read_json(d / "unlearn-metrics.json"), "knn_acc", 0)),
        ("final loss", "rel~", lambda d: per_epoch(read_json(d / "unlearn-metrics.json"), "loss",
                                                   read_json(d / "unlearn-metrics.json")["epochs"])),
        ("final kNN ASR", "points~", lambda d: read_json(d / "unlearn-metrics.json")["final_knn_asr"]),
    ],
    "downstream": [
        ("files", "exact", files),
        ("classifier shapes", "exact", lambda d: shapes(max(d.glob("clf_*.pth")))),
        ("ACC", "points", lambda d: read_json(d / "downstream-metrics.json")["acc"]),
        ("ASR", "points", lambda d: read_json(d / "downstream-metrics.json")["asr"]),
    ],
}


def difference(kind: str, a: Any, b: Any) -> float:
    """The difference a check's tolerance bounds: relative (max over a list) or absolute points."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max((difference(kind, x, y) for x, y in zip(a, b)), default=0.0)
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if (a == b or (a != a and b != b)) else float("inf")
    if kind.startswith("rel"):
        return abs(a - b) / max(abs(a), abs(b), 1e-12)
    return abs(a - b)


def compare_stage(stage: str, ref: Path, dev: Path, spread: Optional[Path]) -> list[dict]:
    """Every check of ``stage``: the CPU value, the device's, their difference, the tolerance and the verdict."""
    out = []
    for name, kind, value in CHECKS[stage]:
        row = {"stage": stage, "check": name, "kind": kind.rstrip("~")}
        try:
            a, b = value(ref), value(dev)
            row.update(cpu=a, device=b)
            if kind in ("exact", "decision"):
                same = a == b
                row.update(diff="equal" if same else "differs", tol="equal",
                           verdict="ok" if same else ("FAIL" if kind == "exact" else "decision differs"))
            else:
                base = TOL_REL if kind.startswith("rel") else TOL_POINTS
                tol = base
                if kind.endswith("~") and spread is not None:  # augmentations drawn on the device
                    seed_gap = difference(kind, a, value(spread))
                    tol = max(base, SPREAD_FACTOR * seed_gap)
                    row["kind"] += f" (stream: {SPREAD_FACTOR:g}x seed gap {seed_gap:.3g})"
                d = difference(kind, a, b)
                row.update(diff=d, tol=tol, verdict="ok" if d <= tol else "DIFF")
        except Exception as exc:  # a missing file or key: the run did not produce it
            row.update(verdict="FAIL", diff=f"{type(exc).__name__}: {exc}"[:120])
        out.append(row)
    return out


def part_stages(ws: Path, device: str, sz: Sizes, budget: Budget, report: "Report") -> None:
    """Every stage on the CPU and on ``device`` side by side (plus a second CPU seed for the stream stages)."""
    write_embedded(ws / "data", {"synthetic": sz.stage_images, "synthetic_down": sz.stage_images})
    from DATASETS.triggers import save_ground_truth_trigger

    save_ground_truth_trigger(ws / "trigger.npz")
    py = sys.executable
    for stage in STAGE_NAMES:
        if budget.left() < 20 * budget.scale:
            report.stage_rows.append({"stage": stage, "check": "-", "verdict": "skipped (budget)"})
            continue
        script = str(ROOT / SCRIPTS[stage])
        procs = [Proc("cpu", [py, script, *stage_argv(stage, ws, ws / "ref", "cpu", 0, sz)], ws / "logs" / f"{stage}-ref.log"),
                 Proc("device", [py, script, *stage_argv(stage, ws, ws / "dev", device, 0, sz)],
                      ws / "logs" / f"{stage}-dev.log")]
        if stage in STREAM_STAGES:
            procs.append(Proc("cpu seed 1", [py, script, *stage_argv(stage, ws, ws / "seed1", "cpu", 1, sz)],
                              ws / "logs" / f"{stage}-seed1.log"))
        run_together(procs, ROOT, budget.left())
        report.stage_times.append({"stage": stage, "script": SCRIPTS[stage], **{p.name: p.seconds for p in procs}})
        errors = [f"{p.name} run: {p.error()}" for p in procs if p.error()]
        if errors:
            report.stage_rows.append({"stage": stage, "check": "run", "verdict": "FAIL", "diff": "; ".join(errors)})
            if procs[0].rc != 0:  # the later stages need the CPU chain's outputs
                break
            continue
        spread = ws / "seed1" / stage if stage in STREAM_STAGES else None
        report.stage_rows += compare_stage(stage, ws / "ref" / stage, ws / "dev" / stage, spread)
    # a checkpoint written on the device must load on a CPU-only machine
    from MODELS.checkpoint import load_encoder
    import torch

    made = ws / "dev" / "unlearn" / f"Harden_Unlearn_model_{sz.stage_epochs}.pth"
    if made.is_file():
        try:
            load_encoder(made, "tiny", torch.device("cpu"))
            report.stage_rows.append({"stage": "unlearn", "check": f"{device} checkpoint loads on the CPU",
                                      "kind": "exact", "verdict": "ok"})
        except BaseException as exc:  # noqa: BLE001 (a SystemExit from the one-line error too)
            report.stage_rows.append({"stage": "unlearn", "check": f"{device} checkpoint loads on the CPU",
                                      "verdict": "FAIL", "diff": str(exc)[:120]})


# ---------------------------------------------------------------- part 2: the bench table

def load_bench():
    """bench/bench.py as a module (its rows and encoders224's are reused, not restated)."""
    if "bench_tool" in sys.modules:
        return sys.modules["bench_tool"]
    spec = importlib.util.spec_from_file_location("bench_tool", ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_tool"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def peak_of(fn: Callable[[], Any], device) -> tuple[Any, Optional[float]]:
    """fn()'s result and the peak allocated device memory during it (MB; None off CUDA)."""
    import torch

    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    return result, torch.cuda.max_memory_allocated(device) / 2**20


def part_bench(device_flag: str, sz: Sizes, budget: Budget, report: "Report") -> None:
    """bench.py's 32-pixel rows for ``sz.model32`` and encoders224's rows for the towers, float32 and --amp."""
    import torch

    from UTILS.runtime import resolve_device

    B = load_bench()
    from encoders224 import Rows224  # bench.py put bench/ on sys.path

    device = resolve_device(device_flag, 0, verbose=False)
    args = B.parse_args(["--device", device_flag, "--idle-wait", "0", *sz.bench_flags])
    rows32 = B.Rows32(args, device, B.make_pool())
    plan: list[tuple[str, str, Callable[[], Any]]] = []  # (model, precision, call -> Row)
    for stage, size in (("inversion", sz.attack_size), ("distance", sz.data_ratio), ("unlearn", sz.data_ratio),
                        ("features", sz.data_ratio)):
        for precision, name in (("float32", stage), ("amp", f"amp-{stage}")):
            plan.append((sz.model32, precision, lambda n=name, s=size: getattr(rows32, n.replace("-", "_"))(sz.model32, s)))
    for tower in sz.towers:
        for precision in ("float32", "amp"):
            rows = Rows224(rows32, micro_batch=8, amp=precision == "amp")
            for stage in ("inversion", "inversion_micro", "unlearn", "features"):
                plan.append((tower, precision, lambda r=rows, st=stage, t=tower: getattr(r, st)(t, sz.size224)))
    for model, precision, call in plan:
        if budget.left() < 10 * budget.scale:
            report.bench_rows.append({"model": model, "precision": precision, "stage": "-",
                                      "error": "skipped (budget)"})
            continue
        try:
            row, peak = peak_of(call, device)
            report.bench_rows.append({"model": model, "precision": precision, "stage": row.stage,
                                      "size": f"{row.axis} {row.size:g}", "ours_s": row.ours_s, "floor_s": row.floor_s,
                                      "ratio": row.ratio, "repeats": row.repeats, "peak_mb": peak, "note": row.note})
        except Exception as exc:  # one row's failure (e.g. out of memory) is that row's
            report.bench_rows.append({"model": model, "precision": precision, "stage": "-",
                                      "error": f"{type(exc).__name__}: {exc}"[:160]})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report.bench_header = f"{B.device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"


def amp_speedups(rows: list[dict]) -> list[tuple]:
    """Per model and stage: ours with --amp / ours in float32. bench.py's 32-pixel --amp rows time both
    (their floor is ours in float32); the 224 rows are two rows of the same run."""
    out, fp32 = [], {}
    for r in rows:
        if "error" in r:
            continue
        stage = r["stage"].replace(" --amp", "")
        if r["precision"] == "float32":
            fp32[(r["model"], stage)] = r
        elif "floor = ours in float32" in (r.get("note") or ""):
            out.append((r["model"], stage, f"{r['ratio']:.2f}", r["peak_mb"]))
        elif (r["model"], stage) in fp32:
            base = fp32[(r["model"], stage)]
            out.append((r["model"], stage, f"{r['ours_s'] / base['ours_s']:.2f}", r["peak_mb"]))
    return out


# ---------------------------------------------------------------- part 3: the recipe, timed per stage

def part_recipe(ws: Path, device_flag: str, quick: bool, sz: Sizes, report: "Report") -> None:
    """The demo's stages (the README's story) in one process on ``device_flag``; each stage's seconds."""
    from DEMO.demo import DemoRun
    from DEMO.layout import RunLayout
    from Trainer.configs import DemoConfig
    from Trainer.filenames import BEST_TRIGGER

    data = ws / "recipe-data"
    write_embedded(data, sz.recipe_images)
    preset = recipe_preset(quick)
    run = DemoRun(DemoConfig(out=str(ws / "recipe"), device=device_flag, data_dir=str(data), target=7),
                  preset, RunLayout(ws / "recipe"))
    report.recipe_model = preset.model
    log = ws / "logs" / "recipe.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        with open(log, "w") as h, contextlib.redirect_stdout(h), contextlib.redirect_stderr(h):
            run.prepare()
            backdoored = run.inject(run.pretrain())
            run.detect("backdoored", backdoored)
            before = run.evaluate("backdoored", backdoored)
            moth = run.invert("moth")
            after = run.evaluate("RECEIVE", run.unlearn("moth", run.layout.moth_log / BEST_TRIGGER))
        report.recipe_result = {"backdoored ACC/ASR": [before["acc"], before["asr"]],
                                "RECEIVE ACC/ASR": [after["acc"], after["asr"]],
                                "moth rounds": moth.get("rounds"), "chosen round": moth.get("best_round")}
    except BaseException as exc:  # noqa: BLE001 (a stage's SystemExit is its one-line error)
        if isinstance(exc, KeyboardInterrupt):
            raise
        report.recipe_error = f"{type(exc).__name__}: {exc} ({last_line(log.read_text())})"[:240]
    finally:
        report.recipe_times = list(run.stages.times)
        report.recipe_total = time.perf_counter() - began


# ---------------------------------------------------------------- part 4: torchrun

def part_torchrun(ws: Path, device: str, sz: Sizes, budget: Budget, report: "Report") -> None:
    """pretraining_encoder.py under ``torchrun --nproc_per_node 1`` against the plain run, then a process group
    of one on the device's backend (NCCL on CUDA)."""
    if not (ws / "data").is_dir():
        write_embedded(ws / "data", {"synthetic": sz.stage_images, "synthetic_down": sz.stage_images})
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    argv = stage_argv("pretrain", ws, ws / "torchrun", device, 0, sz)
    procs = [Proc("torchrun", launcher + [str(ROOT / SCRIPTS["pretrain"]), *argv], ws / "logs" / "torchrun.log")]
    plain = ws / "dev" / "pretrain"
    if not (plain / "pretrain-metrics.json").is_file():  # the stages part did not run it
        procs.append(Proc("plain", [sys.executable, str(ROOT / SCRIPTS["pretrain"]),
                                    *stage_argv("pretrain", ws, ws / "dev", device, 0, sz)], ws / "logs" / "plain.log"))
    run_together(procs, ROOT, budget.left())
    errors = "; ".join(p.error() for p in procs if p.error())
    row = {"check": f"pretraining_encoder.py, torchrun 1 process vs plain ({device})", "seconds": procs[0].seconds}
    if errors:
        row.update(verdict="FAIL", detail=errors)
    else:
        a = [r["loss"] for r in read_json(plain / "pretrain-metrics.json")["per_epoch"]]
        b = [r["loss"] for r in read_json(ws / "torchrun" / "pretrain" / "pretrain-metrics.json")["per_epoch"]]
        d = difference("rel", a, b)
        row.update(verdict="ok" if d <= TOL_TORCHRUN else "DIFF",
                   detail=f"per-epoch loss {short(a)} vs {short(b)}, rel diff {d:.2g} (tol {TOL_TORCHRUN:g})")
    report.torchrun_rows.append(row)
    smoke = Proc("group", launcher + [str(Path(__file__).resolve()), "--group-smoke", "--device", device],
                 ws / "logs" / "group.log")
    run_together([smoke], ROOT, budget.left())
    text = smoke.log.read_text()
    found = [ln for ln in text.splitlines() if ln.startswith("group smoke:")]
    report.torchrun_rows.append({"check": f"process group of 1 ({device})", "seconds": smoke.seconds,
                                 "verdict": "ok" if smoke.rc == 0 and found else "FAIL",
                                 "detail": found[-1] if found else smoke.error()})


def group_smoke(device_flag: str) -> int:
    """Under torchrun: join a process group on the backend the stages would use for ``device_flag`` (NCCL on
    CUDA, via UTILS.distributed.backend_for), all-reduce and all-gather a tensor on the device, leave."""
    import torch
    import torch.distributed as dist

    from UTILS.distributed import backend_for
    from UTILS.runtime import resolve_device

    dev = resolve_device(device_flag, int(os.environ.get("LOCAL_RANK", "0")), verbose=False)
    backend = backend_for(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method="env://")
    x = torch.arange(4, dtype=torch.float32, device=dev)
    dist.all_reduce(x)
    gathered = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x)
    dist.barrier()
    ok = torch.equal(torch.cat(gathered).cpu(), torch.arange(4, dtype=torch.float32).repeat(dist.get_world_size())
                     * dist.get_world_size())
    version = ""
    if backend == "nccl":
        with contextlib.suppress(Exception):
            version = " " + ".".join(str(v) for v in torch.cuda.nccl.version())
    dist.destroy_process_group()
    print(f"group smoke: backend {backend}{version}, world {len(gathered)}, all_reduce + all_gather "
          f"{'correct' if ok else 'WRONG'} on {dev}", flush=True)
    return 0 if ok else 1


# ---------------------------------------------------------------- the report

@dataclass
class Report:
    """Every part's rows, written as one text table and one JSON file."""

    device: str
    quick: bool
    environment: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)          # part -> "ok" / "failed: ..." / "skipped (budget)"
    stage_rows: list = field(default_factory=list)
    stage_times: list = field(default_factory=list)
    bench_rows: list = field(default_factory=list)
    bench_header: str = ""
    recipe_model: str = ""
    recipe_times: list = field(default_factory=list)
    recipe_total: float = float("nan")
    recipe_result: dict = field(default_factory=dict)
    recipe_error: str = ""
    torchrun_rows: list = field(default_factory=list)
    total_s: float = float("nan")

    def text(self) -> str:
        """Every part that was asked for, as text tables under a header naming the machine."""
        env = ", ".join(f"{k} {v}" for k, v in self.environment.items())
        out = [f"RECEIVE gpu_check on {self.device}{' (--quick)' if self.quick else ''}: {env}",
               f"total {self.total_s:.0f} s; parts: " + ", ".join(f"{k} {v}" for k, v in self.parts.items()), ""]
        sections = {"stages": self._stages, "bench": self._bench, "recipe": self._recipe, "torchrun": self._torchrun}
        for part, section in sections.items():
            if part in self.parts:
                out += section() + [""]
        return "\n".join(out).rstrip() + "\n"

    def _stages(self) -> list[str]:
        out = ["1. Every stage through its command line, tiny encoder: the device run against the same run on the CPU",
               table(("stage", "check", "kind", "cpu", "device", "diff", "tol", "verdict"),
                     [(r["stage"], r["check"], r.get("kind", ""), short(r.get("cpu", "")), short(r.get("device", "")),
                       short(r.get("diff", "")), short(r.get("tol", "")), r["verdict"]) for r in self.stage_rows])]
        if self.stage_times:
            names = [k for k in ("cpu", "device", "cpu seed 1") if any(k in t for t in self.stage_times)]
            out += ["", "stage seconds (each a fresh process: interpreter start and device set-up included; the CPU "
                        "runs side by side with the device run)",
                    table(("stage", *(f"device ({self.device})" if n == "device" else n for n in names)),
                          [(t["stage"], *(f"{t.get(n, float('nan')):.1f}" for n in names)) for t in self.stage_times])]
        images = (QUICK_SIZES if self.quick else GPU_SIZES).stage_images[1]
        return out + ["", COMPARISON.format(rel=TOL_REL, points=TOL_POINTS, factor=f"{SPREAD_FACTOR:g}",
                                            test_images=images).rstrip()]

    def _bench(self) -> list[str]:
        cell = lambda r, k, f: f.format(r[k]) if r.get(k) is not None else ""  # noqa: E731
        return [f"2. bench.py rows on {self.device} ({self.bench_header}); ratio = ours / floor, medians; peak MB = "
                "torch.cuda.max_memory_allocated over the row (ours and floor)",
                table(("model", "precision", "stage", "size", "ours (s)", "floor (s)", "ratio", "n", "peak MB", "note"),
                      [(r["model"], r["precision"], r["stage"], r.get("size", ""), cell(r, "ours_s", "{:.4f}"),
                        cell(r, "floor_s", "{:.4f}"), cell(r, "ratio", "{:.2f}"), r.get("repeats", ""),
                        cell(r, "peak_mb", "{:.0f}"), r.get("error") or r.get("note", "")) for r in self.bench_rows]),
                "", "--amp speed-up (ours with --amp / ours in float32; below 1 is faster)",
                table(("model", "stage", "amp/fp32", "peak MB (amp)"),
                      [(m, s, v, "" if p is None else f"{p:.0f}") for m, s, v, p in amp_speedups(self.bench_rows)])]

    def _recipe(self) -> list[str]:
        out = [f"3. The recipe on {self.recipe_model} (the demo's stages, shortened), one process on {self.device}; "
               "the first stage includes the device's set-up",
               table(("stage", "seconds"), [(t["stage"], f"{t['seconds']:.1f}") for t in self.recipe_times]
                     + [("total", f"{self.recipe_total:.1f}")])]
        if self.recipe_result:
            out.append(f"result: {json.dumps(jsonable(self.recipe_result))}")
        if self.recipe_error:
            out.append(f"FAILED: {self.recipe_error}")
        return out

    def _torchrun(self) -> list[str]:
        return ["4. torchrun", table(("check", "seconds", "verdict", "detail"),
                                     [(r["check"], f"{r.get('seconds', float('nan')):.1f}", r["verdict"],
                                       r.get("detail", "")) for r in self.torchrun_rows])]

    def data(self) -> dict:
        return jsonable({k: v for k, v in self.__dict__.items()})


def environment(device_flag: str) -> dict:
    """torch, CUDA, cuDNN, the GPU and the TF32 settings the stages run under."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__}
    if device_flag.startswith("cuda") or (device_flag == "auto" and torch.cuda.is_available()):
        with contextlib.suppress(Exception):
            env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                       cudnn=torch.backends.cudnn.version(),
                       tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        env["cpus"] = os.cpu_count()
    return env


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="the device checked against the CPU: cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the same path in seconds (a CPU check)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder of the txt and json")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock seconds for all parts (default 330 on CUDA, none on the CPU); a part whose "
                        "estimate no longer fits is skipped")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list from {','.join(PARTS)}")
    p.add_argument("--work", default="", help="folder for the runs (default: a temporary folder, removed)")
    p.add_argument("--group-smoke", action="store_true", help=argparse.SUPPRESS)  # the torchrun child
    args = p.parse_args(argv)
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = [s for s in args.parts if s not in PARTS]
    if bad:
        p.error(f"--parts: unknown {bad}; expected from {PARTS}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device {args.device}: expected cuda, cuda:N or cpu")
    return args


def main(argv=None) -> Report:
    """Run the chosen parts; print and write the report; returns it."""
    args = parse_args(argv)
    if args.group_smoke:
        sys.exit(group_smoke(args.device))
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}: CUDA is not available here (torch {torch.__version__}); "
                 f"use --device cpu --quick for the CPU check")
    sz = QUICK_SIZES if args.quick else GPU_SIZES
    # off CUDA the estimates (GPU seconds) mean nothing: the budget then only guards against a hang
    cuda = args.device.startswith("cuda")
    budget = Budget(args.budget_s if args.budget_s is not None else (330.0 if cuda else math.inf), 1.0 if cuda else 0.0)
    report = Report(device=args.device, quick=args.quick, environment=environment(args.device))
    with contextlib.ExitStack() as stack:
        ws = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        ws.mkdir(parents=True, exist_ok=True)
        work = {"stages": lambda: part_stages(ws, args.device, sz, budget, report),
                "bench": lambda: part_bench(args.device, sz, budget, report),
                "recipe": lambda: part_recipe(ws, args.device, args.quick, sz, report),
                "torchrun": lambda: part_torchrun(ws, args.device, sz, budget, report)}
        for part in args.parts:
            if not budget.fits(part):
                report.parts[part] = "skipped (budget)"
                continue
            began = time.perf_counter()
            print(f"gpu_check: {part} ...", file=sys.stderr, flush=True)
            try:
                work[part]()
                report.parts[part] = f"ran in {time.perf_counter() - began:.0f} s"
            except Exception as exc:  # one part's failure must not stop the others
                report.parts[part] = f"FAILED after {time.perf_counter() - began:.0f} s: {type(exc).__name__}: {exc}"
                traceback.print_exc()
            print(f"gpu_check: {part} {report.parts[part]}", file=sys.stderr, flush=True)
        report.total_s = time.perf_counter() - budget.began
    from UTILS.io import write_result

    stem = f"gpu-check-{args.device.replace(':', '')}{'-quick' if args.quick else ''}"
    text = report.text()
    write_result(args.results, stem, text, report.data())
    print(text)
    print(f"gpu_check: total wall time {report.total_s:.0f} s; tables in {Path(args.results) / stem}.txt|json")
    return report


if __name__ == "__main__":
    main()
