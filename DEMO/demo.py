"""The whole story in one command (``demo.py``): from nothing to a cleaned encoder.

Stages, each run through the real entry script's ``main([...flags...])`` (so the demo also proves the
command lines), all writing under one run folder:

1. the embedded datasets (``synthetic`` / ``synthetic_down``) and the ground-truth trigger;
2. ``pretraining_encoder.py``: a clean SimCLR encoder;
3. ``badencoder.py``: the backdoored encoder;
4. ``training_downstream_classifier.py``: ACC/ASR of the clean and the backdoored encoder;
5. ``MAIN.py --phase moth`` -> ``Unlearn-trigger.py`` -> downstream ACC/ASR (RECEIVE);
6. ``MAIN.py --phase nc`` -> ``Unlearn-trigger.py`` -> downstream ACC/ASR (the one-round baseline);
7. the table, the targets, ``summary.json`` and the report folder (``DEMO/report.py``).
"""
from __future__ import annotations

import importlib.util
import shlex
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from DATASETS import synthetic
from DATASETS.triggers import save_ground_truth_trigger
from DEMO.layout import EVAL_DIRS, RunLayout
from DEMO.presets import PRESETS, Preset, flags
from DEMO.results import check_targets, format_table, format_targets, injected_l1, results_table
from Trainer.configs import DEMO_RESUME_HINT, DemoConfig
from Trainer.filenames import BEST_TRIGGER, NC_TRIGGER, UNLEARNED_CKPT
from UTILS.errors import EXIT_INTERRUPTED, Interrupted, fail
from UTILS.io import ensure_writable_dir, write_csv, write_json
from UTILS.runtime import log
from UTILS.seeds import demo_seeds

ROOT = Path(__file__).resolve().parents[1]
USAGE = "synthetic"  # normalisation statistics of the embedded pre-training set
PRETRAIN_SET, DOWNSTREAM_SET = "synthetic", "synthetic_down"


_SCRIPTS: dict[str, object] = {}


def embedded_sets(data_dir: str) -> None:
    """Generate the embedded datasets into ``data_dir`` unless already there."""
    for name in (PRETRAIN_SET, DOWNSTREAM_SET):
        synthetic.ensure_cached(name, data_dir)


@dataclass(frozen=True)
class DemoData:
    """What a demo run's stages read: the pre-training and downstream sets (names the loaders know, under
    --data_dir) and their normalisation. The default is the embedded data; bench/generalise.py passes others."""

    pretrain: str = PRETRAIN_SET
    downstream: str = DOWNSTREAM_SET
    usage: str = USAGE
    prepare: Callable[[str], object] = embedded_sets  # writes the sets under --data_dir if absent
    write_trigger: Callable[[Path], object] = save_ground_truth_trigger  # the injected trigger, BadEncoder's format


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
class StageLog:
    """What the stages of a demo run took and ran: their wall-clock times (``times_file``, a CSV rewritten
    after each stage) and the entry scripts' command lines, for summary.json and the report."""

    times_file: Path
    runtime_flags: list[str]  # appended to every script's flags: --device, --gpu, --data_dir [--overwrite]
    times: list[dict] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def stage(self, name: str, work: Callable[[], object]) -> object:
        """Run one stage, print its wall-clock time and record it."""
        n = len(self.times) + 1
        log(f"\n=== stage {n}: {name} ===")
        began = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - began
        self.times.append({"stage": name, "seconds": seconds})
        write_csv(self.times_file, self.times, ("stage", "seconds"))
        log(f"=== stage {n}: {name} done in {seconds:.1f} s ===")
        return result

    def script(self, name: str, script: str, argv: list[str]) -> dict:
        """A stage that is one entry script's ``main(argv)``; its command line goes into the report."""
        argv = argv + self.runtime_flags
        self.commands.append(f"python {script} {' '.join(shlex.quote(a) for a in argv)}")

        def work() -> dict:
            try:
                return load_script(script).main(argv)
            except SystemExit as exc:  # the script printed its one-line error already
                log(f"demo: stage '{name}' failed (exit code {exc.code}); its command line was:\n  "
                    f"{self.commands[-1]}")
                if exc.code == EXIT_INTERRUPTED:  # the stage's own line advises its --resume; the demo has none
                    raise Interrupted(f"demo.py stopped in stage '{name}'; {DEMO_RESUME_HINT}") from None
                raise

        return self.stage(name, work)


