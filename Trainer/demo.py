"""The whole story in one command (``demo.py``): from nothing to a cleaned encoder.

Stages, each run through the real entry script's ``main([...flags...])`` (so the demo also proves the
command lines), all writing under one run folder:

1. the embedded datasets (``synthetic`` / ``synthetic_down``) and the ground-truth trigger;
2. ``pretraining_encoder.py``: a clean SimCLR encoder;
3. ``badencoder.py``: the backdoored encoder;
4. ``training_downstream_classifier.py``: ACC/ASR of the clean and the backdoored encoder;
5. ``MAIN.py --phase moth`` -> ``Unlearn-trigger.py`` -> downstream ACC/ASR (RECEIVE);
6. ``MAIN.py --phase nc`` -> ``Unlearn-trigger.py`` -> downstream ACC/ASR (the one-round baseline);
7. the table, the targets, ``summary.json`` and the report folder (``Trainer/report.py``).
"""
from __future__ import annotations

import importlib.util
import json
import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from DATASETS import synthetic
from DATASETS.triggers import load_trigger, save_ground_truth_trigger
from Trainer.filenames import BEST_TRIGGER, DEFAULT_TRIGGER, NC_TRIGGER
from Trainer.make_configs import DemoConfig
from Trainer.report import RunFiles, build_report
from Trainer.unlearn import CKPT as UNLEARNED
from UTILS.errors import fail
from UTILS.io import ensure_writable_dir, write_csv, write_json
from UTILS.runtime import log

ROOT = Path(__file__).resolve().parents[1]
TRIGGER = DEFAULT_TRIGGER  # the run folder keeps the ground truth where the original looked for it
USAGE = "synthetic"  # normalisation statistics of the embedded pre-training set
PRETRAIN_SET, DOWNSTREAM_SET = "synthetic", "synthetic_down"
EVAL_DIRS = {"clean": "clean", "backdoored": "backdoored", "RECEIVE": "receive", "NC baseline": "nc"}  # <run>/eval/<dir>


@dataclass(frozen=True)
class RunLayout:
    """Where every stage of a demo run writes (also how ``report.py --run`` finds a run's files)."""

    root: Path

    def __getattr__(self, name: str) -> Path:
        paths = {"trigger": TRIGGER, "clean": "clean", "backdoor": "backdoor", "moth_log": "receive/log",
                 "moth_ckpt": "receive/hardened", "unlearn_log": "receive/unlearn-log",
                 "unlearn_ckpt": "receive/unlearned", "nc_log": "nc/log", "nc_ckpt": "nc/ckpt",
                 "nc_unlearn_log": "nc/unlearn-log", "nc_unlearn_ckpt": "nc/unlearned", "report": "report",
                 "summary": "summary.json", "times": "stage-times.csv"}
        if name not in paths:
            raise AttributeError(name)
        return self.root / paths[name]

    def eval_dir(self, encoder: str) -> Path:
        return self.root / "eval" / encoder


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
    knn_k: int = 200


