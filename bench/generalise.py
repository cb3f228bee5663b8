#!/usr/bin/env python
"""Does the defence (and the verdict) hold on encoders nobody tuned it on? The whole story per cell, over data
families that differ in structure (bench/families.py), architectures, seeds and trigger shapes.

A cell is (family, model, seed, trigger). Its ``encoders`` stage runs the demo's makers through the real
command lines: the family's data, SimCLR pre-training (clean encoder), BadEncoder (backdoored encoder), the
downstream ACC/ASR of both and ``MAIN.py --phase detect`` on both. Each arm then cleans the backdoored
encoder: RECEIVE (``MAIN.py --phase moth`` + ``Unlearn-trigger.py``) and the NC baseline (``--phase nc`` + the
same unlearning), each followed by the downstream classifier. Arms differ only in MAIN.py's inversion flags:

    paper   the paper's flags (--similarity_threshold 0.9 on the paper's psim), as the demo runs them
    auto    --similarity_threshold auto (the threshold set from the encoder's own clean similarity)
    centred --similarity_threshold auto --psim centred (the same on features minus the clean mean feature)

Every cell records the clean images' psim and the injected trigger's psim (the threshold's scale on this
encoder; the injected trigger is never an input of any method), RECEIVE's chosen round, trigger L1 and stop
reason, both verdicts with their PL1, and ACC/ASR of all encoders; where each found trigger sits and what it
collapses the features onto (collapse.json); with --oracle, the unlearning of the injected trigger (the
unlearning stage's ceiling); with --floor, the unlearning of an empty trigger (the unlearning stage alone, what a
found trigger must beat). Cells are resumable: a finished stage (its
JSON on disk) is kept unless --rerun. Settings were chosen on the --tuned families only; the others are marked
"held out" in the table and reported as they came. One table per family goes to
``<results>/generalise-<family>.txt|json`` as soon as its cells are done.

    python bench/generalise.py                                   # every family, tiny, seed 0, white trigger
    python bench/generalise.py --families photos --seeds 0,1,2 --triggers white,colour --models tiny
    python bench/generalise.py --families glyphs --models resnet18_small --seeds 0
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from families import FAMILIES, ensure_family  # noqa: E402

from DEMO.demo import DemoData, DemoRun  # noqa: E402
from DEMO.layout import RunLayout  # noqa: E402
from DEMO.presets import PRESETS, Preset  # noqa: E402
from Trainer.configs import DemoConfig  # noqa: E402
from Trainer.filenames import BEST_TRIGGER, UNLEARNED_CKPT  # noqa: E402
from UTILS.errors import ArgumentParser, cli_entry, fail  # noqa: E402
from UTILS.io import read_csv, write_json, write_result  # noqa: E402
from UTILS.runtime import log  # noqa: E402

MODELS = ("tiny", "resnet18_small")
TRIGGERS = {"white": None, "colour": (8, 12, 0)}  # white 10x10 at 21 (the demo's); colour 8x8 at 12, seeded colours
ARMS = {"paper": {}, "auto": {"similarity_threshold": "auto"},  # MAIN.py inversion flags that differ from the preset
        "centred": {"similarity_threshold": "auto", "psim": "centred"},
        "lowpass": {"lowpass": "on"},  # the paper's flags, the search on low-passed stamped images
        "centred-lowpass": {"similarity_threshold": "auto", "psim": "centred", "lowpass": "on"}}
# BadEncoder settings that differ from the demo's: "weak" stops after one epoch, a backdoor that moves the stamped
# images' features only part of the way to one point (as on the private real-image check, where the injected
# trigger took psim from 0.89 to 0.93 only); its clean encoder is the full attack's, copied when it exists
# "gentle" takes a tenth of the demo's learning rate: on photos, greyphotos and greyshapes the demo's lr 0.1 wrecked
# the clean encoder (downstream ACC 79-92 -> 31-43) instead of planting a backdoor
# gentle planted only 14-17 % on photos and greyphotos; "medium" (lr 0.03) wrecked them as the demo's rate does
# (ACC 43 %, ASR 0 %), so "slow" keeps gentle's rate for three times the epochs
# "long" keeps the demo's rate for three times the epochs: in a cone encoder (below) BadEncoder's cosine loss starts
# near its floor and the backdoor grows slowly (textures' cone cell: kNN ASR 2 -> 23 % over the demo's 15 epochs,
# still rising, ACC kept); "longer" doubles that again: "long" planted 54-74 % on textures' three cone encoders
ATTACKS = {"full": {}, "weak": {"epochs": 1}, "gentle": {"lr": 0.01}, "medium": {"lr": 0.03},
           "slow": {"lr": 0.01, "epochs": 45}, "long": {"epochs": 45}, "longer": {"epochs": 90}}
TUNED = ("synthetic", "lowcontrast")  # the families every setting beyond the paper's was chosen on
# Held-out families that one later setting was chosen after looking at: they stay held out for the rest
SEEN = dict.fromkeys(("greydigits", "nearsame"),
                     "the detection's clean-cosine limit (0.65) was set after looking at it")
ENCODERS = ("clean", "backdoored")
PSIM_KINDS = ("original", "pairs", "centred")
INJECTED_ASR = 50.0  # a backdoored encoder below this ASR counts as a failed injection in the detection targets
# Encoder variants. "cone" gives the clean encoder's features a large common component before the attack, as CLIP's
# features have (unrelated images' features lie in a narrow cone): every output channel of the last residual block is
# raised by one shift, chosen so that the clean images' own psim is CONE_PSIM, the private real-image check's (clean
# psim 0.88-0.90, where the injected trigger took psim only to 0.92-0.93). BadEncoder freezes BatchNorm, so the
# backdoor is planted into the anisotropic encoder and the shift stays. No setting was chosen on such encoders: their
# tables (generalise-<family>-cone) are held out whatever the family.
VARIANTS = ("plain", "cone")
CONE_PSIM = 0.89
# Unlearnings of a trigger no method finds, measurements of the unlearning stage (--oracle, --floor): the injected
# trigger is its ceiling; an empty one (mask 0) is its fine-tuning alone, the floor a found trigger must beat
REFERENCES = {"oracle": ("the injected trigger", "the unlearning stage's ceiling"),
              "floor": ("an empty trigger", "the unlearning stage's fine-tuning alone")}


def build_parser() -> ArgumentParser:
    """The benchmark's flags: which cells, which arms, folders, device."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--models", default="tiny", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--seeds", default="0", help="comma-separated demo seeds (0..4)")
    p.add_argument("--triggers", default="white", help=f"comma-separated, of {', '.join(TRIGGERS)}")
    p.add_argument("--attacks", default="full", help=f"comma-separated, of {', '.join(ATTACKS)}")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--variants", default="plain",
                   help="comma-separated, of plain, cone (the clean encoder's features shifted into a narrow cone, "
                        f"clean psim {CONE_PSIM}, before the attack; see CONE_PSIM)")
    p.add_argument("--oracle", action="store_true",
                   help="also unlearn the injected trigger (a measurement of the unlearning stage's ceiling)")
    p.add_argument("--floor", action="store_true",
                   help="also unlearn an empty trigger (mask 0: the unlearning stage's fine-tuning alone, what a "
                        "found trigger must beat; a measurement)")
    p.add_argument("--second", action="store_true",
                   help="also run each arm again on the encoder it cleaned: MAIN.py --phase detect, then MAIN.py "
                        "--phase moth and Unlearn-trigger.py with the same flags (what a user can do with the "
                        "scripts as they are; the arm must have run)")
    p.add_argument("--hardstart", action="store_true",
                   help="also unlearn each arm's chosen trigger starting from the encoder its MAIN.py --phase moth "
                        "hardened (Unlearn-trigger.py --pretrained_encoder <its results_dir>/Harden_model_<epoch>.pth) "
                        "instead of the backdoored encoder, and measure that hardened encoder as it is (what a user "
                        "can do with the scripts as they are; the arm must have run)")
    p.add_argument("--tuned", default=",".join(TUNED), help="families the settings were chosen on (others: held out)")
    p.add_argument("--runs", default="demo_runs/generalise", help="folder of the cells' runs")
    p.add_argument("--data_root", default="data/families", help="folder the families' datasets are written to")
    p.add_argument("--results", default="bench/results", help="folder of generalise-<family>.txt|json")
    p.add_argument("--stage", default="all", choices=("all", "encoders", "detect", "table"),
                   help="encoders: only build and judge the encoders (the slow part), arms later; detect: judge "
                        "the finished encoders again (after a change to the check; cells not built are skipped), "
                        "keeping everything else; "
                        "table: run nothing, write the tables from the cells already on disk")
    p.add_argument("--rerun", action="store_true", help="run finished stages again instead of keeping them")
    p.add_argument("--fresh", action="store_true",
                   help="write each table from this machine's cells only (default: keep the rows of the recorded "
                        "<results>/generalise-<family>.json whose cells are not on disk here, marked *)")
    p.add_argument("--device", default="cpu")
    return p


