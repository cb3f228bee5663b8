"""The demo's results: the table (encoder x ACC x ASR, chosen round, trigger L1), the issue's targets judged on
it, and both as printed text."""
from __future__ import annotations

import math
from pathlib import Path

from DATASETS.triggers import load_trigger


def injected_l1(trigger_path: Path) -> float:
    """Mask L1 of the ground-truth trigger (100 for the 10x10 square)."""
    return float(load_trigger(trigger_path, "--trigger_file").mask[0].sum())


def results_table(results: dict, moth: dict, nc: dict) -> list[dict]:
    """Rows: encoder, ACC, ASR, chosen round and trigger L1 (for the cleaned encoders), read from the runs."""
    extra = {"RECEIVE": {"round": moth.get("best_round"), "trigger_l1": moth.get("best_l1")},
             "NC baseline": {"round": None, "trigger_l1": nc.get("l1")}}
    return [{"encoder": name, "acc": r["acc"], "asr": r["asr"], "round": extra.get(name, {}).get("round"),
             "trigger_l1": extra.get(name, {}).get("trigger_l1"), **detection_cells(r.get("detect"))}
            for name, r in results.items()]


def detection_cells(detect: dict | None) -> dict:
    """The table's detection columns from MAIN.py --phase detect's summary (empty for the cleaned encoders)."""
    if detect is None:
        return {}
    return {"detect_verdict": detect["verdict"], "detect_pl1": detect["pl1"]}


def check_targets(table: list[dict]) -> list[dict]:
    """The issue's targets, judged on the measured numbers."""
    row = {r["encoder"]: r for r in table}
    clean, bad, rec, nc = (row[k] for k in ("clean", "backdoored", "RECEIVE", "NC baseline"))
    gap_bad, gap_rec = bad["acc"] - clean["acc"], rec["acc"] - bad["acc"]
    # Accuracy targets are one-sided: they guard utility, and a higher ACC harms nobody (the downstream
    # MLP alone moves ACC by a few points from encoder to encoder).
    return [
        {"target": "backdoored encoder: ASR >= 90%", "measured": f"{bad['asr']:.2f}%", "met": bad["asr"] >= 90},
        {"target": "backdoored encoder: ACC at most 3 points below the clean encoder's",
         "measured": f"{gap_bad:+.2f} points", "met": gap_bad >= -3},
        {"target": "after RECEIVE: ASR <= 5%", "measured": f"{rec['asr']:.2f}%", "met": rec["asr"] <= 5},
        {"target": "after RECEIVE: ACC at most 3 points below the backdoored encoder's",
         "measured": f"{gap_rec:+.2f} points", "met": gap_rec >= -3},
        {"target": "RECEIVE below the NC baseline on ASR", "measured": f"{rec['asr']:.2f}% vs {nc['asr']:.2f}%",
         "met": rec["asr"] < nc["asr"]},
    ] + detection_targets(clean, bad)


def detection_targets(clean: dict, bad: dict) -> list[dict]:
    """MAIN.py --phase detect's verdicts on the clean and the backdoored encoder (rows of runs that had them)."""
    out = []
    for row, expected in ((clean, "no backdoor found"), (bad, "backdoor found")):
        if "detect_verdict" in row:
            out.append({"target": f"detection on the {row['encoder']} encoder: {expected}",
                        "measured": f"{row['detect_verdict']} (PL1 {_cell(row['detect_pl1'], 4)})",
                        "met": row["detect_verdict"] == expected})
    return out


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_table(table: list[dict], gt_l1: float) -> str:
    """The results table as fixed-width text, one encoder per line, with the injected trigger's L1 ``gt_l1`` below."""
    head = f"{'encoder':<14}{'ACC (%)':>9}{'ASR (%)':>9}{'chosen round':>14}{'trigger L1':>12}  detection (PL1)"
    lines = [head, "-" * len(head)]
    for r in table:
        detection = f"{r['detect_verdict']} ({_cell(r['detect_pl1'], 4)})" if "detect_verdict" in r else "-"
        lines.append(f"{r['encoder']:<14}{_cell(r['acc'], 2):>9}{_cell(r['asr'], 2):>9}"
                     f"{_cell(r['round'], 0):>14}{_cell(r['trigger_l1'], 1):>12}  {detection}")
    lines.append(f"(injected trigger: L1 {gt_l1:.0f}; ASR leaves the target class out)")
    return "\n".join(lines)


def format_targets(targets: list[dict]) -> str:
    """One line per target of the issue: met or MISSED, what it asks, what was measured."""
    return "\n".join(f"[{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']}" for t in targets)
