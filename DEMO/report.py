"""The report of a run: PNG figures drawn from the metrics files the stages write, and report.md.

Everything is read back from files (``metrics.csv`` and ``mask-pattern-*.npz`` of ``MAIN.py``,
``unlearn-metrics.csv`` of ``Unlearn-trigger.py``, the demo's ``summary.json``), so the same figures can
be redrawn for any run, on real data too (``python report.py``). A missing input only drops the
figure or section that needs it.
"""
from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from DATASETS.triggers import load_trigger  # noqa: E402
from DEMO.layout import REPORT_FILE, RunLayout  # noqa: E402
from INVERSION.relative import near_clean  # noqa: E402
from Trainer.filenames import BEST_TRIGGER, NC_METRICS, NC_TRIGGER  # noqa: E402
from UTILS.errors import fail  # noqa: E402
from UTILS.io import atomic_write, ensure_writable_dir, read_csv  # noqa: E402
from UTILS.runtime import log  # noqa: E402

TriggerArrays = tuple[np.ndarray, np.ndarray]  # a trigger file as pictures: mask (H, W), pattern (H, W, 3), in [0, 1]
SHOWN_ROUNDS = 5  # inverted triggers shown besides the chosen one


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_rows(path: Path) -> list[dict[str, float]]:
    """A metrics CSV as rows of floats (non-numbers become NaN); [] when the file is missing."""
    if not path.is_file():
        return []
    return [{k: _float(v) for k, v in row.items()} for row in read_csv(path)]


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, or {} when the file is absent (a stage that was not run)."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def trigger_arrays(path: Path) -> Optional[TriggerArrays]:
    """(mask (H, W), pattern (H, W, 3)) of a trigger npz in either format; None when missing."""
    if not path.is_file():
        return None
    trig = load_trigger(path, "--trigger_file")
    mask = trig.mask.detach().cpu().float().numpy()  # (3, H, W)
    pattern = trig.pattern.detach().cpu().float().numpy()  # (3, H, W)
    return mask[0], pattern.transpose(1, 2, 0)


@dataclass
class RunFiles:
    """Where a run's metrics live; every field is optional."""

    moth_log: Optional[Path] = None
    unlearn_log: Optional[Path] = None
    nc_log: Optional[Path] = None
    nc_unlearn_log: Optional[Path] = None
    trigger_file: Optional[Path] = None
    summary: dict = field(default_factory=dict)

    def moth_rows(self) -> list[dict[str, float]]:
        """The moth run's per-round metrics.csv rows (empty without --moth_log)."""
        return read_rows(self.moth_log / "metrics.csv") if self.moth_log else []

    def moth_summary(self) -> dict:
        """The moth run's metrics.json ({} without --moth_log or when absent)."""
        return read_json(self.moth_log / "metrics.json") if self.moth_log else {}

    def nc_summary(self) -> dict:
        """The NC baseline's metrics ({} without --nc_log or when absent)."""
        return read_json(self.nc_log / NC_METRICS) if self.nc_log else {}

    def unlearn_rows(self, nc: bool = False) -> list[dict[str, float]]:
        """Per-epoch unlearn-metrics.csv rows of the RECEIVE arm, or of the NC arm with ``nc``."""
        folder = self.nc_unlearn_log if nc else self.unlearn_log
        return read_rows(folder / "unlearn-metrics.csv") if folder else []

    def round_files(self) -> dict[int, Path]:
        """{round: mask-pattern-<round>.npz} of the moth log folder, in round order."""
        if not self.moth_log or not self.moth_log.is_dir():
            return {}
        found = {}
        for p in self.moth_log.glob("mask-pattern-*.npz"):
            m = re.fullmatch(r"mask-pattern-(\d+)\.npz", p.name)
            if m:
                found[int(m.group(1))] = p
        return dict(sorted(found.items()))

    def best_round(self) -> Optional[int]:
        """The round early stopping chose: metrics.json's best_round, else mask-pattern-best.npz's idx, else None."""
        best = self.moth_summary().get("best_round")
        if best is None and self.moth_log and (self.moth_log / BEST_TRIGGER).is_file():
            with np.load(self.moth_log / BEST_TRIGGER, allow_pickle=False) as z:
                best = int(z["idx"]) if "idx" in z.files else None
        return None if best is None else int(best)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda h: h.write(buf.getvalue()))


