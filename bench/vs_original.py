#!/usr/bin/env python
"""Our speed against the paper's own code, side by side in one run on one machine (a ratio ours / original).

    python bench/vs_original.py --orig /path/to/RECEIVE     # a local snapshot (work tree) of the original
    python bench/vs_original.py                             # without one: a one-line skip, exit 0

Nothing of the original is copied here: ``--orig`` names a folder the user provides, read where it lies.
Three parts (``--parts``), each side in its own fresh process, alternating, ``--repeats`` times:

- ``round``: one inversion round, the original's ``INVERSION.inversion.Trigger.generate`` against our
  ``invert_trigger`` on the same tiny encoder, attack images and start trigger. Both run exactly ``--steps``
  steps: the threshold is set low enough that both reach it (the original loops until it does; ours is given
  a step cap far above ``--steps``, so the cap never acts and both do the same computation).
- ``moth``: a short moth loop, each side's ``MAIN.py --phase moth`` with the same flags on the same encoder
  file and data files (``--moth-rounds`` rounds of ``--moth-steps`` steps in one epoch: ``--epsilon 0`` and a
  patience above the rounds, so neither early stop ends it sooner on one side than on the other). Ours also
  gets ``--re_steps_cap`` at 100 x the steps, which replaces our stall rule (docs/ALGORITHMS.md §1), so both
  do the same computation. Timed inside each process: the original's ``MothTrainer.mothHarden`` against our
  ``IterativeInversion.run``, each from the kNN check before round 0 to the hardened encoder's file.
- ``unlearn``: one unlearning epoch, each side's ``Unlearn-trigger.py --epochs 1`` with the same flags on the
  same encoder, inverted trigger, images and batch size. Timed: the original's loop over its training loader
  against our ``unlearn_epoch`` (the kNN checks and the checkpoint around the epoch are left out on both).

The original writes three images every inversion step and every unlearning batch
(``torchvision.utils.save_image``) and ours writes nothing inside those loops: that difference is part of
what is timed, by design (it is the original's behaviour).

Running the original needs run-time patches, all in this file (``enter_original``, ``original_data``) and
only in the child process that runs the original: its package names (DATASETS, MODELS, INVERSION, ...) clash
with ours, so our modules are dropped from ``sys.modules`` once the encoder is built; its ``.cuda(device)``
calls become no-ops when CUDA is absent; it runs with the snapshot as working folder (it reads
``trigger/trigger_pt_white_21_10_ap_replace.npz`` relative to it) while writing its files to a temporary
folder; ``setproctitle`` and ``pandas`` (the latter writes one CSV after the moth loop) are replaced by
stubs when not installed; its encoder builder returns our encoder (the original then loads the same
checkpoint file into it); and its data loaders (torchvision's CIFAR-10/STL-10 with ``download=True``, 6
workers) are replaced by in-memory loaders over the same npz files that our side reads, with the
original's normalisation and trigger stamping (no workers: the data is in memory).
"""
from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import json
import os
import platform
import re
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("INVERSION/inversion.py", "util.py", "MAIN.py", "Unlearn-trigger.py", "Trainer/moth.py",
          "DATASETS/__init__.py", "MODELS/__init__.py", "trigger/trigger_pt_white_21_10_ap_replace.npz")
