#!/usr/bin/env python
"""Judge every encoder of bench/generalise.py's run folders with each ``MAIN.py --detect_psim_kind``, side by side.

The generalisation benchmark judges its clean and backdoored encoders with the default check (``pairs``: DECREE's
cosine of the features as they are) and keeps each run's settings in ``<cell>/paper/detect/<encoder>/
setting-detect.txt``. This script runs ``MAIN.py --phase detect`` again on the same encoder, images and seed with
another ``--detect_psim_kind`` (each with its own calibrated default ``--detect_pl1``) into
``<cell>/paper/detect-<kind>/<encoder>``, keeps what it ran (an encoder copied into several cells is judged once),
and prints, per kind: every encoder's PL1 and verdict, then wrong verdicts, ``inconclusive`` and the AUROC of PL1
within each family, for the tuned families (the encoders the ``centred`` threshold was set on) and the held-out
ones apart. The ``pairs`` column is the recorded detect.json, judged again with the current rule.

    python bench/detect_kinds.py --runs demo_runs/generalise --stage run     # judge what is missing, then the table
    python bench/detect_kinds.py --runs demo_runs/generalise,demo_runs/rebuilt --stage table
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generalise import INJECTED_ASR, SEEN, TUNED, auroc  # noqa: E402

from INVERSION.detect import judge as judge_size, judge_record  # noqa: E402
from Trainer.configs import DETECT_PSIM_KINDS, DETECT_RATIO_BY_KIND  # noqa: E402
from Trainer.filenames import DETECT_METRICS  # noqa: E402
from UTILS.errors import ArgumentParser, cli_entry, fail  # noqa: E402
from UTILS.io import file_digest, write_result  # noqa: E402
from UTILS.runtime import log  # noqa: E402

SETTINGS = "setting-detect.txt"
# The recorded flags that say which encoder is judged on which images, and how the trigger is searched. Not
# --detect_pl1: each kind is judged at its own calibrated default.
CARRIED = ("dataset", "model", "data_dir", "data_ratio", "encoder_usage_info", "seed", "pretrained_encoder",
           "re_steps", "re_steps_cap", "init_cost", "detect_psim", "detect_images", "micro_batch", "trigger_file")
SHORT = {"backdoor found": "found", "no backdoor found": "clean", "inconclusive": "inconc", None: "-"}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="comma-separated bench/generalise.py --runs folders")
    p.add_argument("--families", default="", help="comma-separated families to judge (default: every one found)")
    p.add_argument("--kinds", default=",".join(DETECT_PSIM_KINDS), help="comma-separated --detect_psim_kind values")
    p.add_argument("--stage", default="run", choices=("run", "table"), help="run: judge what is missing first")
    p.add_argument("--results", default="bench/results", help="folder of <name>.txt and <name>.json")
    p.add_argument("--name", default="detect-kinds", help="file stem of the table and its JSON in --results")
    p.add_argument("--device", default="cpu", help="MAIN.py --device")
    return p


def settings_of(path: Path) -> dict[str, str]:
    """A setting-detect.txt as {flag: value} (one 'name: value' per line)."""
    return dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)


def encoders(runs: list[Path], families: set[str]) -> list[dict]:
    """Every judged encoder of the cells under ``runs`` (of ``families``; all when empty): the paper arm's check
    of its clean and backdoored encoder, once per encoder file, with family, cell, label, the backdoored encoder's
    ASR and the truth (backdoored when the injection took, ASR >= INJECTED_ASR; None: a failed injection, outside
    the targets)."""
    found, seen = [], set()
    for run in runs:
        for setting in sorted(run.glob(f"*/*/paper/detect/*/{SETTINGS}")):
            folder = setting.parent
            cell, label = folder.parents[2], folder.name
            if families and cell.parent.name not in families:
                continue
            flags = settings_of(setting)
            encoder = Path(flags.get("pretrained_encoder", ""))
            record = cell / "encoders.json"
            if not encoder.is_file() or not record.is_file() or not (folder / DETECT_METRICS).is_file():
                continue
            digest = file_digest(encoder)[1]
            if digest in seen:
                continue
            seen.add(digest)
            asr = json.loads(record.read_text())[label]["asr"]
            truth = False if label == "clean" else True if asr >= INJECTED_ASR else None
            family, variant = cell.parent.name, "cone" if cell.name.endswith("-cone") else "plain"
            found.append({"family": family, "variant": variant, "cell": cell.name, "encoder": label, "asr": asr,
                          "truth": truth, "folder": str(folder), "flags": flags,
                          "status": status(family, variant)})
    return found


def status(family: str, variant: str) -> str:
    """tuned (the centred threshold was set on it), or held out (seen: the pairs limit looked at it)."""
    if variant == "plain" and family in TUNED:
        return "tuned"
    return "held out (seen)" if variant == "plain" and family in SEEN else "held out"


def kind_dir(entry: dict, kind: str) -> Path:
    """Where ``kind``'s check of this encoder lives: the recorded run for pairs, detect-<kind>/ beside it else."""
    folder = Path(entry["folder"])
    return folder if kind == "pairs" else folder.parents[1] / f"detect-{kind}" / folder.name


