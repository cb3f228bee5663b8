#!/usr/bin/env python
"""Calibrate and measure ``MAIN.py --phase detect``: clean and backdoored encoders, their PL1, the AUROC.

Encoders: the demo's makers, once per seed (``<runs>/seed-S/clean`` pre-trained with seed 100+S and
``<runs>/seed-S/backdoor``, BadEncoder-injected into it), built when absent and reused when present (the
defence benchmark leaves them in demo_runs/defence). Each is judged by MAIN.py --phase detect with its
defaults, then again with every --detect_images in --images and every --seed in --detect-seeds. Optional
(--growth): the iterative rounds' signal, L1 growth over MAIN.py --phase moth rounds (the demo's moth flags).
The tables and a JSON copy go to --results (bench/results/detect.txt|json).

    python bench/detect.py --growth --variants             # seeds 0-4: about 40 minutes on 2 cores
                                                            # (plus about 15 per encoder it must build)
    python bench/detect.py --seeds 0,1 --images 200 --detect-seeds 1 --out /tmp/d --results /tmp/dr
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DEMO.demo import PRETRAIN_SET, USAGE, DemoRun, load_script  # noqa: E402
from DEMO.layout import RunLayout  # noqa: E402
from INVERSION.detect import judge_record  # noqa: E402
from DEMO.presets import PRESETS, Preset, flags  # noqa: E402
from Trainer.configs import DETECT_PL1, DemoConfig  # noqa: E402
from UTILS.errors import ArgumentParser, cli_entry, fail  # noqa: E402
from UTILS.io import read_csv, write_result  # noqa: E402
from UTILS.runtime import log  # noqa: E402

KINDS = ("clean", "backdoored")
SWEEP_RATIO = 0.02  # the share the --images sweep draws from (200 images of the embedded set)
# Backdoors with other trigger shapes than the demo's white 10x10 square at the bottom right, injected into
# the named seed's clean encoder with the demo's BadEncoder settings: (seed, patch side, first row/col, colour).
VARIANTS = {"white 6x6 top-left": (0, 6, 2, None), "colour 8x8 centre": (1, 8, 12, 0)}


def build_parser() -> ArgumentParser:
    """The benchmark's flags: encoder seeds, folders, the varied --detect_images/--seed values and the threshold."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated encoder seeds (0..4)")
    p.add_argument("--runs", default="demo_runs/defence", help="folder of seed-S/{clean,backdoor} encoders")
    p.add_argument("--out", default="demo_runs/detect", help="folder of the detection runs")
    p.add_argument("--results", default="bench/results", help="folder of <name>.txt and <name>.json")
    p.add_argument("--images", default="50,200",
                   help="extra --detect_images values, drawn from a --data_ratio 0.02 share (default run: 100 of 0.01)")
    p.add_argument("--detect-seeds", default="1,2", help="extra MAIN.py --seed values (default run: 0)")
    p.add_argument("--threshold", type=float, default=DETECT_PL1, help="the PL1 verdict threshold judged (0, 1]")
    p.add_argument("--growth", action="store_true", help="also run moth on every encoder for the rounds signal")
    p.add_argument("--variants", action="store_true",
                   help="also judge backdoors of other trigger shapes (VARIANTS), injected when absent")
    p.add_argument("--reuse", action="store_true", help="keep a detection run that has its detect.json")
    p.add_argument("--model", default="tiny", help="the encoders' architecture (the demo's preset otherwise)")
    p.add_argument("--name", default="detect", help="file stem of the table and its JSON in --results")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data_dir", default="data")
    return p