OURS = ("DATASETS", "MODELS", "INVERSION", "Trainer", "EVALUATION", "UTILS", "DEMO", "util")
PARTS = ("round", "moth", "unlearn")
MARK = "vs_original result: "
FIRST_STEP_SEED = 100  # the original's Trigger.seed starts here and rises by one per inversion step
# The shared files of the moth and unlearning parts, written once per run (write_workspace).
ENCODER, TRIGGER, INVERTED = "encoder.pth", "trigger.npz", "inverted.npz"
PRETRAIN, DOWNSTREAM = "cifar10", "stl10"  # --dataset and --downstreamTask of both sides
MONITOR_IMAGES = (256, 64)  # kNN monitor: downstream train (the bank, above --knn-k 200) and test images
BATCH = 32  # the moth's --batch_size: one round per 32 images of the inversion set
UNLEARN = {"--lr": "1e-4", "--portion": "0.3", "--beta": "3.5"}  # the unlearning loss of the README's recipe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--orig", default="", help="folder of a local snapshot of the original RECEIVE code (its work tree)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which comparisons, comma-separated: {', '.join(PARTS)}")
    p.add_argument("--model", default="tiny", help="our encoder architecture both sides run (BadEncoder key names)")
    p.add_argument("--steps", type=int, default=100, help="round: inversion steps of the round (--re_steps)")
    p.add_argument("--attack-size", type=int, default=32, help="round and moth: attack images (--attack_size)")
    p.add_argument("--lr", type=float, default=0.1, help="round and moth: the inversion's Adam learning rate (--re_lr)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="round and moth: similarity threshold; low, so both sides reach it and run exactly the steps")
    p.add_argument("--moth-rounds", type=int, default=4, help="moth: rounds (the inversion set holds 32 x this)")
    p.add_argument("--moth-steps", type=int, default=30, help="moth: inversion steps per round (--re_steps)")
    p.add_argument("--unlearn-images", type=int, default=512, help="unlearn: images of the unlearning set")
    p.add_argument("--unlearn-batch", type=int, default=128, help="unlearn: --batch_size")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side per part, alternating")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder of <name>.txt|json")
    p.add_argument("--name", default="", help="file stem (default vs-original-<device>)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where both sides run")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of both sides (1: steady on a shared CPU, where spinning OpenMP threads "
                        "slow small convolutions many-fold)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile (printed under the table)")
    p.add_argument("--child", choices=("ours", "original"), help=argparse.SUPPRESS)
    p.add_argument("--part", choices=PARTS, default="round", help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    p.add_argument("--log", default="", help=argparse.SUPPRESS)
    return p


def parse_parts(text: str) -> list[str]:
    """``--parts`` as a list in the order given, or one error line naming an unknown part."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise SystemExit(f"error: --parts {text}: expected some of {', '.join(PARTS)}, comma-separated")
    return parts


# ---------------------------------------------------------------- shared inputs

def start_trigger(rng):
    """The shared start trigger: mask (32, 32) and pattern (3, 32, 32) uniform in [0, 1)."""
    return rng.random_sample((32, 32)), rng.random_sample((3, 32, 32))


def inputs(args):
    """The round's inputs: the encoder (seed 0), attack images (N, 3, 32, 32) in [0, 1] and a start trigger."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from MODELS.simclr import build_model

    torch.manual_seed(0)
    model = build_model(args.model).to(args.device).eval()
    rng = np.random.RandomState(0)
    images = torch.from_numpy(rng.randint(0, 256, (args.attack_size, 3, 32, 32)).astype(np.float32) / 255)
    mask, pattern = start_trigger(rng)
    return model, images.to(args.device), mask, pattern


def write_workspace(args, work: Path) -> None:
    """The files both sides of the moth and unlearning parts read: the encoder checkpoint (seed 0), the injected
    trigger, an inverted trigger (the round's start trigger) and, per part, ``data-<part>/<name>/{train,test}.npz``
    in BadEncoder's layout (uint8 (N, 32, 32, 3) images whose brightness follows the label, so the kNN has
    something to find)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from DATASETS.triggers import InvertedTrigger, save_ground_truth_trigger
    from MODELS.checkpoint import save_checkpoint
    from MODELS.simclr import build_model

    torch.manual_seed(0)
    save_checkpoint(work / ENCODER, build_model(args.model), epoch=1)
    save_ground_truth_trigger(work / TRIGGER)
    InvertedTrigger(*start_trigger(np.random.RandomState(0))).save(work / INVERTED)
    rng = np.random.default_rng(0)
    sizes = {"moth": BATCH * args.moth_rounds, "unlearn": args.unlearn_images}
    for part, n in sizes.items():
        for name, (n_train, n_test) in ((PRETRAIN, (n, BATCH)), (DOWNSTREAM, MONITOR_IMAGES)):
            folder = work / f"data-{part}" / name
            folder.mkdir(parents=True, exist_ok=True)
            for split, count in (("train", n_train), ("test", n_test)):
                y = np.arange(count) % 10
                x = (rng.integers(0, 80, size=(count, 32, 32, 3)) + (y * 17)[:, None, None, None]).clip(0, 255)
                np.savez(folder / f"{split}.npz", x=x.astype(np.uint8), y=y.astype(np.int64).reshape(-1, 1))


def script_flags(part: str, args, log: Path, ours: bool) -> list[str]:
    """The command line of ``MAIN.py --phase moth`` (part moth) or ``Unlearn-trigger.py`` (part unlearn): the
    same flags on both sides, then (``ours``) the flags only ours has: the device, where the data lies, the
    step cap (above every round's steps), and ASR over every stamped test image as the original computes it."""
    work = Path(args.work)
    flags = ["--dataset", PRETRAIN, "--downstreamTask", DOWNSTREAM, "--model", args.model,
             "--encoder_usage_info", "cifar10", "--pretrained_encoder", str(work / ENCODER),
             "--trigger_file", str(work / TRIGGER), "--data_ratio", "1.0", "--gpu", "0", "--seed", "0",
             "--epochs", "1", "--knn-k", "200", "--knn-t", "0.5",
             "--log_dir", str(log / "logs"), "--results_dir", str(log / "results")]
    if part == "moth":
        flags += ["--phase", "moth", "--batch_size", str(BATCH), "--attack_size", str(args.attack_size),
                  "--re_steps", str(args.moth_steps), "--re_lr", str(args.lr), "--init_cost", "0.05",
                  "--similarity_threshold", str(args.threshold), "--harden_lr", "1e-3", "--reference_label", "0",
                  "--epsilon", "0", "--patience", str(args.moth_rounds + 1)]
    else:
        flags += ["--batch_size", str(args.unlearn_batch), "--re_mask_pattern", str(work / INVERTED),
                  "--reference_label", "0", *(s for kv in UNLEARN.items() for s in kv)]
    if ours:
        flags += ["--device", args.device, "--data_dir", str(work / f"data-{part}"), "--asr_include_target"]
        if part == "moth":
            flags += ["--re_steps_cap", str(100 * args.moth_steps)]
    return flags


def timed(owner, name: str, calls: list) -> None:
    """Replace ``owner.name`` by a wrapper that appends ``(seconds, first argument)`` of each call to ``calls``."""
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*a, **k):
        began = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            calls.append((time.perf_counter() - began, a[0] if a else None))

    setattr(owner, name, wrapper)


# ---------------------------------------------------------------- our side

def ours_child(args) -> dict:
    """Our side of ``args.part`` in this process; its seconds and how much it computed."""
    if args.part == "round":
        return ours_round(args)
    sys.path.insert(0, str(ROOT))
    calls: list = []
    log = Path(args.log)
    if args.part == "moth":
        import Trainer.moth

        timed(Trainer.moth.IterativeInversion, "run", calls)
        script = "MAIN.py"
    else:
        import Trainer.unlearn

        timed(Trainer.unlearn, "unlearn_epoch", calls)  # looked up at call time by run_unlearn
        script = "Unlearn-trigger.py"
    spec = importlib.util.spec_from_file_location(script.replace("-", "_")[:-3], ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(script_flags(args.part, args, log, ours=True))
    if args.part == "moth":
        with open(log / "logs" / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {"seconds": calls[0][0], "rounds": len(rows), "steps": sum(int(r["steps"]) for r in rows),
                "reached": all(r["reached"] == "1" for r in rows)}
    return {"seconds": calls[0][0], "batches": len(Trainer.unlearn.epoch_batches(args.unlearn_images,
                                                                                 args.unlearn_batch))}


def ours_round(args) -> dict:
    """Our invert_trigger on the shared inputs; its seconds and steps."""
    import torch

    model, images, mask, pattern = inputs(args)
    from DATASETS.stats import get_usage
    from INVERSION.inversion import InversionConfig, invert_trigger

    config = InversionConfig(steps=args.steps, lr=args.lr, threshold=args.threshold, init_cost=5e-2,
                             step_cap=100 * args.steps)  # far above --steps: the cap never acts
    init = (torch.as_tensor(mask, dtype=torch.float32, device=args.device),
            torch.as_tensor(pattern, dtype=torch.float32, device=args.device))
    began = time.perf_counter()
    result = invert_trigger(model.f, images, get_usage("cifar10"), config, init)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "steps": result.steps, "reached": bool(result.reached)}


# ---------------------------------------------------------------- the original's side

def enter_original(args) -> None:
    """Make this process run the original's code (the run-time patches of the module docstring); call it after
    everything of ours that the child needs is built."""
    import torch

    # 1. the original's packages have our packages' names: forget ours (built objects keep their classes)
    for name in list(sys.modules):
        if name.split(".")[0] in OURS:
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    orig = Path(args.orig).resolve()
    sys.path.insert(0, str(orig))
    # 2. its .cuda(device) calls, on a machine without CUDA: leave the tensor where it is (the CPU)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    # 3. it reads trigger/... relative to the working folder; its own files go to --log
    os.chdir(orig)
    # 4. two modules it imports for a process title and one CSV, when they are not installed
    if importlib.util.find_spec("setproctitle") is None:
        sys.modules["setproctitle"] = types.SimpleNamespace(setproctitle=lambda title: None)
    if importlib.util.find_spec("pandas") is None:
        sys.modules["pandas"] = types.SimpleNamespace(DataFrame=_Frame)


class _Frame:
    """What the original asks of ``pandas.DataFrame``: rows and column names, written by ``to_csv``."""

    def __init__(self, rows, columns):
        self.rows, self.columns = [list(r) for r in rows], list(columns)

    def to_csv(self, path, index=False):
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            writer.writerows(self.rows)


def original_data(work: Path, part: str, passes: list):
    """The original's ``get_dataloader`` and ``get_backdoored_loader`` over ``work/data-<part>``'s npz files:
    the first int(N * ratio) images, ToTensor + Normalize with its statistics, its BadEncoder stamping
    (``img * tm + t`` on uint8, label ``reference_label``), shuffled when ``train``. Every full pass over a
    loader appends ``{"name", "seconds", "batches"}`` to ``passes``."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from util import _mean, _std  # the original's

    class TimedLoader(DataLoader):
        def __iter__(self):
            began, batches = time.perf_counter(), 0
            for batch in super().__iter__():
                batches += 1
                yield batch
            passes.append({"name": self.name, "seconds": time.perf_counter() - began, "batches": batches})

    def loader(dataset, train, ratio, *, batch_size, usage, trigger_file=None, label=None):
        split = "train" if train else "test"
        arrays = np.load(work / f"data-{part}" / dataset / f"{split}.npz")
        x, y = arrays["x"], arrays["y"].reshape(-1)
        if ratio < 1:
            x, y = x[:int(len(x) * ratio)], y[:int(len(y) * ratio)]
        if trigger_file is not None:
            trigger = np.load(trigger_file)
            x = (x * trigger["tm"][0] + trigger["t"][0]).astype(np.uint8)
            y = np.full_like(y, label)
        images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (_mean[usage], _std[usage]))
        data = TensorDataset((images - mean) / std, torch.from_numpy(y))
        data.classes = list(range(10))
        out = TimedLoader(data, batch_size=batch_size, shuffle=train, num_workers=0)
        out.name = f"{dataset}-{split}" + ("-stamped" if trigger_file else "")
        return out

    def get_dataloader(dataset, train=True, ratio=1.0, batch_size=128, encoder_usage_info="cifar10"):
        return loader(dataset, train, ratio, batch_size=batch_size, usage=encoder_usage_info)

    def get_backdoored_loader(dataset, trigger_file, train=True, ratio=1.0, batch_size=128, reference_label=-1,
                              mode="non-targeted", encoder_usage_info="cifar10"):
        return loader(dataset, train, ratio, batch_size=batch_size, usage=encoder_usage_info,
                      trigger_file=trigger_file, label=reference_label)

    return get_dataloader, get_backdoored_loader


def original_child(args) -> dict:
    """The original's side of ``args.part`` in this process; its seconds and how much it computed."""
    if args.part == "round":
        return original_round(args)
    sys.path.insert(0, str(ROOT))
    from MODELS.simclr import build_model

    model = build_model(args.model)  # ours; the original loads the same checkpoint file into it
    enter_original(args)
    import DATASETS  # the original's
    import MODELS  # the original's

    passes: list = []
    DATASETS.get_dataloader, DATASETS.get_backdoored_loader = original_data(Path(args.work), args.part, passes)
    MODELS.get_encoder_architecture_usage = lambda _args: model
    log = Path(args.log)
    argv = script_flags(args.part, args, log, ours=False)
    if args.part == "moth":
        import Trainer.moth  # the original's

        calls: list = []
        timed(Trainer.moth.MothTrainer, "mothHarden", calls)
        run_script("MAIN.py", argv)
        seconds, trainer = calls[0]
        rounds = [p for p in (log / "logs").iterdir() if re.fullmatch(r"mask-pattern-\d+\.npz", p.name)]
        return {"seconds": seconds, "rounds": len(rounds), "steps": trainer.trigger.seed - FIRST_STEP_SEED,
                "images_files": len(list((log / "logs").glob("*.jpg")))}
    run_script("Unlearn-trigger.py", argv)
    epoch = [p for p in passes if p["name"] == f"{PRETRAIN}-train"][-1]  # the first pass is test_init_sim's
    return {"seconds": epoch["seconds"], "batches": epoch["batches"]}


def run_script(script: str, argv: list[str]) -> None:
    """The original's entry script, as ``python <script> <argv>`` would run it, in this process."""
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


def original_round(args) -> dict:
    """The original's Trigger.generate on the shared inputs; its seconds."""
    import torch

    model, images, mask, pattern = inputs(args)
    enter_original(args)
    from INVERSION.inversion import Trigger  # the original's
    from util import preprocess  # the original's

    ns = types.SimpleNamespace(device=torch.device(args.device), log_dir=args.log, encoder_usage_info="cifar10")
    trigger = Trigger(model.f, ns, steps=args.steps, img_rows=32, img_cols=32, init_cost=5e-2,
                      similarity_threshold=args.threshold)
    x = preprocess(images, "cifar10")
    y = torch.zeros(len(images), dtype=torch.long)
    began = time.perf_counter()
    trigger.generate((None, None), x, y, attack_size=args.attack_size, steps=args.steps, learning_rate=args.lr,
                     init_m=mask, init_p=pattern, draw=False)
    seconds = time.perf_counter() - began
    images_written = len(list(Path(args.log).glob("*.jpg")))
    return {"seconds": seconds, "steps": trigger.seed - FIRST_STEP_SEED, "images_files": images_written}


# ---------------------------------------------------------------- the parent: runs, table

def run_side(side: str, part: str, args, work: Path, log: Path) -> dict:
    """One side of one part in a fresh process; its result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--part", part, "--orig", args.orig,
           "--model", args.model, "--steps", str(args.steps), "--attack-size", str(args.attack_size),
           "--lr", str(args.lr), "--threshold", str(args.threshold), "--moth-rounds", str(args.moth_rounds),
           "--moth-steps", str(args.moth_steps), "--unlearn-images", str(args.unlearn_images),
           "--unlearn-batch", str(args.unlearn_batch), "--device", args.device, "--work", str(work),
           "--log", str(log)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, RECEIVE_NO_PROGRESS="1", OMP_NUM_THREADS=str(args.threads),
                                   MKL_NUM_THREADS=str(args.threads)))
    found = [ln.split(MARK, 1)[1] for ln in proc.stdout.splitlines() if MARK in ln]
    if proc.returncode != 0 or not found:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: vs_original: the {side} side of {part} failed (exit {proc.returncode}): {tail}")
    return json.loads(found[-1])


def part_size(part: str, args) -> str:
    """The size column of ``part``'s row."""
    if part == "round":
        return f"{args.steps} steps, {args.attack_size} images, model {args.model}"
    if part == "moth":
        return (f"{args.moth_rounds} rounds x {args.moth_steps} steps, {args.attack_size} attack images, "
                f"batch {BATCH}, model {args.model}")
    return f"1 epoch, {args.unlearn_images} images, batch {args.unlearn_batch}, model {args.model}"


WHAT = {"round": "one inversion round", "moth": "moth loop (MAIN.py)", "unlearn": "one unlearning epoch"}
AMOUNT = {"round": "steps", "moth": "steps", "unlearn": "batches"}  # what both sides must have computed alike


def summarise(part: str, runs: dict[str, list[dict]], args) -> dict:
    """Medians, minima and ratios of one part's runs (``{"ours": [...], "original": [...]}``, each run a dict
    with ``seconds``) and whether both sides computed the same amount (``AMOUNT[part]``)."""
    med = {s: statistics.median(r["seconds"] for r in runs[s]) for s in runs}
    best = {s: min(r["seconds"] for r in runs[s]) for s in runs}
    amount = {s: sorted({r.get(AMOUNT[part]) for r in runs[s]}, key=str) for s in runs}
    return {"size": part_size(part, args), "runs": runs, "median_s": med, "min_s": best,
            "ratio_median": med["ours"] / med["original"], "ratio_min": best["ours"] / best["original"],
            AMOUNT[part]: amount, "same_amount": amount["ours"] == amount["original"] and len(amount["ours"]) == 1}


def table(header: str, parts: dict[str, dict], notes: list[str]) -> str:
    """The printed table: one row per part (``summarise``'s dicts, in order), then ``notes``."""
    cols = ("what", "size", "ours (s)", "original (s)", "ours/original", "min/min", "n",
            "same work")
    rows = [(WHAT[p], s["size"], f"{s['median_s']['ours']:.2f}", f"{s['median_s']['original']:.2f}",
             f"{s['ratio_median']:.2f}", f"{s['ratio_min']:.2f}", str(len(s["runs"]["ours"])),
             ("yes" if s["same_amount"] else "NO") + f" ({'/'.join(map(str, s[AMOUNT[p]]['ours']))} {AMOUNT[p]} ours, "
             f"{'/'.join(map(str, s[AMOUNT[p]]['original']))} original)") for p, s in parts.items()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    fmt = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([header, fmt(cols), fmt(tuple("-" * w for w in widths)), *map(fmt, rows), *notes])


def notes(parts: dict[str, dict], args, loads: tuple[str, str]) -> list[str]:
    """The lines under the table: how each part was timed, the conditions, the command."""
    out = [f"medians of n fresh processes per side, alternating, each timed inside its process; load average "
           f"{loads[0]} at the start, {loads[1]} at the end; meanwhile: {args.note or 'not stated'}"]
    first = lambda part: parts[part]["runs"]["original"][0]  # noqa: E731
    if "round" in parts:
        out.append(f"round: the original's Trigger.generate vs our invert_trigger; the original writes 3 images "
                   f"every step ({first('round').get('images_files', '?')} files), ours none; our step cap is "
                   f"{100 * args.steps} (never reached)")
    if "moth" in parts:
        out.append(f"moth: MAIN.py --phase moth on both sides, same flags (--epochs 1 --epsilon 0 --patience "
                   f"{args.moth_rounds + 1} --similarity_threshold {args.threshold} --re_lr {args.lr}), ours also "
                   f"--re_steps_cap {100 * args.moth_steps}; timed: the original's MothTrainer.mothHarden vs our "
                   f"IterativeInversion.run (kNN check before round 0 to the hardened encoder's file); the original "
                   f"writes 3 images and an npz every inversion step")
    if "unlearn" in parts:
        out.append(f"unlearn: Unlearn-trigger.py --epochs 1 on both sides, same flags ("
                   f"{' '.join(f'{k} {v}' for k, v in UNLEARN.items())}); timed: the original's loop over its "
                   f"training loader vs our unlearn_epoch; the original writes 3 images every batch")
    if {"moth", "unlearn"} & set(parts):
        out.append("the original's data loaders are replaced at run time by in-memory loaders over the same npz "
                   "files (no workers); see the docstring of bench/vs_original.py")
    out.append(f"command: python bench/vs_original.py --orig <snapshot> --parts {','.join(parts)} "
               f"--steps {args.steps} --moth-rounds {args.moth_rounds} --moth-steps {args.moth_steps} "
               f"--unlearn-images {args.unlearn_images} --unlearn-batch {args.unlearn_batch} "
               f"--attack-size {args.attack_size} --repeats {args.repeats} --threads {args.threads}")
    return out


def load_average() -> str:
    """The 1-minute load average, for the table's conditions ("?" where the system has none)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        out = ours_child(args) if args.child == "ours" else original_child(args)
        print("\n" + MARK + json.dumps(out), flush=True)  # the original ends its step lines with \r, not \n
        return 0
    if not args.orig:
        print("vs_original: skipped (no --orig DIR: pass a local snapshot of the original RECEIVE code to compare)")
        return 0
    missing = [f for f in NEEDED if not (Path(args.orig) / f).is_file()]
    if missing:
        print(f"error: --orig {args.orig}: not a snapshot of the original RECEIVE code (missing {', '.join(missing)})",
              file=sys.stderr)
        return 2
    parts = parse_parts(args.parts)
    start_load = load_average()
    runs = {part: {"ours": [], "original": []} for part in parts}
    with tempfile.TemporaryDirectory(prefix="vs-original-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        args.work = str(work)
        if {"moth", "unlearn"} & set(parts):
            write_workspace(args, work)
        for part in parts:
            for i in range(args.repeats):
                for side in (("ours", "original") if i % 2 == 0 else ("original", "ours")):
                    log = Path(tmp) / f"{part}-{side}-{i}"
                    log.mkdir()
                    runs[part][side].append(run_side(side, part, args, work, log))
                    print(f"  {part:8s} {side:8s} run {i + 1}: {runs[part][side][-1]['seconds']:.2f} s",
                          file=sys.stderr, flush=True)
    import torch

    header = (f"Ours vs the original RECEIVE code, same machine, same run: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs ({args.threads} thread(s) per side), torch {torch.__version__}, device {args.device}")
    summary = {part: summarise(part, runs[part], args) for part in parts}
    text = table(header, summary, notes(summary, args, (start_load, load_average())))
    sys.path.insert(0, str(ROOT))
    from UTILS.io import write_result

    data = {"header": header, "model": args.model, "threshold": args.threshold, "lr": args.lr,
            "attack_size": args.attack_size, "steps": args.steps, "moth_rounds": args.moth_rounds,
            "moth_steps": args.moth_steps, "unlearn_images": args.unlearn_images, "unlearn_batch": args.unlearn_batch,
            "threads": args.threads, "note": args.note, "parts": summary}
    write_result(args.results, args.name or f"vs-original-{args.device}", text, data)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
