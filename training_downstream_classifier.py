#!/usr/bin/env python
"""Stage 3: train a downstream classifier on a frozen encoder and print ACC and ASR (BadEncoder style)."""
from __future__ import annotations

from Trainer.configs import DownstreamConfig, add_amp_flag, add_runtime_flags, config_from_args
from Trainer.downstream import run_downstream
from UTILS.errors import ArgumentParser, cli_entry

D = DownstreamConfig()


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_runtime_flags(p, gpu="0", seed=100)
    p.add_argument("--dataset", default=D.dataset, help="downstream task")
    p.add_argument("--reference_label", type=int, default=D.reference_label, help="attack target class")
    p.add_argument("--trigger_file", default=D.trigger_file, help="trigger for ASR (BadEncoder npz or mask-pattern npz)")
    p.add_argument("--encoder_usage_info", default=D.encoder_usage_info)
    p.add_argument("--encoder", default=D.encoder, help="encoder checkpoint; empty = randomly initialised")
    p.add_argument("--model", default=D.model)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--nn_epochs", type=int, default=D.nn_epochs)
    p.add_argument("--hidden_size_1", type=int, default=D.hidden_size_1)
    p.add_argument("--hidden_size_2", type=int, default=D.hidden_size_2)
    p.add_argument("--results_dir", default=D.results_dir)
    p.add_argument("--batch_size", type=int, default=D.batch_size)
    p.add_argument("--source_label", type=int, default=D.source_label, help="accepted, unused")
    p.add_argument("--mode", default=D.mode, help="accepted, unused")
    p.add_argument("--asr_include_target", action="store_true",
                   help="count target-class images in ASR, as BadEncoder's published figures do")
    add_amp_flag(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(DownstreamConfig, build_parser().parse_args(argv)).validate()
    return run_downstream(cfg)


if __name__ == "__main__":
    main()