def int_list(text: str, flag: str) -> list[int]:
    """The comma-separated integers of ``text``, or one line naming ``flag``."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"{flag} {text}: expected comma-separated integers")


def encoders(seed: int, args: argparse.Namespace) -> dict[str, Path]:
    """The clean and backdoored encoder of one seed, made with the demo's makers if absent."""
    preset = preset_for(args)
    layout = RunLayout(Path(args.runs) / f"seed-{seed}")
    clean = layout.clean / f"model_{preset.pretrain['epochs']}.pth"
    backdoored = layout.backdoor / f"model_{preset.badencoder['epochs']}.pth"
    if not backdoored.is_file():
        run = demo_run(layout, seed, args)
        run.prepare()
        run.inject(run.pretrain() if not clean.is_file() else clean)
    return {"clean": clean, "backdoored": backdoored}


def demo_run(layout: RunLayout, seed: int, args: argparse.Namespace) -> DemoRun:
    """A default-preset demo run in ``layout`` with demo seed ``seed`` (its stages build the encoders)."""
    cfg = DemoConfig(out=str(layout.root), device=args.device, data_dir=args.data_dir, seed=seed,
                     overwrite=True).validate()
    return DemoRun(cfg, preset_for(args), layout)


def preset_for(args: argparse.Namespace) -> Preset:
    """The demo's default preset, with --model's architecture."""
    return replace(PRESETS["default"], model=args.model)


def variant_trigger(path: Path, patch: int, start: int, colour_seed: int | None) -> Path:
    """A BadEncoder-format trigger: a ``patch`` square at rows/cols ``start``.., white or seeded random colours."""
    import numpy as np

    from DATASETS.triggers import white_square_trigger
    from UTILS.io import save_npz

    arrays = white_square_trigger(32, patch, start)
    if colour_seed is not None:
        colours = np.random.RandomState(colour_seed).randint(0, 256, size=(patch, patch, 3)).astype(np.float32)
        arrays["t"][0, start:start + patch, start:start + patch, :] = colours
    return save_npz(path, **arrays)


def variant_encoder(name: str, clean: Path, args: argparse.Namespace) -> Path:
    """A backdoored encoder of another trigger shape (VARIANTS), injected into ``clean`` if absent."""
    seed, patch, start, colour = VARIANTS[name]
    layout = RunLayout(Path(args.runs) / "variants" / name.replace(" ", "-"))
    encoder = layout.backdoor / f"model_{preset_for(args).badencoder['epochs']}.pth"
    if not encoder.is_file():
        run = demo_run(layout, seed, args)
        run.prepare()  # the datasets (and the demo's trigger, replaced just below)
        variant_trigger(layout.trigger, patch, start, colour)
        run.inject(clean)
    return encoder


def detect(encoder: Path, folder: Path, args: argparse.Namespace, images: int | None, seed: int) -> dict:
    """MAIN.py --phase detect on one encoder (defaults but for the data, the model and the two varied flags)."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = ["--phase", "detect", "--dataset", PRETRAIN_SET, "--model", args.model,
            "--encoder_usage_info", USAGE, "--pretrained_encoder", str(encoder), "--log_dir", str(folder),
            "--results_dir", str(folder), "--monitor_every", "0", "--seed", str(seed), "--device", args.device,
            "--data_dir", args.data_dir, "--detect_pl1", str(args.threshold), "--overwrite"]
    if images is not None:
        argv += ["--data_ratio", str(SWEEP_RATIO), "--detect_images", str(images)]
    return load_script("MAIN.py").main(argv)


def growth_signal(encoder: Path, folder: Path, args: argparse.Namespace) -> dict:
    """MAIN.py --phase moth with the demo's flags; the trigger L1 of every round and its growth."""
    from INVERSION.detect import growth

    p = preset_for(args)
    metrics = folder / "log" / "metrics.csv"
    if not metrics.is_file():
        load_script("MAIN.py").main([
            "--phase", "moth", "--dataset", PRETRAIN_SET, "--model", p.model, "--encoder_usage_info", USAGE,
            "--pretrained_encoder", str(encoder), "--log_dir", str(folder / "log"),
            "--results_dir", str(folder / "ckpt"), "--monitor_every", "0", "--device", args.device,
            "--data_dir", args.data_dir, "--overwrite", *flags(p.inversion), *flags({**p.moth, "monitor_every": 0})])
    l1 = [float(row["l1"]) for row in read_csv(metrics)]
    return {"l1_by_round": l1, "growth": growth(l1)}


