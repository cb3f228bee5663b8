"""``report.py``'s inputs checked before any figure is drawn: a truncated or foreign metrics file is one
``error:`` line that names the flag the user actually passed (``--run`` when the path came from the
demo's folder layout), never a traceback.

The report reads these files (DEMO/report.py): the demo's summary.json (--table), metrics.json,
metrics.csv and mask-pattern-*.npz of MAIN.py --phase moth (--moth_log), metrics-NC.json and
mask-pattern-NC.npz of --phase nc (--nc_log), unlearn-metrics.csv (--unlearn_log, --nc_unlearn_log)
and the ground-truth trigger (--trigger_file). A missing file only drops its figure; a file that is
there must be readable.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from DEMO.layout import RunLayout
from Trainer.configs import ReportConfig
from Trainer.filenames import BEST_TRIGGER, NC_METRICS, NC_TRIGGER, ROUND_TRIGGER, name_matches
from UTILS.errors import fail

FOLDERS = {"moth_log": "--moth_log", "unlearn_log": "--unlearn_log", "nc_log": "--nc_log",
           "nc_unlearn_log": "--nc_unlearn_log"}
JSON_FILES = {"moth_log": ("metrics.json",), "nc_log": (NC_METRICS,)}
CSV_FILES = {"moth_log": ("metrics.csv",), "unlearn_log": ("unlearn-metrics.csv",),
             "nc_unlearn_log": ("unlearn-metrics.csv",)}
TRIGGER_FILES = {"moth_log": (ROUND_TRIGGER, BEST_TRIGGER), "nc_log": (NC_TRIGGER,)}  # exact names (name_matches)
SUMMARY_LISTS = ("table", "targets", "stage_times")
TARGET_KEYS = ("target", "met", "measured")  # what the report prints of each target  # lists of objects the report walks through


class Source:
    """Where a path came from: a flag the user passed, or the --run folder's layout."""

    def __init__(self, cfg: ReportConfig, layout) -> None:
        self.cfg, self.layout = cfg, layout

    def path(self, attr: str, layout_attr: Optional[str] = None) -> tuple[str, str]:
        """(path, how to name it in a message); ("", "") when neither the flag nor --run gives one."""
        value = getattr(self.cfg, attr)
        flag = "--" + attr
        if value:
            return value, f"{flag} {value}"
        if self.layout is None:
            return "", ""
        found = getattr(self.layout, layout_attr or attr)
        return str(found), f"--run {self.cfg.run} (its {Path(found).relative_to(self.layout.root)})"


def check_report_inputs(cfg: ReportConfig) -> None:
    """Fail with one line on the first input the report could not read."""
    layout = None
    if cfg.run:
        if not Path(cfg.run).is_dir():
            fail(f"--run {cfg.run}: not a folder")
        layout = RunLayout(Path(cfg.run))
    source = Source(cfg, layout)
    _check_summary(*source.path("table", "summary"), from_run=not cfg.table and layout is not None)
    for attr in FOLDERS:
        folder, named = source.path(attr)
        if folder:
            _check_folder(Path(folder), named, attr)
    trigger, named = source.path("trigger_file", "trigger")
    if trigger and Path(trigger).is_file():
        _check_trigger(Path(trigger), named)


def _check_summary(path: str, named: str, from_run: bool) -> None:
    if not path:
        return
    if not Path(path).is_file():
        fail(f"{named}: file not found (the demo's summary.json, written when a demo run finishes)" if not from_run
             else f"{named}: file not found (a demo run writes it when it finishes; is this a demo run folder?)")
    summary = _read_json(Path(path), named)
    for key in SUMMARY_LISTS:
        value = summary.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            fail(f"{named}: '{key}' must be a list of objects, found {type(value).__name__}")
    for i, target in enumerate(summary.get("targets", [])):
        missing = [k for k in TARGET_KEYS if k not in target]
        if missing:
            fail(f"{named}: 'targets' entry {i} lacks {', '.join(repr(k) for k in missing)} (each target has "
                 f"{', '.join(TARGET_KEYS)})")


def _check_folder(folder: Path, named: str, attr: str) -> None:
    if not folder.is_dir():
        fail(f"{named}: not a folder")
    for name in JSON_FILES.get(attr, ()):
        if (folder / name).is_file():
            value = _read_json(folder / name, f"{named}: {name}")
            if attr == "moth_log":
                _check_best_round(value, f"{named}: {name}")
    for name in CSV_FILES.get(attr, ()):
        if (folder / name).is_file():
            _read_csv(folder / name, f"{named}: {name}")
    if attr in TRIGGER_FILES:
        for path in sorted(p for p in folder.iterdir() if any(name_matches(p.name, t) for t in TRIGGER_FILES[attr])):
            _check_trigger(path, f"{named}: {path.name}")


def _check_best_round(summary: dict, named: str) -> None:
    """metrics.json's best_round: null or a round the run had (0 .. rounds - 1)."""
    best, rounds = summary.get("best_round"), summary.get("rounds")
    if best is None:
        return
    if isinstance(best, bool) or not isinstance(best, int):
        fail(f"{named}: 'best_round' must be a round number or null, found {best!r}")
    if isinstance(rounds, int) and not isinstance(rounds, bool) and not 0 <= best < rounds:
        fail(f"{named}: 'best_round' {best} is not a round of this run (it had rounds 0..{rounds - 1})")
    if best < 0:
        fail(f"{named}: 'best_round' must be a round number (0 or more), found {best}")


def _read_json(path: Path, named: str) -> dict:
    """A JSON object, or one line: truncated, not UTF-8, or another JSON value."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(f"{named}: not readable JSON ({exc.__class__.__name__}: {exc}); truncated or not written by this "
             f"program?")
    if not isinstance(value, dict):
        fail(f"{named}: expected a JSON object, found {type(value).__name__}")
    return value


def _read_csv(path: Path, named: str) -> None:
    try:
        with open(path, newline="") as handle:
            for _ in csv.DictReader(handle):
                pass
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        fail(f"{named}: not a readable CSV ({exc.__class__.__name__}: {exc})")


def _check_trigger(path: Path, named: str) -> None:
    """The trigger loader's own checks, reported under the flag that named the file."""
    from DATASETS.triggers import load_trigger
    from UTILS.errors import UserError

    try:
        load_trigger(path, "--trigger_file")
    except UserError as exc:
        prefix = f"--trigger_file {path}: "
        fail(f"{named}: {str(exc)[len(prefix):] if str(exc).startswith(prefix) else exc}")
