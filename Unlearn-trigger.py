#!/usr/bin/env python
"""Stage 2 of RECEIVE: unlearn the inverted trigger from the encoder.

Writes <results_dir>/Harden_Unlearn_model_<epoch>.pth every epoch and <log_dir>/loss-log.npy
(the mean batch loss of each epoch); <log_dir>/unlearn-metrics.{csv,json} hold the losses, the kNN
monitor and, in the epoch-0 row, the initial similarities (init sim, test sim).
"""
from __future__ import annotations

import argparse

from Trainer.configs import UnlearnConfig, add_amp_flag, add_asr_flag, add_runtime_flags, config_from_args
from UTILS.errors import ArgumentParser, cli_entry, interrupts_deferred


def build_parser() -> ArgumentParser:
    """Unlearn-trigger.py's flags, each defaulting to its :class:`Trainer.configs.UnlearnConfig` field."""
    d = UnlearnConfig()  # each flag's default is its config field's
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(p, gpu=d.gpu, seed=0, seed_help=(
        "index 0..2 into the original's seed list; with --data_ratio < 1 the original reseeds torch with 100 "
        "after loading, so its draws ignore --seed: --seed 0 does the same, other seeds seed 100 + N x 1,000,000"))
    p.add_argument("--results_dir", default=d.results_dir, help="where the checkpoints go ('': the current directory)")
    p.add_argument("--phase", default=d.phase, help="only moth is supported, as in the original")
    p.add_argument("--dataset", default=d.dataset, help="data used for unlearning")
    p.add_argument("--downstreamTask", default=d.downstreamTask, help="dataset of the kNN monitor")
    p.add_argument("--model", default=d.model)
    p.add_argument("--pretrained_encoder", default=d.pretrained_encoder)
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--beta", type=float, default=d.beta, help="weight of the unlearning term")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--data_ratio", type=float, default=d.data_ratio)
    p.add_argument("--encoder_usage_info", default=d.encoder_usage_info)
    p.add_argument("--log_dir", default=d.log_dir)
    p.add_argument("--reference_label", type=int, default=d.reference_label, help="target class (monitor only)")
    p.add_argument("--trigger_file", default=d.trigger_file, help="ground-truth trigger, monitoring only")
    p.add_argument("--re_mask_pattern", default=d.re_mask_pattern, help="inverted trigger npz (mask, pattern)")
    p.add_argument("--knn-t", dest="knn_t", type=float, default=d.knn_t, help="kNN and NT-Xent temperature")
    p.add_argument("--knn-k", dest="knn_k", type=int, default=d.knn_k)
    p.add_argument("--portion", type=float, default=d.portion, help="share of each batch that is stamped")
    p.add_argument("--input_type", default=d.input_type, help="only poisoned_encoder is supported, as in the original")
    p.add_argument("--init_sim_bn_update", default=d.init_sim_bn_update,
                   help="the initial-similarity pass before training runs the encoder in train mode over the whole "
                        "unlearning set, which moves BatchNorm's running statistics as the original's does (on); "
                        "off restores them afterwards (the same similarities are reported); on or off")
    p.add_argument("--monitor_every", type=int, default=d.monitor_every, help="kNN monitor every N epochs (0: off)")
    add_asr_flag(p)
    add_amp_flag(p)
    return p


@cli_entry(memory="--batch_size or --data_ratio")
def main(argv: list[str] | None = None) -> dict:
    """``Unlearn-trigger.py``: parse ``argv`` into a validated UnlearnConfig and unlearn; returns the run's summary."""
    cfg = config_from_args(UnlearnConfig, build_parser().parse_args(argv)).validate()
    # torch and the project's heavy modules are imported once the command line is known to be good
    # (--help and a bad flag answer at once), with Ctrl-C held until the import is whole
    with interrupts_deferred():
        from Trainer.unlearn import run_unlearn

    return run_unlearn(cfg)


if __name__ == "__main__":
    main()
