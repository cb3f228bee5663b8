#!/usr/bin/env python
"""SimCLR pre-training of a clean encoder (BadEncoder's pretraining_encoder.py).

Writes <results_dir>/model_<epoch>.pth (whole-model state dict), pretrain-metrics.csv|json (loss and
kNN accuracy per epoch) and setting.txt. Every epoch is checkpointed, so --resume continues from the
newest one; older epochs are kept only every --save_every epochs.
"""
from __future__ import annotations

import argparse

from Trainer.configs import PretrainConfig, add_runtime_flags, config_from_args
from UTILS.errors import ArgumentParser, cli_entry, interrupts_deferred


def build_parser() -> ArgumentParser:
    """pretraining_encoder.py's flags, each defaulting to its :class:`Trainer.configs.PretrainConfig` field."""
    d = PretrainConfig()  # each flag's default is its config field's
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(p, gpu="0", seed=d.seed)
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--weight_decay", type=float, default=d.weight_decay, help="Adam weight decay")
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="images per batch (two views each)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--pretraining_dataset", "--dataset", dest="pretraining_dataset", default=d.pretraining_dataset,
                   help="training split to pre-train on (any dataset the project loads)")
    p.add_argument("--results_dir", default=d.results_dir, help="receives model_<epoch>.pth and the metrics")
    p.add_argument("--model", default=d.model)
    p.add_argument("--encoder_usage_info", default=d.encoder_usage_info, help="normalisation statistics")
    p.add_argument("--data_ratio", type=float, default=d.data_ratio, help="share of the training split to use")
    p.add_argument("--knn-t", dest="knn_t", type=float, default=d.knn_t,
                   help="NT-Xent temperature and kNN monitor temperature (BadEncoder uses one value for both)")
    p.add_argument("--knn-k", dest="knn_k", type=int, default=d.knn_k)
    p.add_argument("--downstreamTask", default=d.downstreamTask,
                   help="dataset of the kNN monitor (default: the pre-training dataset)")
    p.add_argument("--monitor_every", type=int, default=d.monitor_every, help="kNN monitor every N epochs (0: off)")
    p.add_argument("--save_every", type=int, default=d.save_every,
                   help="keep model_<epoch>.pth every N epochs (0: only the last); the newest is always kept")
    return p


@cli_entry(memory="--batch_size or --data_ratio")
def main(argv: list[str] | None = None) -> dict:
    """``pretraining_encoder.py``: parse ``argv`` into a validated PretrainConfig and pre-train; returns the run's
    summary."""
    cfg = config_from_args(PretrainConfig, build_parser().parse_args(argv)).validate()
    # torch and the project's heavy modules are imported once the command line is known to be good
    # (--help and a bad flag answer at once), with Ctrl-C held until the import is whole
    with interrupts_deferred():
        from Trainer.pretrain import run_pretrain

    return run_pretrain(cfg)


if __name__ == "__main__":
    main()
