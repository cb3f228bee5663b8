"""bench/detect_kinds.py as a tool: which encoders it finds in generalise run folders, and its verdict counts
(from recorded detect.json files; no detection is run here)."""
import json

import pytest

from tests.bench import load_bench


@pytest.fixture(scope="module")
def kinds():
    return load_bench("detect_kinds", "detect_kinds")


def record(folder, encoder, pl1, threshold=0.055, kind="pairs"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "setting-detect.txt").write_text(f"pretrained_encoder: {encoder}\nseed: 0\ndetect_pl1: 0.055\n")
    (folder / "detect.json").write_text(json.dumps({
        "pl1": pl1, "reached_threshold": True, "pl1_threshold": threshold, "clean_psim": 0.6, "psim_kind": kind,
        "calibrated_clean_psim_max": 0.65 if kind == "pairs" else None}))


def cell(root, family, name, asr, clean_bytes, backdoored_bytes, pl1s):
    """A generalise cell: encoders.json, both encoder files and the paper arm's recorded checks."""
    folder = root / family / name
    folder.mkdir(parents=True)
    (folder / "encoders.json").write_text(json.dumps({"clean": {"asr": 1.0}, "backdoored": {"asr": asr}}))
    for label, content, pl1 in (("clean", clean_bytes, pl1s[0]), ("backdoored", backdoored_bytes, pl1s[1])):
        encoder = folder / f"{label}.pth"
        encoder.write_bytes(content)
        record(folder / "paper" / "detect" / label, encoder, pl1)
    return folder


def test_each_encoder_file_is_judged_once_with_its_truth_and_status(kinds, tmp_path):
    cell(tmp_path, "synthetic", "tiny-s0-white", 100.0, b"clean0", b"bd0", (0.09, 0.03))
    cell(tmp_path, "synthetic", "tiny-s0-white-weak", 20.0, b"clean0", b"weak0", (0.09, 0.06))  # the same clean
    cone = cell(tmp_path, "glyphs", "tiny-s0-white-cone", 90.0, b"clean1", b"bd1", (0.02, 0.07))
    found = kinds.encoders([tmp_path], set())
    assert [(e["family"], e["cell"], e["encoder"]) for e in found] == [
        ("glyphs", "tiny-s0-white-cone", "backdoored"), ("glyphs", "tiny-s0-white-cone", "clean"),
        ("synthetic", "tiny-s0-white", "backdoored"), ("synthetic", "tiny-s0-white", "clean"),
        ("synthetic", "tiny-s0-white-weak", "backdoored")]
    truth = {(e["cell"], e["encoder"]): e["truth"] for e in found}
    assert truth[("tiny-s0-white-weak", "backdoored")] is None  # a failed injection: outside the targets
    assert {e["status"] for e in found if e["family"] == "glyphs"} == {"held out"}
    assert {e["status"] for e in found if e["family"] == "synthetic"} == {"tuned"}
    assert [e["family"] for e in kinds.encoders([tmp_path], {"glyphs"})] == ["glyphs", "glyphs"]
    assert kinds.kind_dir(found[0], "centred") == cone / "paper" / "detect-centred" / "backdoored"

    # the held-out cone cell: pairs calls its clean encoder backdoored and misses its backdoor (wrong 2, AUROC 0);
    # a centred record that reads it the right way round is counted as such
    for e in found[:2]:
        record(kinds.kind_dir(e, "centred"), "x", 0.01 if e["encoder"] == "backdoored" else 0.08, 0.041, "centred")
    rows = [{**e, **{k: kinds.reading(e, k) for k in ("pairs", "centred")}} for e in found]
    text = kinds.table(rows, ["pairs", "centred"])
    assert "pairs    judged 2: wrong 2 (glyphs/tiny-s0-white-cone backdoored, glyphs/tiny-s0-white-cone clean)" in text
    assert "centred  judged 2: wrong 0; inconclusive 0; AUROC of PL1 per family: glyphs-cone 1.00 (1+1)" in text
    assert "tuned: 2 encoders with a known answer (1 backdoored, 1 clean)" in text
    assert "centred  judged 0" in text  # the tuned encoders have no centred record here


def test_each_encoder_is_judged_against_clean_encoders_of_its_family_from_other_seeds(kinds):
    def row(family, seed, encoder, pl1, truth, status="held out"):
        return {"family": family, "variant": "cone", "cell": f"tiny-s{seed}-white-cone", "encoder": encoder,
                "truth": truth, "status": status, "centred": {"pl1": pl1}}

    threshold = kinds.DETECT_RATIO_BY_KIND["centred"]
    rows = [row("textures", 0, "clean", 0.10, False), row("textures", 0, "backdoored", 0.03, True),
            row("textures", 1, "clean", 0.12, False), row("textures", 1, "backdoored", 0.10 * threshold, True),
            row("glyphs", 0, "clean", 0.05, False)]  # a family with one seed: no reference from another seed
    lines = kinds.reference_lines(rows, ["centred"])
    # pairs: s0 bd / s1 clean 0.25; s1 bd / s0 clean: the threshold itself, inside the band; the clean ones 0.83, 1.2
    assert lines[1] == ("    held out textures/cone/tiny: 4 pairs, wrong 0, inconclusive 1; q backdoored [0.25, 0.58], "
                        "clean [0.83, 1.2]")
    assert len(lines) == 2