def pick_rounds(rounds: list[int], best: Optional[int], n: int = SHOWN_ROUNDS) -> list[int]:
    """About ``n`` rounds spread evenly from the first to the last, plus the chosen one, sorted."""
    if not rounds:
        return []
    idx = np.unique(np.linspace(0, len(rounds) - 1, num=min(n, len(rounds))).round().astype(int))
    chosen = {rounds[i] for i in idx}
    if best is not None and best in rounds:
        chosen.add(best)
    return sorted(chosen)


def _trigger_column(axes, col: int, trig: TriggerArrays, title: str, highlight: bool = False) -> None:
    """Mask (grey) above mask x pattern (what the trigger writes onto an image) in column ``col``."""
    mask, pattern = trig
    axes[0, col].imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1, col].imshow(np.clip(mask[..., None] * pattern, 0, 1), interpolation="nearest")
    axes[0, col].set_title(title, fontsize=9, color="tab:red" if highlight else "black",
                           fontweight="bold" if highlight else "normal")
    for ax in axes[:, col]:
        ax.set_xticks([])
        ax.set_yticks([])
        if highlight:
            for spine in ax.spines.values():
                spine.set(edgecolor="tab:red", linewidth=2.5)


def plot_triggers(files: RunFiles, out: Path) -> Optional[Path]:
    """triggers.png: ground truth | inverted triggers of several rounds (chosen one in red) | NC baseline."""
    columns: list[tuple[TriggerArrays, str, bool]] = []
    gt = trigger_arrays(files.trigger_file) if files.trigger_file else None
    if gt is not None:
        columns.append((gt, f"ground truth\nL1 {gt[0].sum():.0f}", False))
    rounds, best = files.round_files(), files.best_round()
    for k in pick_rounds(list(rounds), best):
        trig = trigger_arrays(rounds[k])
        label = f"{'chosen: ' if k == best else ''}round {k}\nL1 {trig[0].sum():.1f}"
        columns.append((trig, label, k == best))
    nc = trigger_arrays(files.nc_log / NC_TRIGGER) if files.nc_log else None
    if nc is not None:
        columns.append((nc, f"NC (one round)\nL1 {nc[0].sum():.1f}", False))
    if not columns:
        return None
    fig, axes = plt.subplots(2, len(columns), figsize=(1.6 * len(columns) + 0.6, 3.8), squeeze=False)
    for col, (trig, title, highlight) in enumerate(columns):
        _trigger_column(axes, col, trig, title, highlight)
    axes[0, 0].set_ylabel("mask")
    axes[1, 0].set_ylabel("mask x pattern")
    fig.suptitle("Injected trigger and inverted triggers", fontsize=11)
    return save_figure(fig, out / "triggers.png")


def _mark_chosen(ax, rounds: list[float], values: list[float], best: Optional[int]) -> None:
    if best is None or best not in rounds:
        return
    ax.axvline(best, color="tab:red", linestyle="--", linewidth=1)
    ax.plot([best], [values[rounds.index(best)]], marker="*", markersize=14, color="tab:red",
            label=f"early stop's choice (round {best})", linestyle="none")


