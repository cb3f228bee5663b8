"""Where every stage of a demo run writes, and what a finished run recorded: read by the demo that makes a
run folder, by ``report.py --run`` and by the tools that re-run a demo's stages (bench/, docs/)."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from Trainer.filenames import BEST_TRIGGER, DEFAULT_TRIGGER, UNLEARNED_CKPT
from UTILS.errors import fail

# <run>/eval/<folder> of each encoder the demo evaluates
REPORT_FILE = "report.md"  # the report's text, in <run>/report
EVAL_DIRS = {"clean": "clean", "backdoored": "backdoored", "RECEIVE": "receive", "NC baseline": "nc",
             "hardened": "hardened"}  # hardened: the encoder MAIN.py --phase moth hardened, as it is


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (``root``); every attribute is a Path under it."""

    root: Path

    @property
    def trigger(self) -> Path:
        """The ground-truth trigger, where the original looked for it."""
        return self.root / DEFAULT_TRIGGER

    @property
    def clean(self) -> Path:
        """pretraining_encoder.py --results_dir."""
        return self.root / "clean"

    @property
    def backdoor(self) -> Path:
        """badencoder.py --results_dir."""
        return self.root / "backdoor"

    @property
    def moth_log(self) -> Path:
        """MAIN.py --phase moth --log_dir."""
        return self.root / "receive" / "log"

    @property
    def moth_ckpt(self) -> Path:
        """MAIN.py --phase moth --results_dir (the hardened encoder)."""
        return self.root / "receive" / "hardened"

    @property
    def unlearn_log(self) -> Path:
        """Unlearn-trigger.py --log_dir of RECEIVE's trigger."""
        return self.root / "receive" / "unlearn-log"

    @property
    def unlearn_ckpt(self) -> Path:
        """Unlearn-trigger.py --results_dir of RECEIVE's trigger."""
        return self.root / "receive" / "unlearned"

    @property
    def nc_log(self) -> Path:
        """MAIN.py --phase nc --log_dir."""
        return self.root / "nc" / "log"

    @property
    def nc_ckpt(self) -> Path:
        """MAIN.py --phase nc --results_dir."""
        return self.root / "nc" / "ckpt"

    @property
    def nc_unlearn_log(self) -> Path:
        """Unlearn-trigger.py --log_dir of the NC baseline's trigger."""
        return self.root / "nc" / "unlearn-log"

    @property
    def nc_unlearn_ckpt(self) -> Path:
        """Unlearn-trigger.py --results_dir of the NC baseline's trigger."""
        return self.root / "nc" / "unlearned"

    @property
    def report(self) -> Path:
        """The report folder (report.md and its figures)."""
        return self.root / "report"

    @property
    def report_file(self) -> Path:
        """The report's text (DEMO/report.py writes it; named here so that the demo can clear it without
        importing the report, and with it matplotlib)."""
        return self.report / REPORT_FILE

    @property
    def summary(self) -> Path:
        """summary.json: the table, the targets, the stage times and every stage's command line."""
        return self.root / "summary.json"

    @property
    def times(self) -> Path:
        """stage-times.csv: seconds per stage, written as the run goes."""
        return self.root / "stage-times.csv"

    def detect_dir(self, encoder: str) -> Path:
        """MAIN.py --phase detect --log_dir of the clean or the backdoored encoder (a folder of EVAL_DIRS)."""
        return self.root / "detect" / EVAL_DIRS[encoder]

    def eval_dir(self, encoder: str) -> Path:
        """training_downstream_classifier.py --results_dir of one encoder (a folder of EVAL_DIRS)."""
        return self.root / "eval" / encoder


def flag_value(words: list[str], name: str) -> str:
    """The value that follows ``name`` in a command line's words ("" when the flag is absent)."""
    return words[words.index(name) + 1] if name in words[:-1] else ""


def receive_commands(run: str | Path) -> dict[str, list[str]]:
    """RECEIVE's stage commands as a demo run recorded them in ``summary.json``, each [script, *argv]:
    "main" (MAIN.py --phase moth), "unlearn" (Unlearn-trigger.py on its mask-pattern-best.npz) and "downstream"
    (the classifier of the encoder that this unlearning wrote)."""
    try:
        lines = json.loads(RunLayout(Path(run)).summary.read_text())["commands"]
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
        encoder = str(Path(flag_value(unlearn, "--results_dir"))
                      / UNLEARNED_CKPT.format(flag_value(unlearn, "--epochs")))
        found.update({"downstream": w for w in commands
                      if w[0] == "training_downstream_classifier.py" and flag_value(w, "--encoder") == encoder})
    if len(found) != 3:
        fail(f"--run {run}: summary.json lacks RECEIVE's commands (found {', '.join(sorted(found)) or 'none'})")
    return found