def choices(text: str, allowed, flag: str) -> list[str]:
    """The comma-separated values of ``text``, each one of ``allowed``, or one line naming ``flag``."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        fail(f"{flag} {text}: expected comma-separated values of {', '.join(map(str, allowed))}")
    return values


def trigger_writer(name: str):
    """The injected trigger's writer for DemoData: the demo's white square, or a seeded colour patch."""
    if TRIGGERS[name] is None:
        return DemoData().write_trigger
    from detect import variant_trigger  # bench/detect.py: the same colour patch it judges
    patch, start, colour = TRIGGERS[name]
    return lambda path: variant_trigger(Path(path), patch, start, colour)


class Cell:
    """One (family, model, seed, trigger): its folders, its runs and its row of the table."""

    def __init__(self, family: str, model: str, seed: int, trigger: str, args: argparse.Namespace,
                 attack: str = "full", variant: str = "plain") -> None:
        self.family, self.model, self.seed, self.trigger, self.args = family, model, seed, trigger, args
        self.attack, self.variant = attack, variant
        self.root = Path(args.runs) / family / self.name.split("/", 1)[1]
        preset = PRESETS["default"]
        self.preset: Preset = replace(preset, model=model, badencoder={**preset.badencoder, **ATTACKS[attack]})
        sets = ensure_family(family, args.data_root)
        self.data = DemoData(pretrain=sets.pretrain, downstream=sets.downstream, usage=sets.usage,
                             prepare=lambda _dir: None, write_trigger=trigger_writer(trigger))
        self.data_dir = str(sets.data_dir)

    @property
    def name(self) -> str:
        weak = "" if self.attack == "full" else f"-{self.attack}"  # the full attack's cells keep their names
        cone = "" if self.variant == "plain" else f"-{self.variant}"
        return f"{self.family}/{self.model}-s{self.seed}-{self.trigger}{weak}{cone}"

    def run_for(self, arm: str, *, folder: str | None = None, encoder: Path | None = None) -> DemoRun:
        """The demo run whose folder (``folder``, else ``arm``) holds ``arm``'s defence of ``encoder`` (default: the
        backdoored encoder, which the paper arm's folder holds with the clean one)."""
        inversion = {**self.preset.inversion, **ARMS.get(arm, {})}
        root = self.root / (folder or arm)
        cfg = DemoConfig(out=str(root), device=self.args.device, data_dir=self.data_dir, seed=self.seed,
                         overwrite=True).validate()
        if encoder is None:
            encoder = RunLayout(self.root / "paper").backdoor / f"model_{self.preset.badencoder['epochs']}.pth"
        return DemoRun(cfg, replace(self.preset, inversion=inversion), RunLayout(root), self.data,
                       backdoored=encoder)

    def encoders(self) -> dict:
        """The clean and backdoored encoder with ACC/ASR and verdicts (kept in encoders.json)."""
        path = self.root / "encoders.json"
        if path.is_file() and not self.args.rerun:
            return json.loads(path.read_text())
        log(f"\n##### {self.name}: encoders #####")
        if self.variant == "cone":
            self.cone_clean_encoder()
        else:
            self.share_clean_encoder()
        results = self.run_for("paper").encoders(keep_finished=not self.args.rerun)  # an interrupted cell resumes
        write_json(path, results)
        return results

    def share_clean_encoder(self) -> None:
        """A cell other than the full attack's with the white trigger starts from that cell's clean encoder (the
        same pre-training, same seed: neither the attack nor the trigger enters it), else from any other cell's of
        the same family, model and seed, instead of training it again; nothing is copied when this one exists."""
        mine = self.run_for("paper").clean_encoder
        if mine.exists():
            return
        order = [(a, t) for a in ATTACKS for t in TRIGGERS]  # full and white first: the dicts' order
        for attack, trigger in order:
            if (attack, trigger) == (self.attack, self.trigger):
                continue
            other = Cell(self.family, self.model, self.seed, trigger, self.args, attack).run_for("paper").clean_encoder
            if other.is_file():
                import shutil

                mine.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(other, mine)
                log(f"clean encoder: {other} (the same pre-training, shared)")
                return

    def cone_clean_encoder(self) -> None:
        """The cone variant's clean encoder: the plain cell's (pre-trained first if no plain cell of this family,
        model and seed has one) with every output channel of its last residual block shifted by one value so that
        the clean images' psim is CONE_PSIM (cone_shift); the shift and both psims go to cone.json, written last,
        so that an interrupted cell starts the step again from the plain encoder."""
        mark = self.root / "cone.json"
        if mark.is_file() and not self.args.rerun:
            return
        from MODELS.checkpoint import load_encoder, save_checkpoint

        plain = Cell(self.family, self.model, self.seed, self.trigger, self.args, self.attack)
        plain.share_clean_encoder()
        source = plain.run_for("paper")
        if not source.clean_encoder.is_file():
            source.prepare()
            source.pretrain()
        usage, images = self.probe_images()
        model = load_encoder(source.clean_encoder, self.model, "cpu")
        found = cone_shift(model.f, images, usage, CONE_PSIM)
        mine = self.run_for("paper").clean_encoder
        save_checkpoint(mine, model, self.preset.pretrain["epochs"])
        write_json(mark, {"from": str(source.clean_encoder), "target_psim": CONE_PSIM, **found})
        log(f"cone: {source.clean_encoder} -> {mine}: shift {found['shift']:.4g}, clean psim "
            f"{found['psim_before']:.4f} -> {found['psim_after']:.4f}")

    def redetect(self) -> dict:
        """MAIN.py --phase detect on both finished encoders again; encoders.json gets the new verdicts."""
        results = self.encoders()
        run = self.run_for("paper")
        files = {"clean": run.clean_encoder, "backdoored": run.backdoored}
        log(f"\n##### {self.name}: detection again #####")
        for label, encoder in files.items():
            try:
                found = run.detect(label, encoder)
            except SystemExit:  # refused with one line (a broken encoder): no verdict is the answer
                found = {"verdict": "no verdict", "pl1": None, "backdoored": None,
                         "explanation": "MAIN.py --phase detect refused the encoder (see the log)"}
            results[label] = {**results[label], "detect": found}
        write_json(self.root / "encoders.json", results)
        return results

    def probe(self) -> dict:
        """The similarity scale of both encoders on the first 64 images of the demo's inversion share: the clean
        images' psim and the injected trigger's, in each psim kind (measured, never an input of a method)."""
        path = self.root / "probe.json"
        if path.is_file() and not self.args.rerun:
            return json.loads(path.read_text())
        from INVERSION.inversion import chunk_similarity
        from INVERSION.relative import CentredFeatures, feature_centre
        from MODELS.checkpoint import load_encoder

        usage, images, run, gt = self.measurement_inputs()
        files = {"clean": run.clean_encoder, "backdoored": run.backdoored}
        out = {}
        for kind, file in files.items():
            f = load_encoder(file, self.model, "cpu").f
            ways = {"original": (f, "original"), "pairs": (f, "pairs"),
                    "centred": (CentredFeatures(f, feature_centre(f, images, usage)), "pairs")}
            out[kind] = {name: {"clean": chunk_similarity(b, images, usage, None, k),
                                "gt": chunk_similarity(b, images, usage, gt, k)} for name, (b, k) in ways.items()}
        write_json(path, out)
        return out

    def collapse(self, arms: list[str]) -> dict:
        """Where each found trigger sits and what it collapses the features onto (a measurement, kept in
        collapse.json): per trigger (the check's on both encoders; RECEIVE's and NC's choice per arm, on the
        backdoored encoder) ``in_square``, the share of the mask's mass inside the injected trigger's mask
        (chance: its share of the image), and ``onto_injected``, the cosine between the centred mean feature of
        images stamped with it and that of images stamped with the injected trigger (1: the same collapse point)."""
        from DATASETS.triggers import load_trigger
        from MODELS.checkpoint import load_encoder
        from Trainer.filenames import DETECT_TRIGGER, NC_TRIGGER

        usage, images, run, gt = self.measurement_inputs()
        found = {("clean", "check"): (run.clean_encoder, run.layout.detect_dir("clean") / DETECT_TRIGGER),
                 ("backdoored", "check"): (run.backdoored, run.layout.detect_dir("backdoored") / DETECT_TRIGGER)}
        for arm in arms:
            layout = RunLayout(self.root / arm)
            found[("backdoored", f"{arm} RECEIVE")] = (run.backdoored, layout.moth_log / BEST_TRIGGER)
            found[("backdoored", f"{arm} NC")] = (run.backdoored, layout.nc_log / NC_TRIGGER)
        out: dict = {"chance": float(gt.mask.float().mean())}
        backbones = {}  # each encoder loaded once, however many of its triggers are measured
        for (encoder, what), (file, trigger_file) in found.items():
            if trigger_file.is_file():
                if file not in backbones:
                    backbones[file] = load_encoder(file, self.model, "cpu").f
                trigger = load_trigger(trigger_file, "--re_mask_pattern", expected_size=usage.size)
                out.setdefault(encoder, {})[what] = collapse_measures(backbones[file], images, usage, trigger, gt)
        return out

    def probe_images(self):
        """(usage, the first 64 images (64, 3, H, W) of the demo's inversion share): what the cone step, probe and
        collapse measure on."""
        from DATASETS.stats import get_usage
        from DATASETS.tensors import load_train_share

        usage = get_usage(self.data.usage)
        return usage, load_train_share(self.data.pretrain, self.preset.inversion["data_ratio"], self.data_dir, usage,
                                       "cpu").x[:64]

    def measurement_inputs(self):
        """What probe and collapse measure on: (usage, the probe images, the paper arm's DemoRun, the injected
        trigger)."""
        from DATASETS.triggers import load_trigger

        usage, images = self.probe_images()
        run = self.run_for("paper")
        return usage, images, run, load_trigger(run.layout.trigger, "--trigger_file", expected_size=usage.size)

    def collapse_cached(self, arms: list[str]) -> dict:
        """Cell.collapse, kept in collapse.json and measured again when an arm was added since."""
        path = self.root / "collapse.json"
        if path.is_file() and not self.args.rerun:
            kept = json.loads(path.read_text())
            if all(f"{a} RECEIVE" in kept.get("backdoored", {}) for a in arms):
                return kept
        out = self.collapse(arms)
        write_json(path, out)
        return out

    def arm(self, arm: str, encoders: dict) -> dict:
        """One arm's defences on the backdoored encoder (kept in <arm>/summary.json)."""
        run = self.run_for(arm)
        if run.layout.summary.is_file() and not self.args.rerun:
            return json.loads(run.layout.summary.read_text())
        log(f"\n##### {self.name}: arm {arm} #####")
        self.data.write_trigger(run.layout.trigger)  # the injected trigger: its ASR sets and gt_psim column
        return run.defend({k: dict(v) for k, v in encoders.items()})

    def reference_file(self, kind: str) -> Path:
        """Where reference(kind) keeps its ACC/ASR."""
        return self.root / kind / f"{kind}.json"

    def reference(self, kind: str) -> dict:
        """A measurement of the unlearning stage on this cell, with a trigger no method finds (REFERENCES):
        ``Unlearn-trigger.py`` given the *injected* trigger (``oracle``: the ceiling; when RECEIVE misses and this
        does not, the inversion found the wrong trigger) or an empty one (``floor``: fine-tuning alone; when RECEIVE
        does no better, its trigger added nothing), then the downstream classifier (kept in <kind>/<kind>.json)."""
        import torch

        from DATASETS.stats import get_usage
        from DATASETS.triggers import InvertedTrigger

        path = self.reference_file(kind)
        if path.is_file() and not self.args.rerun:
            return json.loads(path.read_text())
        log(f"\n##### {self.name}: unlearning {REFERENCES[kind][0]} ({REFERENCES[kind][1]}) #####")
        run = self.run_for(kind)
        self.data.write_trigger(run.layout.trigger)  # the injected trigger: ASR is measured with it
        trigger = run.layout.trigger
        if kind == "floor":
            size = get_usage(self.data.usage).size
            trigger = InvertedTrigger(torch.zeros(size, size), torch.zeros(3, size, size)).save(
                run.layout.root / "empty-trigger.npz")
        found = run.evaluate("RECEIVE", run.unlearn("moth", trigger))
        write_json(path, {"acc": found["acc"], "asr": found["asr"]})
        return json.loads(path.read_text())

    def second_file(self, arm: str) -> Path:
        """Where second(arm) keeps its numbers."""
        return self.root / f"{arm}-second" / "second.json"

    def second(self, arm: str) -> dict | None:
        """``arm`` run again on the encoder it cleaned, as a user can with the scripts as they are: MAIN.py
        --phase detect on the cleaned encoder (does the check still find something?), then MAIN.py --phase moth
        and Unlearn-trigger.py with the arm's flags and seeds, then the classifier (kept in <arm>-second/second.json).
        None when the arm has not cleaned an encoder yet."""
        path = self.second_file(arm)
        if path.is_file() and not self.args.rerun:
            return json.loads(path.read_text())
        first = self.run_for(arm)
        cleaned = first.layout.unlearn_ckpt / UNLEARNED_CKPT.format(self.preset.unlearn["epochs"])
        if not cleaned.is_file():
            return None
        log(f"\n##### {self.name}: arm {arm} again, on its cleaned encoder #####")
        run = self.run_for(arm, folder=path.parent.name, encoder=cleaned)
        self.data.write_trigger(run.layout.trigger)  # the injected trigger: ASR is measured with it
        check = run.detect("backdoored", cleaned)
        moth = run.invert("moth")
        found = run.evaluate("RECEIVE", run.unlearn("moth", run.layout.moth_log / BEST_TRIGGER))
        write_json(path, {"acc": found["acc"], "asr": found["asr"], "round": moth["best_round"],
                          "l1": moth["best_l1"], "stop": moth["stop_reason"],
                          "check": {"verdict": check["verdict"], "pl1": check["pl1"]}})
        return json.loads(path.read_text())

    def hardstart_file(self, arm: str) -> Path:
        """Where hardstart(arm) keeps its numbers."""
        return self.root / f"{arm}-hardstart" / "hardstart.json"

    def hardstart(self, arm: str) -> dict | None:
        """``arm``'s chosen trigger unlearned from the encoder its ``MAIN.py --phase moth`` hardened instead of the
        backdoored one (``Unlearn-trigger.py --pretrained_encoder <results_dir>/Harden_model_<epoch>.pth``, the
        arm's unlearning flags and seed), then the classifier; and the classifier on that hardened encoder as it is
        (kept in <arm>-hardstart/hardstart.json). None when the arm has not run."""
        path = self.hardstart_file(arm)
        if path.is_file() and not self.args.rerun:
            return json.loads(path.read_text())
        first = self.run_for(arm)
        metrics = first.layout.moth_log / "metrics.json"
        if not (first.layout.summary.is_file() and metrics.is_file()):
            return None
        hardened = Path(json.loads(metrics.read_text())["hardened_encoder"])
        log(f"\n##### {self.name}: arm {arm}'s trigger unlearned from its hardened encoder #####")
        run = self.run_for(arm, folder=path.parent.name, encoder=hardened)
        self.data.write_trigger(run.layout.trigger)  # the injected trigger: ASR is measured with it
        as_is = run.evaluate("hardened", hardened)
        found = run.evaluate("RECEIVE", run.unlearn("moth", first.layout.moth_log / BEST_TRIGGER))
        write_json(path, {"acc": found["acc"], "asr": found["asr"], "from": str(hardened),
                          "hardened": {"acc": as_is["acc"], "asr": as_is["asr"]}})
        return json.loads(path.read_text())

    def row(self, encoders: dict, arms: dict[str, dict]) -> dict:
        """The cell's numbers for the table and its JSON."""
        from INVERSION.detect import judge_record

        row = {"cell": self.name, "family": self.family, "model": self.model, "seed": self.seed,
               "trigger": self.trigger, "attack": self.attack, "variant": self.variant, "probe": self.probe()}
        cone = self.root / "cone.json"
        row["cone"] = json.loads(cone.read_text()) if cone.is_file() else None
        row["collapse"] = self.collapse_cached(list(arms))
        for kind in REFERENCES:
            path = self.reference_file(kind)
            row[kind] = json.loads(path.read_text()) if path.is_file() else None
        row["second"] = {a: json.loads(self.second_file(a).read_text()) for a in arms if self.second_file(a).is_file()}
        row["hardstart"] = {a: json.loads(self.hardstart_file(a).read_text()) for a in arms
                            if self.hardstart_file(a).is_file()}
        for kind in ENCODERS:
            det = encoders[kind]["detect"]
            # the current rule on the recorded measurements: a change to how they are read needs no new inversion
            verdict = judge_record(det) if "reached_threshold" in det else None  # None: refused, no verdict
            row[kind] = {"acc": encoders[kind]["acc"], "asr": encoders[kind]["asr"],
                         "verdict": verdict.label if verdict else det["verdict"],
                         "pl1": det["pl1"], "clean_psim_pairs": det.get("clean_psim"),
                         "gt_psim_pairs": det.get("gt_psim"), "collapse_off": det.get("collapse_off_clean")}
        for arm, summary in arms.items():
            table = {r["encoder"]: r for r in summary["table"]}
            moth = json.loads((RunLayout(self.root / arm).moth_log / "metrics.json").read_text())
            rounds = read_csv(RunLayout(self.root / arm).moth_log / "metrics.csv")
            first = rounds[0] if rounds else {}
            row[arm] = {"receive": {k: table["RECEIVE"][k] for k in ("acc", "asr")},
                        "nc": {k: table["NC baseline"][k] for k in ("acc", "asr")},
                        "threshold": first.get("threshold", ARMS[arm].get("similarity_threshold", 0.9)),
                        "clean_psim": _num(first.get("clean_psim")), "gt_psim": _num(first.get("gt_psim")),
                        "round": moth["best_round"], "l1": moth["best_l1"], "stop": moth["stop_reason"],
                        "rounds": moth["rounds"]}
        return row


