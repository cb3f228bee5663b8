#!/usr/bin/env python
"""Defence quality over seeds: the demo's whole story once per seed, and the spread.

Each seed runs ``demo.py --seed S`` (its own pre-training, injection, inversion, unlearning and
classifier seeds) into ``<out>/seed-S``, then this prints one table per seed and, per encoder
(clean, backdoored, RECEIVE, NC baseline), the mean / min / max of ACC and ASR, with RECEIVE's
chosen round, its trigger L1 and why the moth run stopped. The table and a JSON copy go to
``--results`` (default bench/results/defence-<preset>.txt|json).

    python bench/defence.py                       # default preset, seeds 0-4 (about 25 minutes on 2 cores)
    python bench/defence.py --seeds 0,1 --preset ci --out /tmp/defence --results /tmp/defence-results
    python bench/defence.py --reuse               # rebuild the table from finished seed folders
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DEMO.demo import run_demo  # noqa: E402
from DEMO.layout import RunLayout  # noqa: E402
from DEMO.results import check_targets  # noqa: E402
from Trainer.configs import PRESET_NAMES, DemoConfig  # noqa: E402
from UTILS.errors import ArgumentParser, cli_entry, fail  # noqa: E402
from UTILS.io import write_result  # noqa: E402
from UTILS.runtime import log  # noqa: E402

ENCODERS = ("clean", "backdoored", "RECEIVE", "NC baseline")


def build_parser() -> ArgumentParser:
    """The benchmark's flags: seeds, preset, folders, device."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated demo seeds (0..4)")
    p.add_argument("--preset", default="default", help=f"one of {', '.join(PRESET_NAMES)}")
    p.add_argument("--out", default="demo_runs/defence", help="folder of the per-seed demo runs")
    p.add_argument("--results", default="bench/results", help="folder of the table (txt) and its JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--reuse", action="store_true", help="keep a seed's finished run (its summary.json) instead of rerunning")
    return p


def parse_seeds(text: str) -> list[int]:
    """The comma-separated demo seeds of --seeds (each 0..4), or one line saying what is wrong."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds {text}: expected comma-separated integers 0..4")
    if not seeds or any(not 0 <= s <= 4 for s in seeds):
        fail(f"--seeds {text}: expected comma-separated integers 0..4")
    return seeds


def one_seed(seed: int, args: argparse.Namespace) -> dict:
    """Run (or reuse) one seed's demo; returns its per-encoder rows and RECEIVE's stop details."""
    folder = Path(args.out) / f"seed-{seed}"
    layout = RunLayout(folder)
    if not (args.reuse and layout.summary.is_file()):
        cfg = DemoConfig(out=str(folder), preset=args.preset, device=args.device, data_dir=args.data_dir, seed=seed,
                         overwrite=True).validate()
        run_demo(cfg)
    summary = json.loads(layout.summary.read_text())
    moth = json.loads((layout.moth_log / "metrics.json").read_text())
    rows = {r["encoder"]: r for r in summary["table"]}
    return {"seed": seed, "rows": rows, "targets": check_targets(summary["table"]),
            "moth": {k: moth.get(k) for k in ("best_round", "best_l1", "stop_reason", "rounds", "converged_rounds",
                                              "best_reached_threshold")}}


def spread(values: list[float]) -> str:
    """``values`` as 'mean (min .. max)'."""
    return f"{statistics.mean(values):6.2f} ({min(values):6.2f} .. {max(values):6.2f})"


def format_results(results: list[dict], preset: str) -> str:
    """The per-seed table (ACC/ASR of every encoder, the chosen round) and its spread over seeds, as text."""
    lines = [f"Defence quality, preset {preset}, seeds {', '.join(str(r['seed']) for r in results)}", ""]
    head = f"{'seed':>4}  " + "  ".join(f"{e + ' ACC/ASR':>22}" for e in ENCODERS) + \
        f"  {'round':>5} {'L1':>6} {'rounds':>6}  stop"
    lines += [head, "-" * len(head)]
    for r in results:
        cells = "  ".join(f"{r['rows'][e]['acc']:>10.2f} /{r['rows'][e]['asr']:>9.2f}" for e in ENCODERS)
        m = r["moth"]
        lines.append(f"{r['seed']:>4}  {cells}  {m['best_round']:>5} {m['best_l1']:>6.1f} {m['rounds']:>6}  "
                     f"{m['stop_reason']}")
    lines += ["", f"{'encoder':<12} {'ACC mean (min .. max)':>28} {'ASR mean (min .. max)':>28}"]
    for e in ENCODERS:
        lines.append(f"{e:<12} {spread([r['rows'][e]['acc'] for r in results]):>28} "
                     f"{spread([r['rows'][e]['asr'] for r in results]):>28}")
    lines += ["", "targets met per seed:"]
    for r in results:
        missed = [t["target"] + f" ({t['measured']})" for t in r["targets"] if not t["met"]]
        lines.append(f"  seed {r['seed']}: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    lines.append("(ASR leaves the target class out; L1 = RECEIVE's chosen trigger, the injected one is 100)")
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    """One demo run per seed, the table in <results>/defence-<preset>.txt and .json; returns the per-seed results."""
    args = build_parser().parse_args(argv)
    if args.preset not in PRESET_NAMES:
        fail(f"--preset {args.preset}: expected one of {', '.join(PRESET_NAMES)}")
    results = [one_seed(seed, args) for seed in parse_seeds(args.seeds)]
    text = format_results(results, args.preset)
    write_result(args.results, f"defence-{args.preset}", text, results)
    log(text)
    return results


if __name__ == "__main__":
    main()
