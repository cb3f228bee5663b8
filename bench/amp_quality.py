"""Does ``--amp`` change what RECEIVE finds? float32 against bf16 autocast on a real backdoored encoder.

    python demo.py --out demo_runs/final                       # once: a backdoored encoder (about 3 min)
    python bench/amp_quality.py --run demo_runs/final          # this check (about 5 min on 2 CPU cores)

Two measurements, both in one run on one device:

1. One inversion round, same start: for each seed, the first MAIN.py round (random start, lr 0.5) on the
   same attack set from the same random state, once in float32 and once with ``--amp``. The two
   triggers are then judged in float32: their L1 and their psim (docs/PERFORMANCE.md's tolerance: L1 within
   5 % and psim within 0.01), and as applied to the attack images (pixel difference, feature cosine),
   next to a float32 trigger from another random start as the yardstick.
2. The whole defence: the demo's MAIN.py (moth) -> Unlearn-trigger.py commands, read from
   ``<run>/summary.json``, run once per seed as they are and once with ``--amp``; every resulting
   encoder is judged by the demo's training_downstream_classifier.py command in float32.
   The early stop is a discrete decision on a noisy signal, so the chosen round may differ; what must
   not differ beyond the float32 seed-to-seed spread is the outcome (ACC, ASR).

Prints a table (also written to ``--table``) and writes every number to ``--json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RECEIVE_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from DATASETS.stats import get_usage, normalize  # noqa: E402
from DATASETS.tensors import load_train_share  # noqa: E402
from DATASETS.triggers import InvertedTrigger  # noqa: E402
from DEMO.layout import flag_value, receive_commands  # noqa: E402
from INVERSION.inversion import InversionConfig, chunk_similarity, invert_trigger, random_start  # noqa: E402
from MODELS.checkpoint import load_encoder  # noqa: E402
from MODELS.precision import with_precision  # noqa: E402
from Trainer.configs import MAIN_SEEDS  # noqa: E402
from bench import device_name  # noqa: E402  (bench/bench.py, this script's neighbour)
from Trainer.filenames import BEST_TRIGGER, UNLEARNED_CKPT  # noqa: E402
from INVERSION.iterative import FIRST_ROUND_LR  # noqa: E402
from UTILS.errors import UserError  # noqa: E402
from UTILS.io import write_json  # noqa: E402
from UTILS.runtime import resolve_device  # noqa: E402

L1_TOLERANCE, PSIM_TOLERANCE = 0.05, 0.01  # docs/PERFORMANCE.md's stated tolerance for one round from the same start
PRECISIONS = ("fp32", "amp")


def with_flags(args: list[str], **values: str) -> list[str]:
    """Replace (or append) ``--name value`` pairs."""
    out = list(args)
    for name, value in values.items():
        key = f"--{name}"
        if key in out:
            out[out.index(key) + 1] = value
        else:
            out += [key, value]
    return out


def invert(model, attack, usage, config: InversionConfig, amp: bool, init_seed: int) -> tuple[InvertedTrigger, float]:
    """One inversion round from the random start of ``init_seed``; (trigger, seconds)."""
    backbone = with_precision(copy.deepcopy(model.f), amp)
    init = random_start(attack.shape[-1], np.random.RandomState(init_seed))
    start = time.perf_counter()
    result = invert_trigger(backbone, attack, usage, config, init)
    return InvertedTrigger(result.mask, result.pattern), time.perf_counter() - start


@torch.no_grad()
def agreement(backbone, attack, usage, a: InvertedTrigger, b: InvertedTrigger) -> tuple[float, float]:
    """How alike two triggers are as applied: mean |a(x) - b(x)| over the stamped pixels of the attack
    images, and the mean float32 cosine between the encoder's features of a(x) and b(x)."""
    x_a, x_b = a(attack), b(attack)  # (B, 3, H, W)
    f_a, f_b = backbone(normalize(x_a, usage)), backbone(normalize(x_b, usage))
    return (x_a - x_b).abs().mean().item(), torch.nn.functional.cosine_similarity(f_a, f_b, dim=1).mean().item()