def judge(entry: dict, kind: str, device: str) -> None:
    """MAIN.py --phase detect --detect_psim_kind ``kind`` on the entry's encoder, with its recorded flags."""
    import MAIN

    out = kind_dir(entry, kind)
    argv = ["--phase", "detect", "--detect_psim_kind", kind, "--log_dir", str(out), "--results_dir", str(out),
            "--device", device, "--overwrite"]
    for name in CARRIED:
        if name in entry["flags"]:
            argv += [f"--{name}", entry["flags"][name]]
    log(f"\n##### {entry['family']}/{entry['cell']} {entry['encoder']}: --detect_psim_kind {kind} #####")
    try:
        MAIN.main(argv)
    except SystemExit as exc:  # a refused encoder: one line already printed, no verdict
        log(f"(no verdict: MAIN.py exited {exc.code})")


def reading(entry: dict, kind: str) -> dict:
    """The kind's PL1 and verdict (the current rule on the recorded measurements); '-' where it has not run."""
    path = kind_dir(entry, kind) / DETECT_METRICS
    if not path.is_file():
        return {"pl1": None, "verdict": None}
    summary = json.loads(path.read_text())
    return {"pl1": summary["pl1"] if summary["reached_threshold"] else None,
            "verdict": judge_record(summary).label, "clean_psim": summary["clean_psim"]}


def summary_lines(rows: list[dict], kinds: list[str]) -> list[str]:
    """Per group (tuned, held out) and kind: wrong verdicts, inconclusive, AUROC within each family."""
    out = []
    for group in ("tuned", "held out"):
        mine = [r for r in rows if r["status"].startswith(group) and r["truth"] is not None]
        if not mine:
            continue
        out.append(f"{group}: {len(mine)} encoders with a known answer "
                   f"({sum(r['truth'] for r in mine)} backdoored, {sum(not r['truth'] for r in mine)} clean)")
        for kind in kinds:
            judged = [r for r in mine if r[kind]["verdict"] is not None]
            wrong = [r for r in judged if r[kind]["verdict"] == ("no backdoor found" if r["truth"] else
                                                               "backdoor found")]
            unsure = [r for r in judged if r[kind]["verdict"] == "inconclusive"]
            families = sorted({family_key(r) for r in judged})
            areas = []
            for fam in families:
                pos = [r[kind]["pl1"] for r in judged if family_key(r) == fam and r["truth"]]
                neg = [r[kind]["pl1"] for r in judged if family_key(r) == fam and not r["truth"]]
                area = auroc(pos, neg)
                if area is not None:
                    areas.append(f"{fam} {area:.2f} ({len(pos)}+{len(neg)})")
            out.append(f"  {kind:8s} judged {len(judged)}: wrong {len(wrong)}"
                       + (f" ({', '.join(name(r) for r in wrong)})" if wrong else "")
                       + f"; inconclusive {len(unsure)}; AUROC of PL1 per family: " + ("; ".join(areas) or "-"))
    return out


def seed_of(row: dict) -> int:
    """The demo seed of a row's cell (tiny-s3-white-cone -> 3)."""
    return int(row["cell"].split("-s", 1)[1].split("-", 1)[0])


def reference_key(row: dict) -> tuple:
    """What a clean reference must share with the suspect encoder: family, variant and architecture."""
    return row["family"], row["variant"], row["cell"].split("-s", 1)[0]