def plot_growth(files: RunFiles, out: Path) -> Optional[Path]:
    """trigger_growth.png: trigger L1 per round (the paper's growth) and the Wasserstein distance per round."""
    rows = [r for r in files.moth_rows() if not math.isnan(r.get("round", math.nan))]
    if not rows:
        return None
    rounds = [int(r["round"]) for r in rows]
    l1 = [r.get("l1", math.nan) for r in rows]
    dist = [r.get("distance", math.nan) for r in rows]
    best, summary = files.best_round(), files.moth_summary()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    top.plot(rounds, l1, marker="o", markersize=3, label="inverted trigger (RECEIVE rounds)")
    gt = trigger_arrays(files.trigger_file) if files.trigger_file else None
    if gt is not None:
        top.axhline(gt[0].sum(), color="black", linestyle=":", label=f"injected trigger ({gt[0].sum():.0f})")
    nc_l1 = files.nc_summary().get("l1")
    if nc_l1 is not None:
        top.axhline(nc_l1, color="tab:purple", linestyle="-.", label=f"NC one-round trigger ({nc_l1:.1f})")
    _mark_chosen(top, rounds, l1, best)
    top.set_ylabel("trigger size (mask L1)")
    top.set_title("Trigger size growth over the inversion rounds")
    top.legend(fontsize=8)
    bottom.plot(rounds, dist, marker="o", markersize=3, color="tab:green", label="Wasserstein distance")
    _mark_chosen(bottom, rounds, dist, best)
    if summary.get("stopped_early"):
        bottom.axvline(rounds[-1], color="gray", linestyle=":", label=f"stopped ({summary.get('stop_reason')})")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("round")
    bottom.set_ylabel("W1(f0(x), f0(stamped x))")
    bottom.set_title("Early-stop signal: how far each trigger moves the original encoder's features "
                     "(RECEIVE keeps the maximum)", fontsize=10)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "trigger_growth.png")


def plot_unlearning(files: RunFiles, out: Path) -> Optional[Path]:
    """unlearning.png: kNN ACC and ASR per unlearning epoch (epoch 0 = before), RECEIVE and NC."""
    series = [(name, files.unlearn_rows(nc)) for name, nc in (("RECEIVE", False), ("NC baseline", True))]
    series = [(name, [r for r in rows if not math.isnan(r.get("knn_acc", math.nan))]) for name, rows in series]
    series = [(name, rows) for name, rows in series if rows]
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, rows), style in zip(series, ("-o", "--s")):
        epochs = [int(r["epoch"]) for r in rows]
        axes[0].plot(epochs, [r["knn_acc"] for r in rows], style, markersize=4, label=name)
        axes[1].plot(epochs, [r.get("knn_asr", math.nan) for r in rows], style, markersize=4, label=name)
    for ax, what in zip(axes, ("ACC (clean test)", "ASR (triggered test, target class left out)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("unlearning epoch (0 = before)")
        ax.set_ylabel(f"kNN {what.split()[0]} (%)")
        ax.set_title(f"kNN {what}", fontsize=10)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "unlearning.png")


def plot_results(table: list[dict], out: Path) -> Optional[Path]:
    """results.png: downstream ACC and ASR of every encoder (bars)."""
    rows = [r for r in table if not math.isnan(_float(r.get("acc")))]
    if not rows:
        return None
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 2, 3.8))
    acc = ax.bar(x - 0.2, [_float(r["acc"]) for r in rows], 0.4, label="ACC", color="tab:blue")
    asr = ax.bar(x + 0.2, [_float(r["asr"]) for r in rows], 0.4, label="ASR", color="tab:red")
    ax.bar_label(acc, fmt="%.1f", fontsize=8)
    ax.bar_label(asr, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, [r["encoder"] for r in rows], fontsize=9)
    ax.set_ylim(0, 110)
    ax.set_ylabel("%")
    ax.set_title("Downstream classifier: accuracy and attack success rate")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, out / "results.png")


def draw_figures(files: RunFiles, out: Path) -> dict[str, Path]:
    """Every figure the inputs allow; returns {name: path}."""
    ensure_writable_dir(out, "--out")
    made = {"triggers": plot_triggers(files, out), "trigger_growth": plot_growth(files, out),
            "unlearning": plot_unlearning(files, out), "results": plot_results(files.summary.get("table", []), out)}
    return {k: v for k, v in made.items() if v is not None}