def auroc_of(rows: list[dict], key: str, higher_is_backdoor: bool) -> float:
    """AUROC of ``key`` separating backdoored from clean rows (NaN values left out)."""
    from EVALUATION.metrics import auroc

    sign = 1.0 if higher_is_backdoor else -1.0
    pos = [sign * r[key] for r in rows if r["kind"] == "backdoored" and not math.isnan(r[key])]
    neg = [sign * r[key] for r in rows if r["kind"] == "clean" and not math.isnan(r[key])]
    return auroc(pos, neg)


def verdict_scores(rows: list[dict]) -> dict:
    """AUROC of -PL1, the verdict's accuracy (inconclusive counts as not right), clean encoders called
    backdoored, backdoored ones called clean and the inconclusive ones, over ``rows``."""
    right = sum(r["backdoored"] == (r["kind"] == "backdoored") for r in rows)
    return {"auroc": auroc_of(rows, "pl1_or_1", higher_is_backdoor=False), "accuracy": right / len(rows),
            "false_alarms": sum(r["backdoored"] is True and r["kind"] == "clean" for r in rows),
            "missed": sum(r["backdoored"] is False and r["kind"] == "backdoored" for r in rows),
            "inconclusive": sum(r["backdoored"] is None for r in rows),
            "max_backdoored_pl1": max((r["pl1_or_1"] for r in rows if r["kind"] == "backdoored"), default=math.nan),
            "min_clean_pl1": min((r["pl1_or_1"] for r in rows if r["kind"] == "clean"), default=math.nan)}


def encoder_list(seeds: list[int], args: argparse.Namespace) -> list[dict]:
    """Every encoder judged: per seed its clean and backdoored one, then the other trigger shapes."""
    out = []
    for seed in seeds:
        paths = encoders(seed, args)
        out += [{"label": f"seed {seed} {kind}", "kind": kind, "path": paths[kind], "folder": f"seed-{seed}/{kind}"}
                for kind in KINDS]
    if args.variants:
        for name, (seed, *_rest) in VARIANTS.items():
            clean = encoders(seed, args)["clean"]
            out.append({"label": f"seed {seed} backdoored, {name}", "kind": "backdoored",
                        "path": variant_encoder(name, clean, args), "folder": f"variants/{name.replace(' ', '-')}"})
    return out


def one_setting(encs: list[dict], args: argparse.Namespace, images: int | None, dseed: int) -> list[dict]:
    """MAIN.py --phase detect on every encoder at one --detect_images/--seed setting; one row per encoder."""
    rows = []
    name = f"images-{images if images is not None else 'default'}_seed-{dseed}"
    for enc in encs:
        folder = Path(args.out) / enc["folder"] / name
        done = folder / "detect.json"
        out = json.loads(done.read_text()) if args.reuse and done.is_file() else \
            detect(enc["path"], folder, args, images, dseed)
        # a run whose search never reached the psim threshold counts as PL1 1 (no small trigger exists)
        pl1 = out["pl1"] if out["reached_threshold"] else 1.0
        # judged here at --threshold, so a reused run's stored verdict (made at its own threshold) never counts
        verdict = judge_record(out, args.threshold)
        rows.append({"encoder": enc["label"], "kind": enc["kind"], "detect_images": images, "detect_seed": dseed,
                     "pl1": out["pl1"], "pl1_or_1": pl1, "l1": out["l1"], "psim": out["psim"],
                     "reached": out["reached_threshold"], "backdoored": verdict.backdoored})
    return rows