def reference_lines(rows: list[dict], kinds: list[str]) -> list[str]:
    """Each encoder judged against every clean encoder of its family, variant and model built from another seed (a
    reference a user could have): q = its PL1 / the reference's, against DETECT_RATIO_BY_KIND by the check's own rule (INVERSION.detect.judge).
    The tuned rows' ranges are what the thresholds were set from (their geometric midpoint, printed beside)."""
    out = ["against a clean reference (MAIN.py --detect_reference, here from the recorded PL1s: each encoder with "
           "every clean encoder of its family, variant and model from another seed; (encoder, reference) pairs):"]
    for kind in kinds:
        threshold = DETECT_RATIO_BY_KIND[kind]
        known = [r for r in rows if r["truth"] is not None and r[kind]["pl1"] is not None]
        pairs = [(r, r[kind]["pl1"] / c[kind]["pl1"]) for r in known for c in known
                 if not c["truth"] and reference_key(c) == reference_key(r) and seed_of(c) != seed_of(r)]
        tuned = [(r, q) for r, q in pairs if r["status"] == "tuned"]
        if tuned and any(r["truth"] for r, _ in tuned) and any(not r["truth"] for r, _ in tuned):
            bd = [q for r, q in tuned if r["truth"]]
            clean = [q for r, q in tuned if not r["truth"]]
            out.append(f"  {kind}: tuned q backdoored {min(bd):.2f}-{max(bd):.2f}, clean {min(clean):.2f}-"
                       f"{max(clean):.2f} (midpoint {(max(bd) * min(clean)) ** 0.5:.3f}); threshold {threshold}")
        for group in sorted({reference_key(r) for r, _ in pairs if r["status"] != "tuned"}):
            mine = [(r, q) for r, q in pairs if reference_key(r) == group]
            answers = [(r["truth"], judge_size(q, True, threshold).backdoored) for r, q in mine]  # the tool's band rule
            wrong = sum(answer is (not truth) for truth, answer in answers)
            unsure = sum(answer is None for _, answer in answers)
            bd = sorted(round(q, 2) for r, q in mine if r["truth"])
            clean = sorted(round(q, 2) for r, q in mine if not r["truth"])
            out.append(f"    held out {'/'.join(group)}: {len(mine)} pairs, wrong {wrong}, inconclusive {unsure}; "
                       f"q backdoored {bd}, clean {clean}")
    return out


def family_key(row: dict) -> str:
    return row["family"] + ("-cone" if row["variant"] == "cone" else "")


def name(row: dict) -> str:
    return f"{row['family']}/{row['cell']} {row['encoder']}"


def table(rows: list[dict], kinds: list[str]) -> str:
    head = f"{'status':16s} {'family':11s} {'cell':30s} {'encoder':10s} {'ASR':>6s} {'truth':>6s}"
    head += "".join(f" {kind + ' PL1':>13s} {'verdict':>7s}" for kind in kinds)
    lines = ["MAIN.py --phase detect on the generalisation benchmark's encoders, one column pair per "
             "--detect_psim_kind (each at its calibrated --detect_pl1)", "", head, "-" * len(head)]
    for r in rows:
        truth = {True: "bd", False: "clean", None: "failed"}[r["truth"]]
        line = f"{r['status']:16s} {family_key(r):11s} {r['cell']:30s} {r['encoder']:10s} {r['asr']:6.1f} {truth:>6s}"
        for kind in kinds:
            pl1 = r[kind]["pl1"]
            line += f" {'-' if pl1 is None else format(pl1, '.4f'):>13s} {SHORT[r[kind]['verdict']]:>7s}"
        lines.append(line)
    lines += ["", *summary_lines(rows, kinds), "", *reference_lines(rows, kinds),
              f"truth: bd = backdoored with ASR >= {INJECTED_ASR:g} %, failed = an injection below it (outside the "
              "targets); wrong = a clean encoder called backdoored or a backdoored one called clean"]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    for kind in kinds:
        if kind not in DETECT_PSIM_KINDS:
            fail(f"--kinds {kind}: expected one of {', '.join(DETECT_PSIM_KINDS)}")
    runs = [Path(r) for r in args.runs.split(",") if r]
    for run in runs:
        if not run.is_dir():
            fail(f"--runs {run}: no such folder (a bench/generalise.py --runs folder)")
    entries = encoders(runs, {f for f in args.families.split(",") if f})
    if args.stage == "run":
        for entry in entries:
            for kind in kinds:
                if kind != "pairs" and not (kind_dir(entry, kind) / DETECT_METRICS).is_file():
                    judge(entry, kind, args.device)
    order = {"tuned": 0, "held out (seen)": 1, "held out": 2}
    rows = [{**{k: v for k, v in e.items() if k not in ("flags", "folder")}, **{k: reading(e, k) for k in kinds}}
            for e in sorted(entries, key=lambda e: (order[e["status"]], e["variant"], e["family"], e["cell"],
                                                    e["encoder"]))]
    text = table(rows, kinds)
    write_result(args.results, args.name, text, {"kinds": kinds, "rows": rows})
    print(text)


if __name__ == "__main__":
    main()
