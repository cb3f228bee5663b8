#!/usr/bin/env python
"""Stage 1 of RECEIVE: invert the backdoor trigger of a suspect SimCLR encoder.

--phase moth: iterative inversion + hardening + Wasserstein early stop -> <log_dir>/mask-pattern-best.npz
--phase nc:   one-round baseline                                       -> <log_dir>/mask-pattern-NC.npz
--phase detect: is the encoder backdoored at all? (DECREE-style verdict)  -> <log_dir>/detect.json, detect.png
"""
from __future__ import annotations

import argparse

from Trainer.configs import (CALIBRATED_CLEAN_PSIM_MAX, DETECT_PL1_BY_KIND, DETECT_PSIM_KINDS, DETECT_RATIO_BY_KIND,
                             LOWPASS_CHOICES, PSIM_CHOICES, MainConfig, add_amp_flag, add_asr_flag, add_runtime_flags,
                             config_from_args)
from UTILS.errors import ArgumentParser, cli_entry, interrupts_deferred


def build_parser() -> ArgumentParser:
    """MAIN.py's flags, each defaulting to its :class:`Trainer.configs.MainConfig` field."""
    d = MainConfig()  # each flag's default is its config field's
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_flags(p, gpu="2", seed=0)
    p.add_argument("--phase", default=d.phase,
                   help="moth (iterative, RECEIVE), nc (one round, baseline) or detect (verdict, no removal)")
    p.add_argument("--dataset", default=d.dataset, help="data used for inversion and hardening")
    p.add_argument("--model", default=d.model)
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="images per round (hardening batch)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--log_dir", default=d.log_dir)
    p.add_argument("--results_dir", default=d.results_dir)
    p.add_argument("--knn-t", dest="knn_t", type=float, default=d.knn_t)
    p.add_argument("--knn-k", dest="knn_k", type=int, default=d.knn_k)
    p.add_argument("--pretrained_encoder", default=d.pretrained_encoder)
    p.add_argument("--harden_lr", type=float, default=d.harden_lr)
    p.add_argument("--re_lr", type=float, default=d.re_lr, help="inversion lr after the first round (0.5)")
    p.add_argument("--data_ratio", type=float, default=d.data_ratio)
    p.add_argument("--encoder_usage_info", default=d.encoder_usage_info, help="normalisation statistics")
    p.add_argument("--attack_threshold", type=float, default=d.attack_threshold, help="accepted, unused")
    p.add_argument("--similarity_threshold", default=d.similarity_threshold,
                   help="psim a trigger must reach (0.9, the paper's), or 'auto': a threshold set per round 80%% of the "
                        "way from the clean images' own psim to the largest one possible. Choose auto, best with --psim "
                        "centred, for an encoder whose clean images are already similar (a warning says so, with the "
                        "value auto would use); on encoders whose clean psim is far below 0.9 it gives what 0.9 gives")
    p.add_argument("--init_cost", type=float, default=d.init_cost)
    p.add_argument("--pair", default=d.pair, help="accepted, unused")
    p.add_argument("--attack_size", type=int, default=d.attack_size,
                   help="images drawn (with replacement) for each round; inverted in chunks of 32")
    p.add_argument("--re_steps", type=int, default=d.re_steps)
    p.add_argument("--re_steps_cap", type=int, default=d.re_steps_cap,
                   help="hard cap on steps of a round when no trigger reaches the threshold (0, the default: go on while the best psim still rises, ending a round after max(re_steps, 100) steps without a new best, at most 100 x re_steps)")
    p.add_argument("--micro_batch", type=int, default=d.micro_batch,
                   help="images per forward/backward inside a 32-image chunk (same gradient, less memory: "
                        "for 224-pixel encoders on small GPUs); 0 = the whole chunk at once")
    p.add_argument("--downstreamTask", default=d.downstreamTask, help="dataset of the kNN monitor")
    p.add_argument("--epsilon", type=float, default=d.epsilon)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--reference_label", type=int, default=d.reference_label, help="target class (monitor only)")
    p.add_argument("--trigger_file", default=d.trigger_file, help="ground-truth trigger, monitoring only")
    p.add_argument("--reference_file", default=d.reference_file, help="accepted, unused (as in the original)")
    p.add_argument("--source_label", type=int, default=d.source_label, help="accepted, unused (as in the original)")
    p.add_argument("--psim", default=d.psim, choices=PSIM_CHOICES,
                   help="the pairwise similarity --similarity_threshold is compared with: original = the paper's "
                        "code's (B-1)/B^3 * sum of all B^2 cosines of a 32-image chunk (what its thresholds were "
                        "tuned on); pairs = the mean cosine over pairs i != j; centred = pairs on the features "
                        "minus the clean images' mean feature (about 0 for clean images on every encoder)")
    p.add_argument("--lowpass", default=d.lowpass, choices=LOWPASS_CHOICES,
                   help="moth, nc (beyond the paper): on = the search sees the stamped images through a 3x3 blur, "
                        "so a trigger must survive it to collapse the features; scattered single pixels do not, a "
                        "patch does (docs/ALGORITHMS.md). Off: the paper's search, and the recommended one: on our "
                        "benchmark the blur helped where RECEIVE missed and cost accuracy on a held-out family "
                        "(docs/RESULTS.md). --phase detect ignores it")
    p.add_argument("--monitor_every", type=int, default=d.monitor_every, help="kNN monitor after every N-th batch of an epoch, and once before the first round (0: off)")
    p.add_argument("--detect_psim", default=d.detect_psim,
                   help="--phase detect: mean pairwise cosine (over pairs i != j) the stamped images' features "
                        "must reach, as DECREE (a number, e.g. its 0.99), or 'auto' (the default): as far from "
                        "the clean images' own cosine as 0.99 is on the encoders the verdict was calibrated on, "
                        "so that an encoder whose clean images already agree is asked the same collapse")
    p.add_argument("--detect_psim_kind", default=d.detect_psim_kind, choices=DETECT_PSIM_KINDS,
                   help="--phase detect: the cosine --detect_psim is on: pairs = DECREE's, of the features as they "
                        "are; centred = of the features minus the judged clean images' mean feature, so that a "
                        "direction every image shares (an anisotropic encoder, as CLIP's) counts for nothing. "
                        "pairs is the default: held out, centred ordered encoders within each family but its "
                        "threshold did not carry to other families (16 wrong verdicts of 49, pairs 1; "
                        "docs/DETECTION.md): use it with a --detect_pl1 measured on clean encoders of your own")
    p.add_argument("--detect_pl1", type=float, default=d.detect_pl1,
                   help="--phase detect: verdict threshold on the trigger's size PL1 = mask L1 / (H*W); "
                        "smaller means backdoored (default: the value calibrated for --detect_psim_kind, "
                        + ", ".join(f"{k} {v}" for k, v in DETECT_PL1_BY_KIND.items()) + "; with the pairs "
                        f"default, an encoder whose clean images' pair cosine is above {CALIBRATED_CLEAN_PSIM_MAX}, "
                        "beyond the calibration, gets 'inconclusive'; a value of your own lifts that limit)")
    p.add_argument("--detect_reference", default=d.detect_reference,
                   help="--phase detect: a clean encoder of the same family as the suspect one (same --model, "
                        "trained on the same kind of data), searched the same way on the same images; the verdict "
                        "then reads the suspect's PL1 over the reference's against "
                        + ", ".join(f"{k} {v}" for k, v in DETECT_RATIO_BY_KIND.items()) + " (by "
                        "--detect_psim_kind), instead of one threshold for every encoder. With --detect_psim_kind "
                        "centred it read anisotropic encoders the default cannot, but missed slow, partial "
                        "backdoors that the pairs kind read right, and on encoders built again on another machine "
                        "it was wrong on 2 of 52 pairs (docs/DETECTION.md)")
    p.add_argument("--detect_images", type=int, default=d.detect_images,
                   help="--phase detect: images of the --data_ratio share the trigger must collapse, the number "
                        "--detect_pl1 was calibrated on (0: all; more images make every trigger larger)")
    add_asr_flag(p)
    add_amp_flag(p)
    return p


@cli_entry(memory="--attack_size, --batch_size or --data_ratio")
def main(argv: list[str] | None = None) -> dict:
    """``MAIN.py``: parse ``argv`` into a validated MainConfig and run the phase; returns its metrics.json content."""
    cfg = config_from_args(MainConfig, build_parser().parse_args(argv)).validate()
    # torch and the project's heavy modules are imported once the command line is known to be good
    # (--help and a bad flag answer at once), with Ctrl-C held until the import is whole
    with interrupts_deferred():
        from Trainer.main_flow import run_main

    return run_main(cfg)


if __name__ == "__main__":
    main()
