#!/usr/bin/env python
"""Stage 3: train a downstream classifier on a frozen encoder and print ACC and ASR (BadEncoder style)."""
from __future__ import annotations

from Trainer.configs import (ASR_IMAGES, MODES, DownstreamConfig, add_amp_flag, add_asr_flag, add_runtime_flags,
                             config_from_args)
from UTILS.errors import ArgumentParser, cli_entry, interrupts_deferred


def build_parser() -> ArgumentParser:
    """training_downstream_classifier.py's flags, each defaulting to its DownstreamConfig field."""
    d = DownstreamConfig()  # each flag's default is its config field's
    p = ArgumentParser(description=__doc__)
    add_runtime_flags(p, gpu="0", seed=100)
    p.add_argument("--dataset", default=d.dataset, help="downstream task")
    p.add_argument("--reference_label", type=int, default=d.reference_label, help="attack target class")
    p.add_argument("--trigger_file", default=d.trigger_file, help="trigger for ASR (BadEncoder npz or mask-pattern npz)")
    p.add_argument("--encoder_usage_info", default=d.encoder_usage_info,
                   help="normalisation statistics and input size of the encoder (its pre-training data)")
    p.add_argument("--encoder", default=d.encoder,
                   help="encoder checkpoint; empty = randomly initialised. As in the original, 'clean' anywhere "
                        "in this path (case-sensitive) names the metrics CA/ASR-B instead of BA/ASR")
    p.add_argument("--model", default=d.model)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--nn_epochs", type=int, default=d.nn_epochs)
    p.add_argument("--hidden_size_1", type=int, default=d.hidden_size_1)
    p.add_argument("--hidden_size_2", type=int, default=d.hidden_size_2)
    p.add_argument("--results_dir", default=d.results_dir, help="where clf_<nn_epochs>.pth and the metrics go")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--source_label", type=int, default=d.source_label,
                   help="victim class; not -1: the ASR line reports the share of this class's clean test images "
                        "(no trigger) classified as this class, as the original's victim loader does")
    p.add_argument("--mode", default=d.mode, choices=MODES,
                   help="non-targeted: a stamped image is a hit when classified as --reference_label; targeted: "
                        "when it keeps its own label (the original's BadSTL_targeted, there for stl10 only)")
    p.add_argument("--asr_images", default=d.asr_images, choices=ASR_IMAGES,
                   help="images stamped for ASR: test = the test split (BadEncoder's); train_half = the first "
                        "half of the train split, every class, as the original measured it")
    add_asr_flag(p, "with --asr_images test (train_half and --mode targeted always count every image): ")
    add_amp_flag(p)
    return p


@cli_entry(memory="--hidden_size_1, --hidden_size_2 or --batch_size")
def main(argv: list[str] | None = None) -> dict:
    """``training_downstream_classifier.py``: parse ``argv`` and train the MLP on the encoder's features; returns
    ACC/ASR."""
    cfg = config_from_args(DownstreamConfig, build_parser().parse_args(argv)).validate()
    # torch and the project's heavy modules are imported once the command line is known to be good
    # (--help and a bad flag answer at once), with Ctrl-C held until the import is whole
    with interrupts_deferred():
        from Trainer.downstream import run_downstream

    return run_downstream(cfg)


if __name__ == "__main__":
    main()