CAPTIONS = {
    "results": "Downstream classifier (training_downstream_classifier.py) on each encoder: ACC on the clean "
               "test set, ASR on the triggered test set without the target class.",
    "triggers": "Top: masks; bottom: mask x pattern, what each trigger writes onto an image. The injected "
                "trigger, inverted triggers of several RECEIVE rounds (the early stop's choice in red) and "
                "the one-round Neural-Cleanse baseline.",
    "trigger_growth": "Trigger size (mask L1) per inversion round: hardening the encoder after every round "
                      "makes later triggers grow. Below, the early-stop signal (Wasserstein distance on the "
                      "original encoder); the star marks the round RECEIVE keeps.",
    "unlearning": "kNN monitor during unlearning (epoch 0 = before), for the RECEIVE trigger and the NC trigger.",
}


def _fmt(value, digits: int = 2) -> str:
    v = _float(value)
    if isinstance(value, str) and math.isnan(v):
        return value
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def table_markdown(table: list[dict]) -> list[str]:
    """The encoder x ACC x ASR table (plus chosen round and trigger L1) as markdown lines."""
    lines = ["| encoder | ACC (%) | ASR (%) | chosen round | trigger L1 | detection (PL1) |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in table:
        rnd = r.get("round")
        detection = f"{r['detect_verdict']} ({_fmt(r.get('detect_pl1'), 4)})" if "detect_verdict" in r else "-"
        lines.append(f"| {r['encoder']} | {_fmt(r.get('acc'))} | {_fmt(r.get('asr'))} | "
                     f"{'-' if rnd is None else rnd} | {_fmt(r.get('trigger_l1'), 1)} | {detection} |")
    return lines


STOP_WORDS = {"last epoch": "the last epoch ended"}


def _stop_words(reason) -> str:
    reason = str(reason)
    return STOP_WORDS.get(reason, f"{reason} rounds without a new maximum" if reason.startswith("patience") else reason)


def _threshold_lines(rows: list[dict[str, float]]) -> list[str]:
    """Round 0's clean psim against its threshold, and when to choose ``auto --psim centred`` instead."""
    if not rows or not all(math.isfinite(_float(rows[0].get(k))) for k in ("clean_psim", "threshold")):
        return []
    clean, threshold = _float(rows[0]["clean_psim"]), _float(rows[0]["threshold"])
    line = (f"- The clean images' own psim in round 0 was {clean:.3f} against the threshold {threshold:.3f}")
    # the ceiling of the pair-mean psim; the paper's psim tops out at 31/32 instead, which moves the band's
    # edge by under 0.01 of psim: close enough for a hint in a report
    if near_clean(threshold, clean, 1.0):
        return [line + ": so close that a tiny trigger reaches it; run `MAIN.py` with `--similarity_threshold auto "
                       "--psim centred`, which asks the same collapse of any encoder (docs/ALGORITHMS.md §1b)."]
    return [line + ": far enough below it that the threshold asks for a real collapse."]


def _inversion_lines(files: RunFiles) -> list[str]:
    lines = []
    moth, nc = files.moth_summary(), files.nc_summary()
    if moth:
        lines.append(f"- RECEIVE (`MAIN.py --phase moth`): {moth.get('rounds')} rounds, stopped because "
                     f"{_stop_words(moth.get('stop_reason'))}; kept round {moth.get('best_round')} "
                     f"(trigger L1 {_fmt(moth.get('best_l1'), 1)}, distance {_fmt(moth.get('best_distance'), 4)}, "
                     f"psim {_fmt(moth.get('best_psim'), 3)}).")
        if moth.get("converged_rounds"):
            lines.append(f"- The distance stopped moving (within --epsilon) in round(s) "
                         f"{', '.join(str(k) for k in moth['converged_rounds'])}: each saved its trigger as the best "
                         f"one and skipped the rest of its epoch.")
        l1 = [_float(v) for v in moth.get("l1_per_round") or []]
        if l1:
            k = int(np.nanargmin(l1)) if not all(math.isnan(v) for v in l1) else 0
            lines.append(f"- Trigger L1 per round: {_fmt(l1[0], 1)} in round 0, smallest {_fmt(l1[k], 1)} in round "
                         f"{k}, {_fmt(l1[-1], 1)} in the last round ({len(l1) - 1}).")
    lines += _threshold_lines(files.moth_rows())
    if nc:
        lines.append(f"- NC baseline (`MAIN.py --phase nc`): one round, trigger L1 {_fmt(nc.get('l1'), 1)}, "
                     f"psim {_fmt(nc.get('psim'), 3)}, threshold reached: {nc.get('reached_threshold')}.")
    return lines


def _summary_sections(summary: dict) -> list[str]:
    lines = []
    if summary.get("table"):
        lines += ["## Results", ""] + table_markdown(summary["table"]) + [""]
    if summary.get("targets"):
        lines += ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |"
                  for t in summary["targets"]] + [""]
    if summary.get("stage_times"):
        lines += ["## Stage times", "", "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {s['stage']} | {s['seconds']:.1f} |" for s in summary["stage_times"]]
        lines += [f"| total | {sum(s['seconds'] for s in summary['stage_times']):.1f} |", ""]
    return lines


