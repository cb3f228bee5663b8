#!/usr/bin/env python
"""Our speed against the paper's own code, side by side in one run on one machine (a ratio ours / original).

    python bench/vs_original.py --orig /path/to/RECEIVE     # a local snapshot (work tree) of the original
    python bench/vs_original.py                             # without one: a one-line skip, exit 0

Nothing of the original is copied here: ``--orig`` names a folder the user provides, read where it lies.
Measured: one inversion round (the original's ``INVERSION.inversion.Trigger.generate`` against our
``invert_trigger``) on the same tiny encoder, the same attack images and the same start trigger, each side in
its own fresh process, alternating, ``--repeats`` times. Both run exactly ``--steps`` steps: the threshold is
set low enough that both reach it (the original loops until it does; ours is given a step cap far above
``--steps``, so the cap never acts and both do the same computation). The original writes three images every
step (``torchvision.utils.save_image``) and ours writes nothing inside the loop: that difference is part of
what is timed, by design (it is the original's behaviour).

Running the original on a CPU needs three run-time patches, all in this file (``original_child``) and only
in the child process that runs the original: its package names (DATASETS, MODELS, INVERSION, ...) clash
with ours, so our modules are dropped from ``sys.modules`` after the encoder is built; its ``.cuda(device)``
calls become no-ops when CUDA is absent; and it runs with the snapshot as working folder (it reads
``trigger/trigger_pt_white_21_10_ap_replace.npz`` relative to it) while writing its images to a temporary
folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("INVERSION/inversion.py", "util.py", "MAIN.py", "trigger/trigger_pt_white_21_10_ap_replace.npz")
OURS = ("DATASETS", "MODELS", "INVERSION", "Trainer", "EVALUATION", "UTILS", "DEMO", "util")
MARK = "vs_original result: "


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--orig", default="", help="folder of a local snapshot of the original RECEIVE code (its work tree)")
    p.add_argument("--model", default="tiny", help="our encoder architecture both sides run (BadEncoder key names)")
    p.add_argument("--steps", type=int, default=100, help="inversion steps of the round (--re_steps)")
    p.add_argument("--attack-size", type=int, default=32, help="attack images (--attack_size)")
    p.add_argument("--lr", type=float, default=0.1, help="the round's Adam learning rate (--re_lr)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="similarity threshold; low, so both sides reach it and run exactly --steps steps")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder of <name>.txt|json")
    p.add_argument("--name", default="", help="file stem (default vs-original-<device>)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where both sides run")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of both sides (1: steady on a shared CPU, where spinning OpenMP threads "
                        "slow small convolutions many-fold)")
    p.add_argument("--child", choices=("ours", "original"), help=argparse.SUPPRESS)
    p.add_argument("--log", default="", help=argparse.SUPPRESS)
    return p


def inputs(args):
    """The shared inputs: the encoder (seed 0), attack images (N, 3, 32, 32) in [0, 1] and a start trigger."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from MODELS.simclr import build_model

    torch.manual_seed(0)
    model = build_model(args.model).to(args.device).eval()
    rng = np.random.RandomState(0)
    images = torch.from_numpy(rng.randint(0, 256, (args.attack_size, 3, 32, 32)).astype(np.float32) / 255)
    mask, pattern = rng.random_sample((32, 32)), rng.random_sample((3, 32, 32))
    return model, images.to(args.device), mask, pattern


def ours_child(args) -> dict:
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


def original_child(args) -> dict:
    """The original's Trigger.generate on the shared inputs; its seconds (run-time patches described above)."""
    import types

    import torch

    model, images, mask, pattern = inputs(args)
    # 1. the original's packages have our packages' names: forget ours (the built encoder keeps its classes)
    for name in list(sys.modules):
        if name.split(".")[0] in OURS:
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    orig = Path(args.orig).resolve()
    sys.path.insert(0, str(orig))
    # 2. its .cuda(device) calls, on a machine without CUDA: leave the tensor where it is (the CPU)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    # 3. it reads trigger/... relative to the working folder; its images go to --log
    os.chdir(orig)
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
    return {"seconds": seconds, "steps": trigger.seed - 100, "images_files": images_written}


def run_side(side: str, args, log: Path) -> dict:
    """One side in a fresh process; its result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--orig", args.orig, "--model", args.model,
           "--steps", str(args.steps), "--attack-size", str(args.attack_size), "--lr", str(args.lr),
           "--threshold", str(args.threshold), "--device", args.device, "--log", str(log)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, RECEIVE_NO_PROGRESS="1", OMP_NUM_THREADS=str(args.threads),
                                   MKL_NUM_THREADS=str(args.threads)))
    found = [ln.split(MARK, 1)[1] for ln in proc.stdout.splitlines() if MARK in ln]
    if proc.returncode != 0 or not found:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: vs_original: the {side} side failed (exit {proc.returncode}): {tail}")
    return json.loads(found[-1])


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
    runs: dict[str, list[dict]] = {"ours": [], "original": []}
    with tempfile.TemporaryDirectory(prefix="vs-original-") as tmp:
        for i in range(args.repeats):
            for side in (("ours", "original") if i % 2 == 0 else ("original", "ours")):
                log = Path(tmp) / f"{side}-{i}"
                log.mkdir()
                runs[side].append(run_side(side, args, log))
                print(f"  {side:8s} run {i + 1}: {runs[side][-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
    med = {s: statistics.median(r["seconds"] for r in runs[s]) for s in runs}
    best = {s: min(r["seconds"] for r in runs[s]) for s in runs}
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    import torch

    header = (f"Ours vs the original RECEIVE code, same machine, same run: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs ({args.threads} thread(s) per side), torch {torch.__version__}, device {args.device}, load avg {load}")
    rows = [("one inversion round", f"{args.steps} steps, {args.attack_size} images, model {args.model}",
             f"{med['ours']:.2f}", f"{med['original']:.2f}", f"{med['ours'] / med['original']:.2f}",
             f"{best['ours'] / best['original']:.2f}", str(args.repeats))]
    cols = ("what", "size", "ours (s)", "original (s)", "ours/original", "min/min", "n")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    fmt = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    text = "\n".join([header, fmt(cols), fmt(tuple("-" * w for w in widths)), *map(fmt, rows),
                      "medians of n fresh processes per side, alternating; the original writes 3 images every step "
                      f"({runs['original'][0].get('images_files', '?')} files), ours none inside the loop; ours has a "
                      f"step cap of {100 * args.steps} (never reached), so both run the same {args.steps} steps",
                      f"command: python bench/vs_original.py --orig <snapshot> --steps {args.steps} "
                      f"--attack-size {args.attack_size} --repeats {args.repeats} --threads {args.threads}"])
    sys.path.insert(0, str(ROOT))
    from UTILS.io import write_result

    data = {"header": header, "steps": args.steps, "attack_size": args.attack_size, "model": args.model,
            "threshold": args.threshold, "lr": args.lr, "runs": runs, "median_s": med, "min_s": best,
            "ratio_median": med["ours"] / med["original"], "ratio_min": best["ours"] / best["original"]}
    write_result(args.results, args.name or f"vs-original-{args.device}", text, data)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