PRESETS: dict[str, Preset] = {
    "default": Preset(  # about 4 minutes on 2 idle CPU cores; see docs/DEMO.md for how it was chosen
        model="tiny",
        pretrain={"epochs": 12, "batch_size": 128, "lr": 3e-3, "data_ratio": 1.0},
        badencoder={"epochs": 15, "batch_size": 128, "lr": 0.1, "data_ratio": 0.2, "reference_count": 1},
        downstream={"nn_epochs": 100, "batch_size": 256, "lr": 1e-3},
        inversion={"data_ratio": 0.02, "attack_size": 64, "re_steps": 40, "re_lr": 0.1,
                   "similarity_threshold": 0.9, "init_cost": 5e-2},
        moth={"epochs": 5, "batch_size": 32, "harden_lr": 1e-3, "epsilon": 1e-4, "patience": 6, "monitor_every": 5},
        unlearn={"epochs": 10, "batch_size": 128, "lr": 0.02, "data_ratio": 0.1, "portion": 0.3, "beta": 3.5},
    ),
    "ci": Preset(  # plumbing only: every stage runs, on a few dozen images
        model="tiny",
        pretrain={"epochs": 1, "batch_size": 32, "lr": 1e-3, "data_ratio": 0.02},
        badencoder={"epochs": 1, "batch_size": 32, "lr": 1e-3, "data_ratio": 0.02, "reference_count": 2},
        downstream={"nn_epochs": 2, "batch_size": 128, "lr": 1e-3},
        inversion={"data_ratio": 0.01, "attack_size": 8, "re_steps": 2, "re_lr": 1e-1,
                   "similarity_threshold": 0.9, "init_cost": 5e-2},
        moth={"epochs": 1, "batch_size": 16, "harden_lr": 1e-3, "epsilon": 1e-4, "patience": 3, "monitor_every": 1},
        unlearn={"epochs": 2, "batch_size": 32, "lr": 0.05, "data_ratio": 0.02, "portion": 0.3, "beta": 3.5},
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


_SCRIPTS: dict[str, object] = {}


def load_script(script: str):
    """Import a top-level entry script as a module (``Unlearn-trigger.py`` has a dash in its name)."""
    if script not in _SCRIPTS:
        name = "_demo_" + script.replace("-", "_").removesuffix(".py")
        spec = importlib.util.spec_from_file_location(name, ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]


@dataclass
class DemoRun:
    """One demo run: the settings, the folder, and what every stage took and ran."""

    cfg: DemoConfig
    preset: Preset
    layout: RunLayout
    times: list[dict] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def runtime_flags(self) -> list[str]:
        extra = ["--overwrite"] if self.cfg.overwrite else []
        return ["--device", self.cfg.device, "--gpu", self.cfg.gpu, "--data_dir", self.cfg.data_dir] + extra

    def stage(self, name: str, work: Callable[[], object]) -> object:
        """Run one stage, print its wall-clock time and record it."""
        n = len(self.times) + 1
        log(f"\n=== stage {n}: {name} ===")
        began = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - began
        self.times.append({"stage": name, "seconds": seconds})
        write_csv(self.layout.times, self.times, ("stage", "seconds"))
        log(f"=== stage {n}: {name} done in {seconds:.1f} s ===")
        return result

    def script(self, name: str, script: str, argv: list[str]) -> dict:
        """A stage that is one entry script's ``main(argv)``; its command line goes into the report."""
        argv = argv + self.runtime_flags()
        self.commands.append(f"python {script} {' '.join(shlex.quote(a) for a in argv)}")

        def work() -> dict:
            try:
                return load_script(script).main(argv)
            except SystemExit as exc:  # the script printed its one-line error already
                log(f"demo: stage '{name}' failed (exit code {exc.code}); its command line was:\n  "
                    f"{self.commands[-1]}")
                raise

        return self.stage(name, work)

    # ---- the stages -------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Stage 1: generate the embedded datasets into --data_dir (if absent) and write the trigger."""
        def work() -> None:
            for name in (PRETRAIN_SET, DOWNSTREAM_SET):
                folder = synthetic.ensure_cached(name, self.cfg.data_dir)
                log(f"{name}: {folder}")
            save_ground_truth_trigger(self.layout.trigger)
            log(f"ground-truth trigger: {self.layout.trigger}")

        self.stage("datasets and trigger", work)

    def pretrain(self) -> Path:
        p, L = self.preset, self.layout
        self.script("SimCLR pre-training (clean encoder)", "pretraining_encoder.py", [
            "--pretraining_dataset", PRETRAIN_SET, "--model", p.model, "--encoder_usage_info", USAGE,
            "--results_dir", str(L.clean), "--downstreamTask", DOWNSTREAM_SET, "--knn-k", str(p.knn_k),
            "--seed", str(100 + self.cfg.seed), *flags(p.pretrain)])
        return L.clean / f"model_{p.pretrain['epochs']}.pth"

    def inject(self, clean: Path) -> Path:
        p, L = self.preset, self.layout
        self.script("BadEncoder injection (backdoored encoder)", "badencoder.py", [
            "--pretrained_encoder", str(clean), "--shadow_dataset", PRETRAIN_SET, "--model", p.model,
            "--encoder_usage_info", USAGE, "--trigger_file", str(L.trigger), "--reference_dataset", DOWNSTREAM_SET,
            "--reference_label", str(self.cfg.target), "--results_dir", str(L.backdoor), "--knn-k", str(p.knn_k),
            "--seed", str(100 + self.cfg.seed), *flags(p.badencoder)])
        return L.backdoor / f"model_{p.badencoder['epochs']}.pth"

    def evaluate(self, label: str, encoder: Path) -> dict:
        p = self.preset
        return self.script(f"downstream classifier ({label})", "training_downstream_classifier.py", [
            "--dataset", DOWNSTREAM_SET, "--trigger_file", str(self.layout.trigger), "--encoder", str(encoder),
            "--model", p.model, "--reference_label", str(self.cfg.target), "--encoder_usage_info", USAGE,
            "--results_dir", str(self.layout.eval_dir(EVAL_DIRS[label])), "--seed", str(100 + self.cfg.seed),
            *flags(p.downstream)])

    def invert(self, phase: str) -> dict:
        p, L = self.preset, self.layout
        log_dir, results = (L.moth_log, L.moth_ckpt) if phase == "moth" else (L.nc_log, L.nc_ckpt)
        extra = flags(p.moth) if phase == "moth" else []
        what = "RECEIVE: iterative trigger inversion" if phase == "moth" else "NC baseline: one-round inversion"
        return self.script(f"{what} (MAIN.py --phase {phase})", "MAIN.py", [
            "--seed", str(self.cfg.seed), "--phase", phase, "--dataset", PRETRAIN_SET, "--model", p.model,
            "--pretrained_encoder", str(L.backdoor / f"model_{p.badencoder['epochs']}.pth"),
            "--encoder_usage_info", USAGE, "--log_dir", str(log_dir), "--results_dir", str(results),
            "--downstreamTask", DOWNSTREAM_SET, "--reference_label", str(self.cfg.target),
            "--trigger_file", str(L.trigger), "--knn-k", str(p.knn_k), *flags(p.inversion), *extra])

    def unlearn(self, phase: str, trigger: Path) -> Path:
        p, L = self.preset, self.layout
        log_dir, results = (L.unlearn_log, L.unlearn_ckpt) if phase == "moth" else (L.nc_unlearn_log, L.nc_unlearn_ckpt)
        who = "RECEIVE" if phase == "moth" else "NC baseline"
        self.script(f"{who}: unlearning its trigger (Unlearn-trigger.py)", "Unlearn-trigger.py", [
            # --phase moth for both: the only phase Unlearn-trigger.py runs (the baseline differs by its trigger)
            "--seed", str(self.cfg.seed % 3), "--results_dir", str(results), "--phase", "moth",
            "--dataset", PRETRAIN_SET,
            "--model", p.model, "--pretrained_encoder", str(L.backdoor / f"model_{p.badencoder['epochs']}.pth"),
            "--encoder_usage_info", USAGE, "--log_dir", str(log_dir), "--reference_label", str(self.cfg.target),
            "--downstreamTask", DOWNSTREAM_SET, "--re_mask_pattern", str(trigger), "--trigger_file",
            str(L.trigger), "--knn-k", str(p.knn_k), *flags(p.unlearn)])
        return results / UNLEARNED.format(p.unlearn["epochs"])

    # ---- the whole run ----------------------------------------------------------------------------------------

    def run(self) -> dict:
        self.prepare()
        clean = self.pretrain()
        backdoored = self.inject(clean)
        results = {"clean": self.evaluate("clean", clean), "backdoored": self.evaluate("backdoored", backdoored)}
        moth = self.invert("moth")
        receive = self.unlearn("moth", self.layout.moth_log / BEST_TRIGGER)
        results["RECEIVE"] = self.evaluate("RECEIVE", receive)
        nc = self.invert("nc")
        baseline = self.unlearn("nc", self.layout.nc_log / NC_TRIGGER)
        results["NC baseline"] = self.evaluate("NC baseline", baseline)
        return self.stage("summary and report", lambda: self.finish(results, moth, nc))

    def finish(self, results: dict, moth: dict, nc: dict) -> dict:
        """The table, the targets, summary.json and the report folder; prints the table."""
        table = results_table(results, moth, nc)
        targets = check_targets(table)
        summary = {"description": self.description(), "preset": self.cfg.preset, "target_label": self.cfg.target,
                   "table": table, "targets": targets, "stage_times": self.times, "commands": self.commands,
                   "injected_trigger_l1": injected_l1(self.layout.trigger),
                   "settings": {"demo": asdict(self.cfg), "preset": asdict(self.preset)}}
        write_json(self.layout.summary, summary)
        L = self.layout
        files = RunFiles(moth_log=L.moth_log, unlearn_log=L.unlearn_log, nc_log=L.nc_log,
                         nc_unlearn_log=L.nc_unlearn_log, trigger_file=L.trigger, summary=summary)
        made = build_report(files, L.report, title="RECEIVE demo report")
        log("\n" + format_table(table, summary["injected_trigger_l1"]))
        log(format_targets(targets))
        log(f"report: {made['report']} (figures: {', '.join(p.name for k, p in made.items() if k != 'report')})")
        return summary

    def description(self) -> str:
        p = self.preset
        return (f"Demo run (preset `{self.cfg.preset}`) on the embedded datasets: a `{p.model}` SimCLR encoder "
                f"pre-trained on `{PRETRAIN_SET}`, backdoored with BadEncoder (white 10x10 square, target class "
                f"{self.cfg.target} = {synthetic.CLASS_NAMES[self.cfg.target]} of `{DOWNSTREAM_SET}`), then cleaned "
                f"by RECEIVE (iterative inversion + early stop + unlearning) and, as the baseline, by one-round NC "
                f"inversion + the same unlearning. ACC/ASR come from training_downstream_classifier.py on "
                f"`{DOWNSTREAM_SET}`; ASR leaves the target-class test images out.")


def flag_value(words: list[str], name: str) -> str:
    """The value that follows ``name`` in a command line's words ("" when the flag is absent)."""
    return words[words.index(name) + 1] if name in words[:-1] else ""


def receive_commands(run: str | Path) -> dict[str, list[str]]:
    """RECEIVE's stage commands as a demo run recorded them in ``summary.json``, each [script, *argv]:
    "main" (MAIN.py --phase moth), "unlearn" (Unlearn-trigger.py on its mask-pattern-best.npz) and "downstream"
    (the classifier of the encoder that this unlearning wrote)."""
    try:
        lines = json.loads((Path(run) / "summary.json").read_text())["commands"]
        commands = [shlex.split(line)[1:] for line in lines]  # drop "python"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"--run {run}: no demo summary.json with its commands ({exc}); run demo.py first")
    found = {}
    for words in commands:
        if words[0] == "MAIN.py" and flag_value(words, "--phase") == "moth":
            found["main"] = words
        # both unlearnings run --phase moth (the only phase Unlearn-trigger.py has); RECEIVE's is the one
        # that unlearns MAIN.py --phase moth's trigger, the baseline's unlearns mask-pattern-NC.npz
        trigger = Path(flag_value(words, "--re_mask_pattern")).name
        if words[0] == "Unlearn-trigger.py" and trigger == BEST_TRIGGER:
            found["unlearn"] = words
    if "unlearn" in found:
        unlearn = found["unlearn"]
        encoder = str(Path(flag_value(unlearn, "--results_dir")) / UNLEARNED.format(flag_value(unlearn, "--epochs")))
        found.update({"downstream": w for w in commands
                      if w[0] == "training_downstream_classifier.py" and flag_value(w, "--encoder") == encoder})
    if len(found) != 3:
        fail(f"--run {run}: summary.json lacks RECEIVE's commands (found {', '.join(sorted(found)) or 'none'})")
    return found


def injected_l1(trigger_path: Path) -> float:
    """Mask L1 of the ground-truth trigger (100 for the 10x10 square)."""
    return float(load_trigger(trigger_path, "--trigger_file").mask[0].sum())


def results_table(results: dict, moth: dict, nc: dict) -> list[dict]:
    """Rows: encoder, ACC, ASR, chosen round and trigger L1 (for the cleaned encoders), read from the runs."""
    extra = {"RECEIVE": {"round": moth.get("best_round"), "trigger_l1": moth.get("best_l1")},
             "NC baseline": {"round": None, "trigger_l1": nc.get("l1")}}
    return [{"encoder": name, "acc": r["acc"], "asr": r["asr"], "round": extra.get(name, {}).get("round"),
             "trigger_l1": extra.get(name, {}).get("trigger_l1")} for name, r in results.items()]


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
    ]


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_table(table: list[dict], gt_l1: float) -> str:
    head = f"{'encoder':<14}{'ACC (%)':>9}{'ASR (%)':>9}{'chosen round':>14}{'trigger L1':>12}"
    lines = [head, "-" * len(head)]
    for r in table:
        lines.append(f"{r['encoder']:<14}{_cell(r['acc'], 2):>9}{_cell(r['asr'], 2):>9}"
                     f"{_cell(r['round'], 0):>14}{_cell(r['trigger_l1'], 1):>12}")
    lines.append(f"(injected trigger: L1 {gt_l1:.0f}; ASR leaves the target class out)")
    return "\n".join(lines)


def format_targets(targets: list[dict]) -> str:
    return "\n".join(f"[{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']}" for t in targets)


def default_out() -> Path:
    return Path("demo_runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_demo(cfg: DemoConfig) -> dict:
    """demo.py: every stage in one run folder; returns summary.json's content."""
    root = Path(cfg.out) if cfg.out else default_out()
    if root.is_dir() and any(root.iterdir()) and not cfg.overwrite:
        fail(f"--out {root}: not empty (an earlier demo run?); choose another --out or pass --overwrite")
    layout = RunLayout(ensure_writable_dir(root, "--out"))
    log(f"demo run folder: {layout.root} (preset {cfg.preset})")
    began = time.perf_counter()
    summary = DemoRun(cfg, PRESETS[cfg.preset], layout).run()
    total = time.perf_counter() - began
    lines = [f"  {s['stage']:<60}{s['seconds']:>8.1f} s" for s in summary["stage_times"]]
    log("stage times:\n" + "\n".join(lines) + f"\n  {'total':<60}{total:>8.1f} s")
    return summary
