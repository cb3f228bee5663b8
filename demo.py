#!/usr/bin/env python
"""From nothing to a cleaned encoder in one command, on the embedded dataset.

Runs, each through its real command line and all under one run folder (--out, default
demo_runs/<timestamp>): SimCLR pre-training -> BadEncoder injection -> downstream ACC/ASR of the
clean and backdoored encoders -> MAIN.py --phase moth -> Unlearn-trigger.py -> downstream ACC/ASR of
the cleaned encoder, and the same with --phase nc as the baseline. Prints the table (encoder x ACC x
ASR, chosen round, trigger L1), whether each target was met, the time of every stage, and writes
<out>/summary.json and the report folder <out>/report (report.md + PNG figures).

    python demo.py                       # the default preset (about 10-15 minutes on 2 CPU cores)
    python demo.py --preset ci --out /tmp/demo-ci   # tiny settings: checks the plumbing in seconds
"""
from __future__ import annotations

import argparse

from Trainer.configs import DEMO_RESUME_HINT, PRESET_NAMES, DemoConfig, config_from_args
from UTILS.errors import ArgumentParser, cli_entry, interrupts_deferred


def build_parser() -> ArgumentParser:
    """demo.py's flags, each defaulting to its :class:`Trainer.configs.DemoConfig` field."""
    d = DemoConfig()  # each flag's default is its config field's
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=d.out, help="run folder (default: demo_runs/<timestamp>)")
    p.add_argument("--preset", default=d.preset, help=f"one of {', '.join(PRESET_NAMES)} (ci: tiny settings for tests)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--gpu", default=d.gpu, help="CUDA device index used by --device auto")
    p.add_argument("--data_dir", default=d.data_dir, help="where the embedded datasets are generated (once)")
    p.add_argument("--target", type=int, default=d.target, help="target class of the backdoor (0..9 of synthetic_down)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="0..4: seeds every stage (pre-training and injection 100+seed, MAIN.py --seed seed, "
                        "Unlearn-trigger.py --seed seed mod 3, classifier 100+seed); 0 is the README's run")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out, replacing each stage's outputs")
    return p


@cli_entry(memory="the --preset's sizes", resume_hint=DEMO_RESUME_HINT)
def main(argv: list[str] | None = None) -> dict:
    """``demo.py``: parse ``argv`` into a validated DemoConfig and run every stage; returns summary.json's content."""
    cfg = config_from_args(DemoConfig, build_parser().parse_args(argv)).validate()
    # torch and the stages are imported once the command line is known to be good, whole (Ctrl-C held)
    with interrupts_deferred():
        from DEMO.demo import run_demo

    return run_demo(cfg)


if __name__ == "__main__":
    main()