def one_round(main_args: list[str], seeds: list[int], device: torch.device) -> list[dict]:
    """Measurement 1: the first inversion round in both precisions from the same start, and, as the
    yardstick, in float32 from another random start (the variation the method has anyway)."""
    model = load_encoder(flag_value(main_args, "--pretrained_encoder"), flag_value(main_args, "--model"),
                         device).eval()
    usage = get_usage(flag_value(main_args, "--encoder_usage_info"))
    data = load_train_share(flag_value(main_args, "--dataset"), float(flag_value(main_args, "--data_ratio")),
                            flag_value(main_args, "--data_dir"), usage, device)
    attack_size = int(flag_value(main_args, "--attack_size"))
    config = InversionConfig(steps=int(flag_value(main_args, "--re_steps")), lr=FIRST_ROUND_LR,
                             init_cost=float(flag_value(main_args, "--init_cost")),
                             threshold=float(flag_value(main_args, "--similarity_threshold")))
    rows = []
    for seed in seeds:
        torch.manual_seed(MAIN_SEEDS[seed])
        attack = data.x[torch.randint(len(data), (attack_size,)).to(device)]
        (exact, t_exact), (fast, t_fast) = (invert(model, attack, usage, config, amp, seed) for amp in (False, True))
        other, _ = invert(model, attack, usage, config, False, seed + 100)
        row = {"seed": seed, "fp32_s": t_exact, "amp_s": t_fast}
        for name, trigger in (("fp32", exact), ("amp", fast)):
            row[f"{name}_l1"] = trigger.l1
            row[f"{name}_psim"] = chunk_similarity(model.f, attack, usage, trigger)  # judged in float32
        row["stamp_diff"], row["feature_cos"] = agreement(model.f, attack, usage, exact, fast)
        row["other_start_stamp_diff"], row["other_start_feature_cos"] = agreement(model.f, attack, usage, exact, other)
        row["l1_rel_diff"] = abs(row["amp_l1"] - row["fp32_l1"]) / row["fp32_l1"]
        row["psim_diff"] = abs(row["amp_psim"] - row["fp32_psim"])
        row["within"] = row["l1_rel_diff"] <= L1_TOLERANCE and row["psim_diff"] <= PSIM_TOLERANCE
        rows.append(row)
    return rows


def run_stage(words: list[str]) -> float:
    """Run one entry script (``words``: script and flags) in a fresh interpreter; its wall-clock seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / words[0]), *words[1:]], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(words[:1])} failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def whole_defence(cmds: dict[str, list[str]], seeds: list[int], out: Path, device: str) -> list[dict]:
    """Measurement 2: the demo's RECEIVE stages per seed, float32 then --amp."""
    rows = []
    for seed in seeds:
        for name in PRECISIONS:
            base = out / f"{name}-seed{seed}"
            extra = ["--amp"] if name == "amp" else []
            main = with_flags(cmds["main"], seed=str(seed), log_dir=str(base / "log"),
                              results_dir=str(base / "hardened"), device=device) + ["--overwrite", *extra]
            unlearn = with_flags(cmds["unlearn"], seed=str(seed), log_dir=str(base / "unlearn-log"),
                                 results_dir=str(base / "unlearned"), device=device,
                                 re_mask_pattern=str(base / "log" / BEST_TRIGGER)) + ["--overwrite", *extra]
            epochs = flag_value(cmds["unlearn"], "--epochs")
            # the evaluator is the measuring instrument: float32 for both arms
            downstream = with_flags(cmds["downstream"], results_dir=str(base / "eval"), device=device,
                                    encoder=str(base / "unlearned" / UNLEARNED_CKPT.format(epochs)))
            downstream += ["--overwrite"]
            times = [run_stage(words) for words in (main, unlearn, downstream)]
            moth = json.loads((base / "log" / "metrics.json").read_text())
            result = json.loads((base / "eval" / "downstream-metrics.json").read_text())
            rows.append({"seed": seed, "precision": name, "main_s": times[0], "unlearn_s": times[1],
                         "downstream_s": times[2], "rounds": moth["rounds"], "best_round": moth["best_round"],
                         "best_l1": moth["best_l1"], "best_psim": moth["best_psim"], "acc": result["acc"],
                         "asr": result["asr"]})
            print(f"  seed {seed} {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in rows[-1].items() if k not in ("seed", "precision")),
                  file=sys.stderr, flush=True)
    return rows


