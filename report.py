#!/usr/bin/env python
"""Redraw a run's report (PNG figures + report.md) from its metrics files; works for any run, real data too.

    python report.py --run demo_runs/<name>                       # a demo run: every path found by itself
    python report.py --moth_log <MAIN.py log_dir> --unlearn_log <Unlearn-trigger.py log_dir> --out <dir>

Figures: triggers.png (injected vs inverted triggers), trigger_growth.png (trigger L1 and Wasserstein
distance per round, the early stop's choice marked), unlearning.png (kNN ACC/ASR per unlearning
epoch) and, with the demo's summary.json, results.png (ACC/ASR per encoder).
"""
from __future__ import annotations

import argparse

from Trainer.configs import ReportConfig, config_from_args
from UTILS.errors import ArgumentParser, cli_entry, interrupts_deferred


def build_parser() -> ArgumentParser:
    """report.py's flags: a demo --run folder, or the stage folders one by one."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="", help="a demo run folder (fills every path below that is not given)")
    p.add_argument("--moth_log", default="", help="MAIN.py --phase moth --log_dir (metrics.csv, mask-pattern-*.npz)")
    p.add_argument("--unlearn_log", default="", help="Unlearn-trigger.py --log_dir of the RECEIVE trigger")
    p.add_argument("--nc_log", default="", help="MAIN.py --phase nc --log_dir (mask-pattern-NC.npz)")
    p.add_argument("--nc_unlearn_log", default="", help="Unlearn-trigger.py --log_dir of the NC trigger")
    p.add_argument("--trigger_file", default="", help="the injected trigger (ground truth), if known")
    p.add_argument("--table", default="", help="the demo's summary.json (results table, targets, stage times)")
    p.add_argument("--out", default="", help="output folder (default: <run>/report)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    """``report.py``: check every input named by the flags, then draw the figures and report.md; returns the files
    made."""
    cfg = config_from_args(ReportConfig, build_parser().parse_args(argv)).validate()
    # matplotlib and torch are imported once the command line is known to be good, whole (Ctrl-C held)
    with interrupts_deferred():
        from DEMO.report import run_report
        from DEMO.report_inputs import check_report_inputs

    check_report_inputs(cfg)  # every file it reads, named by the flag the user passed
    return run_report(cfg)


if __name__ == "__main__":
    main()
