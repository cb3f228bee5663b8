#!/usr/bin/env python
"""BadEncoder: inject a backdoor into a clean SimCLR encoder (BadEncoder's badencoder.py).

Reference images of the target class come from --reference_file (npz with x: (n,32,32,3) uint8), or
are drawn from class --reference_label of --reference_dataset (the first --reference_count training
images). Writes <results_dir>/model_<epoch>.pth (whole-model state dict), badencoder-metrics.csv|json
(L0, L1, L2 and kNN ACC/ASR per epoch), reference.npz (the references used) and setting.txt.
"""
from __future__ import annotations

import argparse

from Trainer.configs import BadEncoderConfig, add_asr_flag, add_runtime_flags, config_from_args
from UTILS.errors import ArgumentParser, cli_entry, interrupts_deferred


def build_parser() -> ArgumentParser:
    """badencoder.py's flags, each defaulting to its :class:`Trainer.configs.BadEncoderConfig` field."""
    d = BadEncoderConfig()  # each flag's default is its config field's
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(p, gpu="0", seed=d.seed)
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--lambda1", type=float, default=d.lambda1, help="weight of L1 (the reference keeps its meaning)")
    p.add_argument("--lambda2", type=float, default=d.lambda2, help="weight of L2 (utility)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--reference_file", default=d.reference_file, help="npz with x: (n,32,32,3) uint8 reference images")
    p.add_argument("--trigger_file", default=d.trigger_file, help="the trigger to inject (BadEncoder's t/tm npz)")
    p.add_argument("--shadow_dataset", default=d.shadow_dataset, help="shadow data (training split)")
    p.add_argument("--pretrained_encoder", default=d.pretrained_encoder, help="the clean encoder")
    p.add_argument("--encoder_usage_info", default=d.encoder_usage_info, help="normalisation statistics")
    p.add_argument("--results_dir", default=d.results_dir, help="receives model_<epoch>.pth and the metrics")
    p.add_argument("--model", default=d.model)
    p.add_argument("--data_ratio", type=float, default=d.data_ratio, help="share of the shadow training split used")
    p.add_argument("--reference_label", type=int, default=d.reference_label,
                   help="target class: drawn from with --reference_dataset; the kNN monitor's ASR target")
    p.add_argument("--reference_dataset", default=d.reference_dataset,
                   help="draw the reference images from this dataset's class --reference_label")
    p.add_argument("--reference_count", type=int, default=d.reference_count,
                   help="how many reference images --reference_dataset gives")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight_decay", type=float, default=d.weight_decay)
    p.add_argument("--knn-t", dest="knn_t", type=float, default=d.knn_t)
    p.add_argument("--knn-k", dest="knn_k", type=int, default=d.knn_k)
    p.add_argument("--downstreamTask", default=d.downstreamTask,
                   help="dataset of the kNN monitor (default: --reference_dataset, else --shadow_dataset)")
    p.add_argument("--monitor_every", type=int, default=d.monitor_every, help="kNN monitor every N epochs (0: off)")
    p.add_argument("--save_every", type=int, default=d.save_every,
                   help="keep model_<epoch>.pth every N epochs (0: only the last); the newest is always kept")
    add_asr_flag(p, "kNN monitor: ")
    return p


@cli_entry(memory="--batch_size, --data_ratio or --reference_count")
def main(argv: list[str] | None = None) -> dict:
    """``badencoder.py``: parse ``argv`` into a validated BadEncoderConfig and inject; returns the run's summary."""
    cfg = config_from_args(BadEncoderConfig, build_parser().parse_args(argv)).validate()
    # torch and the project's heavy modules are imported once the command line is known to be good
    # (--help and a bad flag answer at once), with Ctrl-C held until the import is whole
    with interrupts_deferred():
        from Trainer.badencoder import run_badencoder

    return run_badencoder(cfg)


if __name__ == "__main__":
    main()