def last_block_norm(backbone):
    """The BatchNorm whose bias sets the final ReLU's input: bn2 of the backbone's last residual block."""
    from torchvision.models.resnet import BasicBlock

    blocks = [m for m in backbone.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        fail("the cone variant needs a ResNet of BasicBlocks (--models tiny, resnet18_small)")
    return blocks[-1].bn2


def cone_shift(backbone, images, usage, target: float, iterations: int = 40) -> dict:
    """Raise the bias of ``last_block_norm(backbone)`` by the one shift (>= 0) that brings the clean ``images``'
    psim (the paper's, over their pairs; images (N, 3, H, W) in [0, 1]) to ``target``, in place.

    Adding s to the final ReLU's input moves every feature by about s along the all-ones direction, the common
    component that makes unrelated images' features agree. psim rises with s towards 1, so the shift is found by
    doubling, then bisection. Returns {"shift", "psim_before", "psim_after"}.
    """
    import torch

    from INVERSION.inversion import chunk_similarity

    norm = last_block_norm(backbone)
    base = norm.bias.detach().clone()

    def psim(shift: float) -> float:
        with torch.no_grad():
            norm.bias.copy_(base + shift)
        return chunk_similarity(backbone, images, usage, None, "original")  # as the probe and MAIN.py measure it

    before = psim(0.0)  # leaves the bias as it was
    if before >= target:
        return {"shift": 0.0, "psim_before": before, "psim_after": before}
    low, high = 0.0, 1.0
    while psim(high) < target:
        low, high = high, high * 2
        if high > 1e6:
            fail(f"the cone variant: no shift brings the clean psim to {target} (it stays at {psim(high):.4f})")
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if psim(mid) < target else (low, mid)
    return {"shift": high, "psim_before": before, "psim_after": psim(high)}


def table_name(family: str, variant: str) -> str:
    """generalise-<this>.txt|json: a family's plain cells, or its cone cells (always held out)."""
    return family if variant == "plain" else f"{family}-{variant}"


def collapse_measures(backbone, images, usage, trigger, gt) -> dict:
    """``in_square`` and ``onto_injected`` of one found ``trigger`` (see Cell.collapse); images (N, 3, H, W)."""
    import torch

    from DATASETS.stats import normalize

    def centre(stamp=None):
        with torch.no_grad():
            feats = backbone(normalize(stamp(images) if stamp else images, usage)).flatten(1)
            return torch.nn.functional.normalize(feats, dim=1).mean(0)

    mu = centre()
    cos = torch.nn.functional.cosine_similarity(centre(trigger) - mu, centre(gt) - mu, dim=0)
    mask, square = trigger.mask.float().reshape(-1, *trigger.mask.shape[-2:])[0], gt.mask.float()
    square = square.reshape(-1, *square.shape[-2:])[0] > 0
    return {"in_square": float(mask[square].sum() / mask.sum().clamp_min(1e-12)), "onto_injected": float(cos)}


def _get(tree: dict, *keys):
    """tree[k1][k2]... or None where a level is missing."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _num(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _f(value, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def short(row: dict) -> str:
    """The cell's name in its family's table; * marks a row kept from the recorded table (see merge_recorded)."""
    return row["cell"].split("/", 1)[1] + (" *" if row.get("recorded") else "")


def format_family(family: str, rows: list[dict], arms: list[str], held_out: bool) -> str:
    """One family's table: encoders and verdicts, then per arm RECEIVE and NC, then the targets."""
    status = "HELD OUT (no setting was chosen on it)" if held_out else "tuned (settings were chosen on it)"
    if family.endswith("-cone"):
        status = (f"HELD OUT (the cone variant: clean encoders' features shifted to a clean psim of {CONE_PSIM} "
                  "before the attack; no setting was chosen on such encoders)")
    elif held_out and family in SEEN:
        status = f"HELD OUT, except that {SEEN[family]}"
    lines = [f"Generalisation, family {family}: {status}", ""]
    w = max([28] + [len(short(r)) + 2 for r in rows])  # the cell column fits the longest name
    head = (f"{'cell':<{w}}{'clean ACC/ASR':>15}{'bd ACC/ASR':>15}  {'verdict clean (PL1)':<28}"
            f"{'verdict backdoored (PL1)':<28}")
    lines += [head, "-" * len(head)]
    def said(e: dict) -> str:  # the verdict, its PL1, and ~ when the trigger's images collapse off the clean ones
        return f"{e['verdict']}{'~' if e.get('collapse_off') else ''} ({_f(e['pl1'], 4)})"

    for r in rows:
        c, b = r["clean"], r["backdoored"]
        lines.append(f"{short(r):<{w}}{_f(c['acc'], 1):>7}/{_f(c['asr'], 1):<7}"
                     f"{_f(b['acc'], 1):>7}/{_f(b['asr'], 1):<7}  {said(c):<28}{said(b):<28}")
    if any(r.get("recorded") for r in rows):
        lines.append("*: kept from the recorded table (not among this run's cells, or its runs are not on this "
                     "machine; verdicts by the rule that wrote it)")
    if any(r[k].get("collapse_off") for r in rows for k in ENCODERS):
        lines.append("~: the check's trigger sends the images off the clean images (a diagnostic, not in the verdict)")
    for r in rows:
        if r.get("cone"):
            c = r["cone"]
            lines.append(f"cone {short(r)}: shift {_f(c['shift'], 3)}, the plain clean encoder's psim "
                         f"{_f(c['psim_before'], 4)} -> {_f(c['psim_after'], 4)}")
    lines += ["", "similarity scale (first 64 images of the inversion share; gt = stamped with the injected "
              "trigger, a measurement only):",
              f"{'cell':<{w}}{'encoder':<12}" + "".join(f"{k + ' clean/gt':>22}" for k in PSIM_KINDS)]
    for r in rows:
        for kind in ENCODERS:
            p = r["probe"][kind]
            lines.append(f"{short(r):<{w}}{kind:<12}" + "".join(
                f"{_f(p[k]['clean'], 4):>14} /{_f(p[k]['gt'], 4):>6}" for k in PSIM_KINDS))
    lines += ["", "what each check trigger collapses onto (in sq: share of its mask inside the injected square, "
              "chance ~0.10; onto: cosine of its centred collapse point with the injected trigger's):"]
    for r in rows:
        lines.append(f"{short(r):<{w}}" + "".join(
            f"{kind} in sq {_f(_get(r, 'collapse', kind, 'check', 'in_square'), 2)} onto "
            f"{_f(_get(r, 'collapse', kind, 'check', 'onto_injected'), 2)}    " for kind in ENCODERS))
    for arm in [a for a in arms if any(a in r for r in rows)]:  # an arm no cell of this table ran gets no block
        lines += ["", f"arm {arm}: {ARMS[arm] or 'the paper flags'}"]
        head = (f"{'cell':<{w}}{'thr':>7}{'clean psim':>11}{'gt psim':>9}{'RECEIVE ACC/ASR':>17}{'NC ACC/ASR':>15}"
                f"{'round':>6}{'L1':>7}{'in sq':>7}{'onto':>6}  stop")
        lines += [head, "-" * len(head)]
        for r in rows:
            if arm not in r:
                continue
            a = r[arm]
            lines.append(f"{short(r):<{w}}{str(a['threshold'])[:6]:>7}{_f(a['clean_psim'], 4):>11}"
                         f"{_f(a['gt_psim'], 4):>9}{_f(a['receive']['acc'], 1):>9}/{_f(a['receive']['asr'], 1):<7}"
                         f"{_f(a['nc']['acc'], 1):>7}/{_f(a['nc']['asr'], 1):<7}{a['round']:>6}{_f(a['l1'], 1):>7}"
                         f"{_f(_get(r, 'collapse', 'backdoored', f'{arm} RECEIVE', 'in_square'), 2):>7}"
                         f"{_f(_get(r, 'collapse', 'backdoored', f'{arm} RECEIVE', 'onto_injected'), 2):>6}  "
                         f"{a['stop']} ({a['rounds']} rounds)")
    for kind, (trigger, meaning) in REFERENCES.items():
        if any(r.get(kind) for r in rows):
            lines += ["", f"unlearning {trigger} instead ({meaning}; a measurement only):"]
            lines += [f"{short(r):<{w}}ACC/ASR {_f(r[kind]['acc'], 1)}/{_f(r[kind]['asr'], 1)}"
                      for r in rows if r.get(kind)]
    for arm in arms:
        twice = [r for r in rows if _get(r, "second", arm)]
        if twice:
            lines += ["", f"arm {arm} run again on the encoder it cleaned (--second; a check of the cleaned encoder, "
                          "then the same flags):",
                      f"{'cell':<{w}}{'check of the cleaned encoder (PL1)':<38}{'once ACC/ASR':>14}"
                      f"{'twice ACC/ASR':>15}{'round':>6}{'L1':>7}"]
            for r in twice:
                t = r["second"][arm]
                lines.append(f"{short(r):<{w}}{t['check']['verdict'] + ' (' + _f(t['check']['pl1'], 4) + ')':<38}"
                             f"{_f(r[arm]['receive']['acc'], 1):>7}/{_f(r[arm]['receive']['asr'], 1):<6}"
                             f"{_f(t['acc'], 1):>8}/{_f(t['asr'], 1):<6}{t['round']:>6}{_f(t['l1'], 1):>7}")
    for arm in arms:
        hard = [r for r in rows if _get(r, "hardstart", arm)]
        if hard:
            lines += ["", f"arm {arm}'s trigger unlearned from the encoder its MAIN.py --phase moth hardened "
                          "(--hardstart):",
                      f"{'cell':<{w}}{'as recorded ACC/ASR':>20}{'from hardened':>15}{'hardened as is':>16}"]
            for r in hard:
                h = r["hardstart"][arm]
                rec = r[arm]["receive"]
                lines.append(f"{short(r):<{w}}{_f(rec['acc'], 1):>13}/{_f(rec['asr'], 1):<6}"
                             f"{_f(h['acc'], 1):>8}/{_f(h['asr'], 1):<6}"
                             f"{_f(h['hardened']['acc'], 1):>9}/{_f(h['hardened']['asr'], 1)}")
    lines += ["", "targets:"] + [f"  {t}" for t in targets(rows, arms)]
    return "\n".join(lines)


def recommended_arm(row: dict) -> str | None:
    """The arm a user who follows the README runs on this cell: the paper's flags, or ``centred`` (auto with the
    centred psim) where MAIN.py with the paper's flags warns that the threshold lies at or near the clean images'
    own psim (the paper arm's first round); None when that arm did not run here."""
    from INVERSION.inversion import CHUNK, psim_ceiling
    from INVERSION.relative import near_clean

    paper = row.get("paper")
    if not paper or paper.get("clean_psim") is None:
        return None
    warned = near_clean(float(paper["threshold"]), paper["clean_psim"], psim_ceiling("original", CHUNK))
    arm = "centred" if warned else "paper"
    return arm if arm in row else None


def removed(result: dict, row: dict) -> bool:
    """The issue's removal targets on one cell: ``result`` (an ACC/ASR after cleaning) has ASR <= 5 % and ACC at most
    3 points below the cell's backdoored encoder's."""
    return result["asr"] <= 5 and result["acc"] >= row["backdoored"]["acc"] - 3


def targets(rows: list[dict], arms: list[str]) -> list[str]:
    """The issue's targets per arm, for the recommended setting (recommended_arm) and for the verdicts, as
    'met'/'MISSED' lines."""
    out = []
    chosen = [{**r, "recommended": r[a], "second": {"recommended": _get(r, "second", a)},
               "hardstart": {"recommended": _get(r, "hardstart", a)}}
              for r in rows if (a := recommended_arm(r))]
    for arm in arms + (["recommended"] if chosen else []):
        done = [r for r in rows if arm in r] if arm != "recommended" else chosen
        strong = [r for r in done if r["backdoored"]["asr"] >= 80]
        good = [r for r in strong if removed(r[arm]["receive"], r)]
        if arm == "recommended":
            out.append("  (recommended: the paper's flags, or auto with --psim centred where MAIN.py warns that the "
                       "threshold lies near the clean psim, as the README says)")
        if strong:
            out.append(f"[{'met' if len(good) == len(strong) else 'MISSED'}] arm {arm}: RECEIVE ASR <= 5% and ACC at "
                       f"most 3 points below the backdoored encoder's in every cell with backdoored ASR >= 80%: "
                       f"{len(good)} of {len(strong)}")
        if done:
            rec = sum(r[arm]["receive"]["asr"] for r in done) / len(done)
            nc = sum(r[arm]["nc"]["asr"] for r in done) / len(done)
            out.append(f"[{'met' if rec < nc else 'MISSED'}] arm {arm}: RECEIVE below NC on mean ASR: {rec:.2f}% vs "
                       f"{nc:.2f}%")
        floored = [r for r in done if r.get("floor")]
        if floored:  # did the found trigger add anything to the unlearning stage's fine-tuning?
            below = sum(r[arm]["receive"]["asr"] < r["floor"]["asr"] for r in floored)
            rec = sum(r[arm]["receive"]["asr"] for r in floored) / len(floored)
            floor = sum(r["floor"]["asr"] for r in floored) / len(floored)
            out.append(f"      (diagnostic) arm {arm}: RECEIVE below the empty trigger's unlearning on ASR in {below} "
                       f"of {len(floored)} cells (mean {rec:.2f}% vs {floor:.2f}%)")
        twice = [r for r in strong if _get(r, "second", arm)]
        if twice:  # the same arm run again on the encoder it cleaned (--second)
            ok = [r for r in twice if removed(r["second"][arm], r)]
            once = sum(r[arm]["receive"]["asr"] for r in twice) / len(twice)
            again = sum(r["second"][arm]["asr"] for r in twice) / len(twice)
            out.append(f"      (diagnostic) arm {arm} run twice (--second): ASR <= 5% and ACC at most 3 points below "
                       f"the backdoored encoder's in {len(ok)} of {len(twice)} cells with backdoored ASR >= 80% "
                       f"(mean ASR {once:.2f}% once, {again:.2f}% twice)")
        hard = [r for r in strong if _get(r, "hardstart", arm)]
        if hard:  # the arm's trigger unlearned from its hardened encoder (--hardstart)
            ok = [r for r in hard if removed(r["hardstart"][arm], r)]
            was = [r for r in hard if removed(r[arm]["receive"], r)]
            rec = sum(r[arm]["receive"]["asr"] for r in hard) / len(hard)
            from_hard = sum(r["hardstart"][arm]["asr"] for r in hard) / len(hard)
            out.append(f"      (diagnostic) arm {arm} unlearned from its hardened encoder (--hardstart): ASR <= 5% and "
                       f"ACC at most 3 points below the backdoored encoder's in {len(ok)} of {len(hard)} cells with "
                       f"backdoored ASR >= 80% (as recorded: {len(was)}; mean ASR {rec:.2f}% as recorded, "
                       f"{from_hard:.2f}% from the hardened encoder)")
    # a backdoored encoder whose injection failed (ASR below INJECTED_ASR) is no backdoored encoder to find
    # cells of one family, model and seed share one clean encoder (Cell.share_clean_encoder): it is judged once,
    # in the full attack's white-trigger cell when there is one, else in the first other cell
    key = lambda r: (r.get("family"), r.get("model"), r.get("seed"), r.get("variant", "plain"))  # noqa: E731
    first: dict = {}
    for r in sorted(rows, key=lambda r: (r.get("attack", "full") != "full", r.get("trigger") != "white")):
        first.setdefault(key(r), id(r))
    judged = [(r, k) for r in rows for k in ENCODERS
              if (k == "clean" and first[key(r)] == id(r)) or
              (k == "backdoored" and r["backdoored"]["asr"] >= INJECTED_ASR)]
    failed = [r["cell"] for r in rows if r["backdoored"]["asr"] < INJECTED_ASR]
    if failed:
        out.append(f"(left out of the detection targets: the backdoored encoder of {', '.join(failed)}, whose "
                   f"injection failed: ASR below {INJECTED_ASR:g}%)")
    want = {"clean": "no backdoor found", "backdoored": "backdoor found"}
    wrong = [f"{r['cell']} {k}" for r, k in judged if r[k]["verdict"] not in (want[k], "inconclusive")]
    unsure = sum(r[k]["verdict"] == "inconclusive" for r, k in judged)
    total = len(judged)
    out.append(f"[{'met' if not wrong else 'MISSED'}] detection: no wrong verdict ({len(wrong)} wrong"
               f"{': ' + ', '.join(wrong) if wrong else ''})")
    if total:
        out.append(f"[{'met' if unsure <= 0.1 * total else 'MISSED'}] detection: inconclusive for at most 10% of "
                   f"encoders ({unsure} of {total})")
        auc = auroc([r["backdoored"]["pl1"] for r, k in judged if k == "backdoored"],
                    [r["clean"]["pl1"] for r, k in judged if k == "clean"])
        out.append(f"[{'met' if auc is not None and auc >= 0.95 else 'MISSED'}] detection: AUROC >= 0.95 on PL1 "
                   f"({_f(auc, 3)})")
    measured = [(r, k) for r, k in judged if r[k].get("collapse_off") is not None]
    if measured:  # the diagnostic: does the trigger's collapse point lie off the clean images?
        off = {k: sum(bool(r[k]["collapse_off"]) for r, kk in measured if kk == k) for k in ENCODERS}
        of = {k: sum(kk == k for _r, kk in measured) for k in ENCODERS}
        out.append(f"      (diagnostic) collapse point off the clean images: {off['clean']} of {of['clean']} clean, "
                   f"{off['backdoored']} of {of['backdoored']} backdoored encoders")
    return out


def auroc(positive: list, negative: list) -> float | None:
    """AUROC of "smaller PL1 = backdoored" (a PL1 of None, no trigger found, counts as the largest)."""
    from EVALUATION.metrics import auroc as area

    big = lambda v: 1.0 if v is None or not math.isfinite(v) else v  # noqa: E731
    if not positive or not negative:
        return None
    return area([-big(v) for v in positive], [-big(v) for v in negative])


def cell_order(row: dict) -> tuple:
    """The tables' row order: model, seed, trigger, attack, as the cells are enumerated."""
    return (MODELS.index(row["model"]), row["seed"], list(TRIGGERS).index(row["trigger"]),
            list(ATTACKS).index(row.get("attack", "full")))


def merge_recorded(path: Path, rows: list[dict], arms: list[str]) -> tuple[list[dict], list[str]]:
    """``rows`` plus the rows of the recorded table at ``path`` (a generalise-<family>.json) whose cells ``rows``
    lacks, each marked ``recorded``; and the arms of both, in ARMS order.

    Runs live on the machine that made them, while the tables are committed: a cell run elsewhere (or before the
    runs folder was lost) keeps its row instead of vanishing from the table. A recorded row is shown as it was
    written: its verdicts are not judged again.
    """
    if not path.is_file():
        return rows, arms
    try:
        recorded = json.loads(path.read_text())
        here = {row["cell"] for row in rows}
        kept = [{**r, "recorded": True} for r in recorded["rows"] if r["cell"] not in here]
        kept_arms = set(recorded.get("arms", {}))
        merged = sorted(rows + kept, key=cell_order)
    except (ValueError, KeyError, TypeError, AttributeError):
        fail(f"{path}: not a table written by bench/generalise.py (run with --fresh to replace it)")
    return merged, [a for a in ARMS if a in arms or a in kept_arms]


def build(cell: Cell, args: argparse.Namespace, arms: list[str]) -> None:
    """Run what ``--stage`` asks of one cell (each finished stage is kept unless --rerun)."""
    encoders = cell.redetect() if args.stage == "detect" else cell.encoders()
    cell.probe()
    if args.stage == "all":
        for arm in arms:
            cell.arm(arm, encoders)
        for kind in REFERENCES:
            if getattr(args, kind):
                cell.reference(kind)
        if args.second:
            for arm in arms:
                cell.second(arm)
        if args.hardstart:
            for arm in arms:
                cell.hardstart(arm)


@cli_entry
def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """Run (or reuse) every cell asked for; write one table per family; returns the rows per family."""
    args = build_parser().parse_args(argv)
    families = choices(args.families, FAMILIES, "--families")
    models = choices(args.models, MODELS, "--models")
    triggers = choices(args.triggers, TRIGGERS, "--triggers")
    arms = choices(args.arms, ARMS, "--arms")
    attacks = choices(args.attacks, ATTACKS, "--attacks")
    seeds = [int(s) for s in choices(args.seeds, [str(i) for i in range(5)], "--seeds")]
    variants = choices(args.variants, VARIANTS, "--variants")
    tuned = [t for t in args.tuned.split(",") if t]
    out: dict[str, list[dict]] = {}
    for family, variant in ((f, v) for f in families for v in variants):
        table = table_name(family, variant)
        cells = [Cell(family, m, s, t, args, a, variant)
                 for m in models for s in seeds for t in triggers for a in attacks]
        if args.stage in ("table", "detect"):  # build no encoder: only the cells whose encoders are done
            cells = [c for c in cells if (c.root / "encoders.json").is_file()]
        if args.stage != "table":
            for cell in cells:
                build(cell, args, arms)
        rows = [cell.row(cell.encoders(), {a: cell.arm(a, cell.encoders()) for a in arms
                                           if RunLayout(cell.root / a).summary.is_file()}) for cell in cells]
        shown = arms
        if not args.fresh:
            rows, shown = merge_recorded(Path(args.results) / f"generalise-{table}.json", rows, arms)
        if not rows and variant != "plain":
            continue  # no cone cell of this family has run anywhere: no empty table
        held_out = family not in tuned or variant != "plain"
        text = format_family(table, rows, shown, held_out)
        write_result(args.results, f"generalise-{table}", text, {"family": family, "variant": variant,
                                                                 "held_out": held_out,
                                                                 "arms": {a: ARMS[a] for a in shown}, "rows": rows})
        log(text)
        out[table] = rows
    return out


if __name__ == "__main__":
    main()