def write_markdown(files: RunFiles, figures: dict[str, Path], out: Path, title: str = "RECEIVE report") -> Path:
    """report.md: the table, targets, stage times, what the inversion chose, the figures and the commands."""
    summary = files.summary
    lines = [f"# {title}", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    lines += _summary_sections(summary)
    inversion = _inversion_lines(files)
    if inversion:
        lines += ["## Trigger inversion", ""] + inversion + [""]
    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            lines += [f"![{name}]({path.name})", "", CAPTIONS.get(name, ""), ""]
    if summary.get("commands"):
        lines += ["## Commands", "", "Every stage, as its command line:", "", "```bash"]
        lines += summary["commands"] + ["```", ""]
    text = "\n".join(lines)
    return atomic_write(out / REPORT_FILE, lambda h: h.write(text.encode()))


def build_report(files: RunFiles, out: Path, title: str = "RECEIVE report") -> dict[str, Path]:
    """Draw every figure the inputs allow and write report.md next to them; returns {name: path}."""
    figures = draw_figures(files, out)
    return {**figures, "report": write_markdown(files, figures, out, title)}


def _existing_dir(value: str, flag: str) -> Optional[Path]:
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        fail(f"{flag} {value}: not a folder")
    return path


def run_files(cfg) -> RunFiles:
    """A ReportConfig's inputs; ``--run`` (a demo run folder) fills every path the flags leave empty."""
    layout = RunLayout(Path(cfg.run)) if cfg.run else None
    if layout is not None and not layout.root.is_dir():
        fail(f"--run {cfg.run}: not a folder")

    def pick(value: str, attr: str) -> str:
        return value or (str(getattr(layout, attr)) if layout is not None else "")

    table = pick(cfg.table, "summary")
    summary = {}
    if table:
        if not Path(table).is_file():
            fail(f"--table {table}: file not found (the demo's summary.json)")
        try:
            summary = json.loads(Path(table).read_text())
        except ValueError as exc:
            fail(f"--table {table}: not JSON ({exc})")
    trigger = pick(cfg.trigger_file, "trigger")
    return RunFiles(moth_log=_existing_dir(pick(cfg.moth_log, "moth_log"), "--moth_log"),
                    unlearn_log=_existing_dir(pick(cfg.unlearn_log, "unlearn_log"), "--unlearn_log"),
                    nc_log=_existing_dir(pick(cfg.nc_log, "nc_log"), "--nc_log"),
                    nc_unlearn_log=_existing_dir(pick(cfg.nc_unlearn_log, "nc_unlearn_log"), "--nc_unlearn_log"),
                    trigger_file=Path(trigger) if trigger and Path(trigger).is_file() else None,
                    summary=summary)


def run_report(cfg) -> dict[str, Path]:
    """``report.py``: redraw the figures and report.md into --out (default: <run>/report)."""
    files = run_files(cfg)
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "report"
    made = build_report(files, out)
    for name, path in made.items():
        log(f"{name}: {path}")
    return made