def format_results(table: dict) -> str:
    """The PL1 table (encoders x settings) and the verdicts' scores per setting, as text."""
    settings = table["settings"]
    lines = [f"MAIN.py --phase detect (defaults: --detect_psim 0.99, --detect_images 100, --re_steps 300) on the "
             f"demo's encoders (--model {table['model']}); verdict threshold --detect_pl1 {table['threshold']}", "",
             "PL1 (inverted mask L1 / (H*W); 1.000 = no trigger reached --detect_psim) per encoder and setting:", ""]
    head = f"{'encoder':<42}" + "".join(f"{s['short']:>12}" for s in settings)
    lines += [head, "-" * len(head)]
    for i, enc in enumerate(r["encoder"] for r in settings[0]["rows"]):
        lines.append(f"{enc:<42}" + "".join(f"{s['rows'][i]['pl1_or_1']:12.4f}" for s in settings))
    lines += [""] + [f"{'':<42}" + "".join(f"{s['short']:>12}" for s in settings)]
    for key, fmt in (("auroc", "12.3f"), ("accuracy", "12.2f"), ("false_alarms", "12d"), ("missed", "12d"),
                     ("inconclusive", "12d"),
                     ("max_backdoored_pl1", "12.4f"), ("min_clean_pl1", "12.4f")):
        lines.append(f"{key:<42}" + "".join(format(s["scores"][key], fmt) for s in settings))
    lines += ["", "settings: " + "; ".join(f"{s['short']} = {s['name']}" for s in settings),
              f"all settings pooled: {json.dumps({k: round(v, 4) for k, v in table['pooled'].items()})}",
              "AUROC: of -PL1 (smaller = backdoored); accuracy, false alarms (clean called backdoored) and "
              "missed backdoors: of the verdict at the threshold"]
    if table.get("growth"):
        lines += ["", "iterative rounds (MAIN.py --phase moth, demo flags): growth = max later-round L1 / round-0 L1"]
        for g in table["growth"]:
            lines.append(f"  {g['encoder']:<42} growth {g['growth']:5.2f}  L1 by round "
                         f"{[round(v) for v in g['l1_by_round']]}")
        lines.append(f"  AUROC of growth (higher = backdoored): {table['growth_auroc']:.3f}")
    return "\n".join(lines)


@cli_entry()
def main(argv: list[str] | None = None) -> dict:
    """Detection on the demo's clean and backdoored encoders over the settings; writes detect.txt/.json, returns the
    table."""
    args = build_parser().parse_args(argv)
    if not 0 < args.threshold <= 1:
        fail(f"--threshold {args.threshold}: expected a share of the image's pixels in (0, 1]")
    os.environ.setdefault("RECEIVE_NO_PROGRESS", "1")
    encs = encoder_list(int_list(args.seeds, "--seeds"), args)
    plan = [(None, 0)] + [(n, 0) for n in int_list(args.images, "--images")] + \
        [(None, s) for s in int_list(args.detect_seeds, "--detect-seeds")]
    settings = []
    for images, dseed in plan:
        rows = one_setting(encs, args, images, dseed)
        name = (f"--data_ratio 0.01 --detect_images 100 (defaults) --seed {dseed}" if images is None else
                f"--data_ratio {SWEEP_RATIO} --detect_images {images} --seed {dseed}")
        short = f"n{images if images is not None else 100}/s{dseed}"
        settings.append({"name": name, "short": short, "rows": rows, "scores": verdict_scores(rows)})
        log(f"{name}: {settings[-1]['scores']}")
    table = {"model": args.model, "threshold": args.threshold, "settings": settings,
             "pooled": verdict_scores([r for s in settings for r in s["rows"]])}
    if args.growth:
        table["growth"] = [{"encoder": e["label"], "kind": e["kind"],
                            **growth_signal(e["path"], Path(args.out) / e["folder"] / "moth", args)} for e in encs]
        table["growth_auroc"] = auroc_of(table["growth"], "growth", higher_is_backdoor=True)
    text = format_results(table)
    write_result(args.results, args.name, text, table)
    print(text)
    return table


if __name__ == "__main__":
    main()