@dataclass
class DemoRun:
    """One demo run: the settings, the folder, and its stages (each one entry script's ``main``)."""

    cfg: DemoConfig
    preset: Preset
    layout: RunLayout
    data: DemoData = DemoData()
    backdoored: Optional[Path] = None  # the encoder the defences clean (default: this run's injected one)

    def __post_init__(self) -> None:
        if self.backdoored is None:
            self.backdoored = self.layout.backdoor / f"model_{self.preset.badencoder['epochs']}.pth"
        extra = ["--overwrite"] if self.cfg.overwrite else []
        self.seeds = demo_seeds(self.cfg.seed)  # each stage's --seed
        self.stages = StageLog(self.layout.times,
                               ["--device", self.cfg.device, "--gpu", self.cfg.gpu, "--data_dir", self.cfg.data_dir]
                               + extra)

    # ---- the stages -------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Stage 1: generate the embedded datasets into --data_dir (if absent) and write the trigger."""
        def work() -> None:
            self.data.prepare(self.cfg.data_dir)
            for name in (self.data.pretrain, self.data.downstream):
                log(f"{name}: {Path(self.cfg.data_dir) / name}")
            self.data.write_trigger(self.layout.trigger)
            log(f"ground-truth trigger: {self.layout.trigger}")

        self.stages.stage("datasets and trigger", work)

    def pretrain(self) -> Path:
        """Stage 2: ``pretraining_encoder.py`` on the embedded set; returns the clean encoder's checkpoint."""
        p, L = self.preset, self.layout
        self.stages.script("SimCLR pre-training (clean encoder)", "pretraining_encoder.py", [
            "--pretraining_dataset", self.data.pretrain, "--model", p.model, "--encoder_usage_info", self.data.usage,
            "--results_dir", str(L.clean), "--downstreamTask", self.data.downstream, "--knn-k", str(p.knn_k),
            "--seed", str(self.seeds["pretrain"]), *flags(p.pretrain)])
        return self.clean_encoder

    def inject(self, clean: Path) -> Path:
        """Stage 3: ``badencoder.py`` into ``clean``; returns the backdoored encoder's checkpoint."""
        p, L = self.preset, self.layout
        self.stages.script("BadEncoder injection (backdoored encoder)", "badencoder.py", [
            "--pretrained_encoder", str(clean), "--shadow_dataset", self.data.pretrain, "--model", p.model,
            "--encoder_usage_info", self.data.usage, "--trigger_file", str(L.trigger),
            "--reference_dataset", self.data.downstream,
            "--reference_label", str(self.cfg.target), "--results_dir", str(L.backdoor), "--knn-k", str(p.knn_k),
            "--seed", str(self.seeds["badencoder"]), *flags(p.badencoder)])
        return L.backdoor / f"model_{p.badencoder['epochs']}.pth"

    def evaluate(self, label: str, encoder: Path) -> dict:
        """``training_downstream_classifier.py`` on ``encoder`` into the ``label`` row's folder; its summary."""
        p = self.preset
        return self.stages.script(f"downstream classifier ({label})", "training_downstream_classifier.py", [
            "--dataset", self.data.downstream, "--trigger_file", str(self.layout.trigger), "--encoder", str(encoder),
            "--model", p.model, "--reference_label", str(self.cfg.target), "--encoder_usage_info", self.data.usage,
            "--results_dir", str(self.layout.eval_dir(EVAL_DIRS[label])), "--seed", str(self.seeds["classifier"]),
            *flags(p.downstream)])

    def detect(self, label: str, encoder: Path) -> dict:
        """MAIN.py --phase detect on the clean or the backdoored encoder: the check before any removal."""
        p, folder = self.preset, self.layout.detect_dir(label)
        return self.stages.script(f"detection ({label} encoder, MAIN.py --phase detect)", "MAIN.py", [
            "--seed", str(self.seeds["main"]), "--phase", "detect", "--dataset", self.data.pretrain, "--model", p.model,
            "--pretrained_encoder", str(encoder), "--encoder_usage_info", self.data.usage, "--log_dir", str(folder),
            "--results_dir", str(folder), "--trigger_file", str(self.layout.trigger), "--monitor_every", "0",
            *flags(p.detect)])

    def invert(self, phase: str) -> dict:
        """``MAIN.py --phase moth`` (RECEIVE) or ``--phase nc`` (the baseline) on the backdoored encoder;
        returns its metrics.json content."""
        p, L = self.preset, self.layout
        log_dir, results = (L.moth_log, L.moth_ckpt) if phase == "moth" else (L.nc_log, L.nc_ckpt)
        extra = flags(p.moth) if phase == "moth" else []
        what = "RECEIVE: iterative trigger inversion" if phase == "moth" else "NC baseline: one-round inversion"
        return self.stages.script(f"{what} (MAIN.py --phase {phase})", "MAIN.py", [
            "--seed", str(self.seeds["main"]), "--phase", phase, "--dataset", self.data.pretrain, "--model", p.model,
            "--pretrained_encoder", str(self.backdoored),
            "--encoder_usage_info", self.data.usage, "--log_dir", str(log_dir), "--results_dir", str(results),
            "--downstreamTask", self.data.downstream, "--reference_label", str(self.cfg.target),
            "--trigger_file", str(L.trigger), "--knn-k", str(p.knn_k), *flags(p.inversion), *extra])

    def unlearn(self, phase: str, trigger: Path) -> Path:
        """``Unlearn-trigger.py`` of the ``phase`` arm with its inverted ``trigger``; the unlearned encoder."""
        p, L = self.preset, self.layout
        log_dir, results = (L.unlearn_log, L.unlearn_ckpt) if phase == "moth" else (L.nc_unlearn_log, L.nc_unlearn_ckpt)
        who = "RECEIVE" if phase == "moth" else "NC baseline"
        self.stages.script(f"{who}: unlearning its trigger (Unlearn-trigger.py)", "Unlearn-trigger.py", [
            # --phase moth for both: the only phase Unlearn-trigger.py runs (the baseline differs by its trigger)
            "--seed", str(self.seeds["unlearn"]), "--results_dir", str(results), "--phase", "moth",
            "--dataset", self.data.pretrain,
            "--model", p.model, "--pretrained_encoder", str(self.backdoored),
            "--encoder_usage_info", self.data.usage, "--log_dir", str(log_dir), "--reference_label", str(self.cfg.target),
            "--downstreamTask", self.data.downstream, "--re_mask_pattern", str(trigger), "--trigger_file",
            str(L.trigger), "--knn-k", str(p.knn_k), *flags(p.unlearn)])
        return results / UNLEARNED_CKPT.format(p.unlearn["epochs"])

    # ---- the whole run ----------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Every stage in order, then the summary and report; returns summary.json's content."""
        return self.defend(self.encoders())

    @property
    def clean_encoder(self) -> Path:
        """The clean encoder's checkpoint that pre-training writes."""
        return self.layout.clean / f"model_{self.preset.pretrain['epochs']}.pth"

    def encoders(self, keep_finished: bool = False) -> dict:
        """Stages 1-4 and the detection: the data, the clean and the backdoored encoder, their ACC/ASR and
        verdicts (the rows ``clean`` and ``backdoored`` of the results). ``keep_finished``: an encoder already
        on disk is used instead of being made again (bench/generalise.py resumes an interrupted cell so)."""
        self.prepare()
        clean = self.clean_encoder if keep_finished and self.clean_encoder.is_file() else self.pretrain()
        backdoored = self.backdoored if keep_finished and self.backdoored.is_file() else self.inject(clean)
        results = {"clean": self.evaluate("clean", clean), "backdoored": self.evaluate("backdoored", backdoored)}
        for label, encoder in (("clean", clean), ("backdoored", backdoored)):
            results[label] = {**results[label], "detect": self.detect(label, encoder)}
        return results

    def defend(self, results: dict) -> dict:
        """Stages 5-7 on ``self.backdoored``: RECEIVE, the NC baseline, their ACC/ASR, the summary and report."""
        moth = self.invert("moth")
        receive = self.unlearn("moth", self.layout.moth_log / BEST_TRIGGER)
        results["RECEIVE"] = self.evaluate("RECEIVE", receive)
        nc = self.invert("nc")
        baseline = self.unlearn("nc", self.layout.nc_log / NC_TRIGGER)
        results["NC baseline"] = self.evaluate("NC baseline", baseline)
        return self.stages.stage("summary and report", lambda: self.finish(results, moth, nc))

    def finish(self, results: dict, moth: dict, nc: dict) -> dict:
        """The table, the targets, summary.json and the report folder; prints the table."""
        # matplotlib only here: the stages above run where it is not installed (bench/gpu_check.py on a GPU host)
        from DEMO.report import RunFiles, build_report

        table = results_table(results, moth, nc)
        targets = check_targets(table)
        summary = {"description": self.description(), "preset": self.cfg.preset, "target_label": self.cfg.target,
                   "table": table, "targets": targets, "stage_times": self.stages.times,
                   "commands": self.stages.commands,
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
        """The run in one paragraph: encoders, trigger, target class, defences and how ACC/ASR are measured."""
        p = self.preset
        return (f"Demo run (preset `{self.cfg.preset}`) on the embedded datasets: a `{p.model}` SimCLR encoder "
                f"pre-trained on `{self.data.pretrain}`, backdoored with BadEncoder (white 10x10 square, target class "
                f"{self.cfg.target} = {synthetic.CLASS_NAMES[self.cfg.target]} of `{self.data.downstream}`), both checked by "
                f"MAIN.py --phase detect, then cleaned "
                f"by RECEIVE (iterative inversion + early stop + unlearning) and, as the baseline, by one-round NC "
                f"inversion + the same unlearning. ACC/ASR come from training_downstream_classifier.py on "
                f"`{self.data.downstream}`; ASR leaves the target-class test images out.")


def default_out() -> Path:
    """``demo_runs/<date-time>``, created here and new: the run folder when --out is not given. Two demos
    started in the same second get ``<date-time>`` and ``<date-time>-2`` (mkdir decides, atomically)."""
    parent = ensure_writable_dir(Path("demo_runs"), "--out")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    fail(f"--out: demo_runs/{stamp}-* are all taken; pass --out")


def clear_earlier_summary(layout: RunLayout) -> None:
    """--overwrite: remove the files that present an earlier run's results as a whole (summary.json first,
    which report.py --run reads; stage-times.csv; report/report.md) before any stage runs, so an
    interrupted run never leaves them beside files that say otherwise. Each stage replaces its own files."""
    for path in (layout.summary, layout.times, layout.report_file):
        path.unlink(missing_ok=True)


def run_demo(cfg: DemoConfig) -> dict:
    """demo.py: every stage in one run folder; returns summary.json's content."""
    root = Path(cfg.out) if cfg.out else default_out()
    if root.is_dir() and any(root.iterdir()) and not cfg.overwrite:
        fail(f"--out {root}: not empty (an earlier demo run?); choose another --out or pass --overwrite")
    layout = RunLayout(ensure_writable_dir(root, "--out"))
    if cfg.overwrite:
        clear_earlier_summary(layout)
    log(f"demo run folder: {layout.root} (preset {cfg.preset})")
    began = time.perf_counter()
    summary = DemoRun(cfg, PRESETS[cfg.preset], layout).run()
    total = time.perf_counter() - began
    lines = [f"  {s['stage']:<60}{s['seconds']:>8.1f} s" for s in summary["stage_times"]]
    log("stage times:\n" + "\n".join(lines) + f"\n  {'total':<60}{total:>8.1f} s")
    return summary
