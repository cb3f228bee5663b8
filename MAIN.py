#!/usr/bin/env python
"""Stage 1 of RECEIVE: invert the backdoor trigger of a suspect SimCLR encoder.

--phase moth: iterative inversion + hardening + Wasserstein early stop -> <log_dir>/mask-pattern-best.npz
--phase nc:   one-round baseline                                       -> <log_dir>/mask-pattern-NC.npz
"""
from __future__ import annotations

import argparse

from Trainer.configs import MainConfig, add_amp_flag, add_asr_flag, add_runtime_flags, config_from_args
from UTILS.errors import ArgumentParser, cli_entry, interrupts_deferred

D = MainConfig()


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(p, gpu="2", seed=0)
    p.add_argument("--phase", default=D.phase, help="moth (iterative, ours) or nc (one round, baseline)")
    p.add_argument("--dataset", default=D.dataset, help="data used for inversion and hardening")
    p.add_argument("--model", default=D.model)
    p.add_argument("--batch_size", type=int, default=D.batch_size, help="images per round (hardening batch)")
    p.add_argument("--epochs", type=int, default=D.epochs)
    p.add_argument("--log_dir", default=D.log_dir)
    p.add_argument("--results_dir", default=D.results_dir)
    p.add_argument("--knn-t", dest="knn_t", type=float, default=D.knn_t)
    p.add_argument("--knn-k", dest="knn_k", type=int, default=D.knn_k)
    p.add_argument("--pretrained_encoder", default=D.pretrained_encoder)
    p.add_argument("--harden_lr", type=float, default=D.harden_lr)
    p.add_argument("--re_lr", type=float, default=D.re_lr, help="inversion lr after the first round (0.5)")
    p.add_argument("--data_ratio", type=float, default=D.data_ratio)
    p.add_argument("--encoder_usage_info", default=D.encoder_usage_info, help="normalisation statistics")
    p.add_argument("--attack_threshold", type=float, default=D.attack_threshold, help="accepted, unused")
    p.add_argument("--similarity_threshold", type=float, default=D.similarity_threshold)
    p.add_argument("--init_cost", type=float, default=D.init_cost)
    p.add_argument("--pair", default=D.pair, help="accepted, unused")
    p.add_argument("--attack_size", type=int, default=D.attack_size,
                   help="images drawn (with replacement) for each round; inverted in chunks of 32")
    p.add_argument("--re_steps", type=int, default=D.re_steps)
    p.add_argument("--re_steps_cap", type=int, default=D.re_steps_cap,
                   help="hard cap on steps of a round when no trigger reaches the threshold (0: 3 x re_steps)")
    p.add_argument("--downstreamTask", default=D.downstreamTask, help="dataset of the kNN monitor")
    p.add_argument("--epsilon", type=float, default=D.epsilon)
    p.add_argument("--patience", type=int, default=D.patience)
    p.add_argument("--reference_label", type=int, default=D.reference_label, help="target class (monitor only)")
    p.add_argument("--trigger_file", default=D.trigger_file, help="ground-truth trigger, monitoring only")
    p.add_argument("--reference_file", default=D.reference_file, help="accepted, unused (as in the original)")
    p.add_argument("--source_label", type=int, default=D.source_label, help="accepted, unused (as in the original)")
    p.add_argument("--psim", default=D.psim, choices=("original", "pairs"),
                   help="the pairwise similarity --similarity_threshold is compared with: original = the paper's "
                        "code's (B-1)/B^3 * sum of all B^2 cosines of a 32-image chunk (what its thresholds were "
                        "tuned on); pairs = the mean cosine over pairs i != j")
    p.add_argument("--monitor_every", type=int, default=D.monitor_every, help="kNN monitor after every N-th batch of an epoch, and once before the first round (0: off)")
    add_asr_flag(p)
    add_amp_flag(p)
    return p


@cli_entry(memory="--attack_size, --batch_size or --data_ratio")
def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(MainConfig, build_parser().parse_args(argv)).validate()
    # torch and the project's heavy modules are imported once the command line is known to be good
    # (--help and a bad flag answer at once), with Ctrl-C held until the import is whole
    with interrupts_deferred():
        from Trainer.main_flow import run_main

    return run_main(cfg)


if __name__ == "__main__":
    main()