def format_tables(header: str, rounds: list[dict], runs: list[dict]) -> str:
    """The two tables (one inversion round, the whole defence) under ``header``, as text."""
    lines = [header, "", "1. One inversion round from the same start (both triggers judged in float32)",
             "seed  L1 fp32  L1 amp  |dL1|/L1  psim fp32  psim amp  |dpsim|  within  stamp diff    feature cos  "
             "time amp/fp32",
             "                                                               amp / other   amp / other"]
    for r in rounds:
        lines.append(f"{r['seed']:<4}  {r['fp32_l1']:7.2f}  {r['amp_l1']:6.2f}  {r['l1_rel_diff']:8.4f}  "
                     f"{r['fp32_psim']:9.4f}  {r['amp_psim']:8.4f}  {r['psim_diff']:7.4f}  "
                     f"{'yes' if r['within'] else 'NO':6}  {r['stamp_diff']:.4f}/{r['other_start_stamp_diff']:.4f}"
                     f"  {r['feature_cos']:.4f}/{r['other_start_feature_cos']:.4f}  {r['amp_s'] / r['fp32_s']:.2f}")
    lines += [f"tolerance: |dL1|/L1 <= {L1_TOLERANCE}, |dpsim| <= {PSIM_TOLERANCE}. stamp diff: mean |T1(x) - T2(x)| "
              f"over the attack images' pixels; feature cos: mean cosine of the float32 features of T1(x) and T2(x); "
              f"amp = the --amp trigger against the float32 one, other = float32 from another random start "
              f"(the spread the method has anyway)", "",
              "2. The whole defence (demo commands: MAIN.py moth -> Unlearn-trigger.py -> downstream classifier)",
              "seed  precision  rounds  chosen  L1      ACC    ASR    MAIN s  unlearn s  downstream s"]
    for r in runs:
        lines.append(f"{r['seed']:<4}  {r['precision']:9}  {r['rounds']:6}  {r['best_round']:6}  {r['best_l1']:6.2f}  "
                     f"{r['acc']:5.2f}  {r['asr']:5.2f}  {r['main_s']:6.1f}  {r['unlearn_s']:9.1f}  "
                     f"{r['downstream_s']:12.1f}")
    for name in PRECISIONS:
        mine = [r for r in runs if r["precision"] == name]
        if mine:
            acc, asr = [r["acc"] for r in mine], [r["asr"] for r in mine]
            lines.append(f"{name}: ACC mean {statistics.mean(acc):.2f} (range {min(acc):.2f}-{max(acc):.2f}), "
                         f"ASR mean {statistics.mean(asr):.2f} (range {min(asr):.2f}-{max(asr):.2f})")
    fp32 = {r["seed"]: r for r in runs if r["precision"] == "fp32"}
    amp = {r["seed"]: r for r in runs if r["precision"] == "amp"}
    if fp32 and amp:
        same = [s for s in fp32 if s in amp and fp32[s]["rounds"] == amp[s]["rounds"]]
        unlearn = statistics.median(amp[s]["unlearn_s"] / fp32[s]["unlearn_s"] for s in amp)
        lines.append(f"unlearning time amp/fp32 (same epochs): median {unlearn:.2f}; MAIN rounds equal in "
                     f"{len(same)} of {len(fp32)} seeds (MAIN time depends on where the early stop fires)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Compare --amp with float32 on a demo run's RECEIVE commands; prints the tables, returns every number."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a demo run folder (python demo.py --out <folder>)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of --seed indices (0..2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="", help="working folder (default <run>/amp-quality)")
    p.add_argument("--skip-defence", action="store_true", help="only measurement 1 (seconds, not minutes)")
    p.add_argument("--table", default="", help="also write the table to this file")
    p.add_argument("--json", default="", help="write every number to this file")
    args = p.parse_args(argv)
    run = Path(args.run)
    seeds = [int(s) for s in args.seeds.split(",")]
    if any(not 0 <= s <= 2 for s in seeds):
        sys.exit("error: --seeds: expected indices 0..2 (Unlearn-trigger.py has three seeds)")
    try:
        device = resolve_device(args.device, 0, verbose=False)
        cmds = receive_commands(run)
    except UserError as err:
        sys.exit(f"error: {err}")
    name = device_name(device)
    started = time.perf_counter()
    rounds = one_round(cmds["main"], seeds, device)
    runs = [] if args.skip_defence else whole_defence(cmds, seeds, Path(args.out or run / "amp-quality"), str(device))
    header = (f"--amp quality check on {device.type} [{name}], torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, encoder {flag_value(cmds['main'], '--pretrained_encoder')}, "
              f"{time.perf_counter() - started:.0f} s")
    table = format_tables(header, rounds, runs)
    print(table, flush=True)
    if args.table:
        Path(args.table).write_text(table + "\n")
    result = {"device": str(device), "device_name": name, "one_round": rounds, "defence": runs}
    if args.json:
        write_json(args.json, result, indent=1, sort_keys=False)
    return result


if __name__ == "__main__":
    main()
