"""bench/families.py and bench/generalise.py as tools: the families are real, deterministic and readable by the
normal loaders; the table and its targets are computed from the rows (no cell is run here: they take minutes)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def families():
    return load_bench("families", "families")


@pytest.fixture(scope="module")
def generalise():
    return load_bench("generalise", "generalise")


@pytest.mark.parametrize("family", ["glyphs", "photos", "lowcontrast", "nearsame", "greydigits", "greyphotos",
                                    "greyshapes", "textures"])
def test_a_family_is_ten_balanced_classes_of_32_pixel_images_and_the_same_every_time(families, family):
    x, y = families.generate(family, "pre", "test", 30)
    again = families.generate(family, "pre", "test", 30)
    assert x.shape == (30, 32, 32, 3) and x.dtype == np.uint8 and x.max() <= 230  # never the trigger's white
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
    assert np.bincount(y, minlength=10).tolist() == [3] * 10
    assert not np.array_equal(x, families.generate(family, "down", "test", 30)[0])  # its own downstream set
    # the classes differ in what they show: mean images of two classes are not the same picture
    big, labels = families.generate(family, "pre", "train", 200)
    means = np.stack([big[labels == c].mean(axis=0) for c in range(10)])
    assert np.abs(means[0] - means[1]).mean() > 1.0


@pytest.mark.parametrize("family", ["lowcontrast", "nearsame"])
def test_faint_families_share_most_of_their_content(families, family):
    x, _ = families.generate(family, "pre", "test", 20)
    g, _ = families.generate("glyphs", "pre", "test", 20)
    spread = lambda a: a.astype(float).std(axis=0).mean()  # noqa: E731
    assert spread(x) < 0.5 * spread(g)


@pytest.mark.parametrize("family", ["greydigits", "greyphotos", "greyshapes"])
def test_grey_families_are_grey(families, family):
    x, _ = families.generate(family, "down", "test", 20)
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])


def test_a_written_family_is_read_by_the_normal_loaders(families, tmp_path, monkeypatch):
    monkeypatch.setattr(families, "SIZES", {"pre": {"train": 20, "test": 10}, "down": {"train": 20, "test": 10}})
    data = families.ensure_family("glyphs", tmp_path)
    from DATASETS.loaders import load_split

    split = load_split(data.pretrain, "train", data.data_dir)
    assert data.pretrain == "cifar10" and data.downstream == "stl10" and len(split) == 20
    stamp = (data.data_dir / "cifar10" / "train.npz").stat().st_mtime_ns
    families.ensure_family("glyphs", tmp_path)  # current: not written again
    assert (data.data_dir / "cifar10" / "train.npz").stat().st_mtime_ns == stamp


def row(generalise, family, seed, clean_pl1, bd_pl1, clean_verdict, bd_verdict, rec_asr, nc_asr):
    probe = {k: {kind: {"clean": 0.5, "gt": 0.9} for kind in generalise.PSIM_KINDS} for k in generalise.ENCODERS}
    arm = {"receive": {"acc": 80.0, "asr": rec_asr}, "nc": {"acc": 80.0, "asr": nc_asr}, "threshold": 0.9,
           "clean_psim": 0.6, "gt_psim": 0.95, "round": 3, "l1": 90.0, "stop": "patience 6", "rounds": 9}
    return {"cell": f"{family}/tiny-s{seed}-white", "family": family, "model": "tiny", "seed": seed,
            "trigger": "white", "probe": probe,
            "clean": {"acc": 80.0, "asr": 1.0, "verdict": clean_verdict, "pl1": clean_pl1},
            "backdoored": {"acc": 81.0, "asr": 99.0, "verdict": bd_verdict, "pl1": bd_pl1}, "paper": arm}


def test_targets_are_judged_from_the_rows(generalise):
    rows = [row(generalise, "glyphs", 0, 0.09, 0.03, "no backdoor found", "backdoor found", 2.0, 4.0),
            row(generalise, "glyphs", 1, 0.08, 0.04, "inconclusive", "backdoor found", 7.0, 3.0)]
    lines = generalise.targets(rows, ["paper"])
    assert lines[0].startswith("[MISSED]") and "1 of 2" in lines[0]  # 7% ASR misses the 5% target
    assert "[MISSED] arm paper: RECEIVE below NC on mean ASR: 4.50% vs 3.50%" in lines
    assert "[met] detection: no wrong verdict (0 wrong)" in lines
    assert any(line.startswith("[MISSED] detection: inconclusive") and "(1 of 4)" in line for line in lines)
    assert "[met] detection: AUROC >= 0.95 on PL1 (1.000)" in lines  # also where no collapse point was recorded
    assert generalise.auroc([0.03, 0.04], [0.09, 0.08]) == 1.0
    assert generalise.auroc([None], [0.08]) == 0.0  # no trigger found counts as the largest size
    text = generalise.format_family("glyphs", rows, ["paper"], held_out=True)
    assert "HELD OUT" in text and "glyphs" in text and "similarity scale" in text
    assert "HELD OUT, except that the detection's clean-cosine limit" in \
        generalise.format_family("greydigits", rows, ["paper"], held_out=True)  # looked at once: the table says so
    # a weak-attack cell shares the full cell's clean encoder: its clean verdict is not counted twice
    weak = {**row(generalise, "glyphs", 0, 0.09, 0.03, "no backdoor found", "backdoor found", 2.0, 4.0),
            "attack": "weak"}
    lines = generalise.targets(rows + [weak], ["paper"])
    assert any(line.startswith("[MISSED] detection: inconclusive") and "(1 of 5)" in line for line in lines)
    # ... but a gentle cell without a full one judges its clean encoder itself: a false alarm there counts
    alone = {**row(generalise, "glyphs", 2, 0.03, 0.03, "backdoor found", "backdoor found", 2.0, 4.0),
             "attack": "gentle", "cell": "glyphs/tiny-s2-white-gentle"}
    lines = generalise.targets(rows + [weak, alone], ["paper"])
    assert "[MISSED] detection: no wrong verdict (1 wrong: glyphs/tiny-s2-white-gentle clean)" in lines
    # the collapse-point diagnostic: marked in the table and counted in the targets, never in the verdicts
    off = row(generalise, "glyphs", 3, 0.04, 0.03, "backdoor found", "backdoor found", 2.0, 4.0)
    off["clean"]["collapse_off"], off["backdoored"]["collapse_off"] = True, False
    lines = generalise.targets([off], ["paper"])
    assert "[MISSED] detection: no wrong verdict (1 wrong: glyphs/tiny-s3-white clean)" in lines
    assert "      (diagnostic) collapse point off the clean images: 1 of 1 clean, 0 of 1 backdoored encoders" in lines
    text = generalise.format_family("glyphs", [off], ["paper"], held_out=True)
    assert "backdoor found~ (0.0400)" in text and "~: the check's trigger sends the images off" in text
    # another trigger's cell shares the clean encoder too: only its backdoored encoder is judged anew
    colour = {**row(generalise, "glyphs", 1, 0.08, 0.04, "inconclusive", "backdoor found", 2.0, 4.0),
              "trigger": "colour", "cell": "glyphs/tiny-s1-colour"}
    lines = generalise.targets(rows + [weak, alone, colour], ["paper"])
    assert any(line.startswith("[MISSED] detection: inconclusive") and "(1 of 8)" in line for line in lines)
    # the floor (an empty trigger unlearned): counted only over the cells that measured it
    floored = [{**rows[0], "floor": {"acc": 80.0, "asr": 30.0}}, {**rows[1], "floor": {"acc": 80.0, "asr": 6.0}}]
    lines = generalise.targets(floored + [weak], ["paper"])
    assert ("      (diagnostic) arm paper: RECEIVE below the empty trigger's unlearning on ASR in 1 of 2 cells "
            "(mean 4.50% vs 18.00%)") in lines
    assert not any("empty trigger" in line for line in generalise.targets(rows, ["paper"]))


def test_the_recommended_setting_is_the_paper_flags_unless_main_warns_then_centred(generalise):
    plain = row(generalise, "glyphs", 0, 0.09, 0.03, "no backdoor found", "backdoor found", 2.0, 4.0)
    cone = row(generalise, "glyphs", 1, 0.09, 0.03, "no backdoor found", "backdoor found", 40.0, 38.0)
    cone["paper"]["clean_psim"] = 0.9162  # above the paper's 0.9: MAIN.py warns
    assert generalise.recommended_arm(plain) == "paper"
    assert generalise.recommended_arm(cone) is None  # the arm it would take did not run
    near = row(generalise, "glyphs", 2, 0.09, 0.03, "no backdoor found", "backdoor found", 40.0, 38.0)
    near["paper"]["clean_psim"] = 0.885  # below 0.9, but less than a quarter of the way to the ceiling from it
    assert generalise.recommended_arm(near) is None
    cone["centred"] = {**cone["paper"], "receive": {"acc": 80.0, "asr": 4.0}, "nc": {"acc": 80.0, "asr": 2.0}}
    assert generalise.recommended_arm(cone) == "centred"
    lines = generalise.targets([plain, cone, near], ["paper", "centred"])
    assert "[met] arm recommended: RECEIVE ASR <= 5% and ACC at most 3 points below the backdoored encoder's in " \
           "every cell with backdoored ASR >= 80%: 2 of 2" in lines  # near: not counted, its arm did not run
    assert "[MISSED] arm paper: RECEIVE below NC on mean ASR: 27.33% vs 26.67%" in lines
    assert "[met] arm recommended: RECEIVE below NC on mean ASR: 3.00% vs 3.00%" not in lines  # 3.0 vs 3.0 is not below
    assert "[MISSED] arm recommended: RECEIVE below NC on mean ASR: 3.00% vs 3.00%" in lines


def test_a_long_cell_name_keeps_the_table_columns_in_line(generalise):
    short = row(generalise, "greyshapes", 0, 0.09, 0.03, "no backdoor found", "backdoor found", 2.0, 4.0)
    long = {**row(generalise, "greyshapes", 0, 0.09, 0.03, "no backdoor found", "backdoor found", 2.0, 4.0),
            "cell": "greyshapes/resnet18_small-s0-white-gentle"}  # 30 characters: wider than the usual column
    lines = generalise.format_family("greyshapes", [short, long], ["paper"], held_out=True).splitlines()
    for start in ("tiny-s0-white ", "resnet18_small-s0-white-gentle "):
        rows = [line for line in lines if line.startswith(start)]
        assert len(rows) == 5  # encoders, two similarity rows, the collapse row, the arm
    first = [line for line in lines if line.startswith("tiny-s0-white ")]
    second = [line for line in lines if line.startswith("resnet18_small-s0-white-gentle ")]
    for a, b in zip(first, second):  # the same columns after the name: each line starts its numbers in one place
        assert len(a) - len(a[len(a.split()[0]):].lstrip()) == len(b) - len(b[len(b.split()[0]):].lstrip())


def test_the_recorded_table_keeps_the_rows_of_cells_not_on_this_machine(generalise, tmp_path):
    import json

    old = [row(generalise, "glyphs", 1, 0.09, 0.03, "no backdoor found", "backdoor found", 2.0, 4.0),
           {**row(generalise, "glyphs", 0, 0.08, 0.04, "inconclusive", "backdoor found", 7.0, 3.0), "auto": None}]
    path = tmp_path / "generalise-glyphs.json"
    path.write_text(json.dumps({"family": "glyphs", "arms": {"paper": {}, "auto": {}}, "rows": old}))
    new = [row(generalise, "glyphs", 0, 0.07, 0.02, "no backdoor found", "backdoor found", 1.0, 2.0)]
    merged, arms = generalise.merge_recorded(path, new, ["paper"])
    assert [r["cell"] for r in merged] == ["glyphs/tiny-s0-white", "glyphs/tiny-s1-white"]  # in cell order
    assert merged[0] is new[0] and not merged[0].get("recorded")  # this machine's run replaces the recorded row
    assert merged[1]["recorded"] and merged[1]["paper"]["receive"]["asr"] == 2.0  # the other is kept, marked
    assert arms == ["paper", "auto"]  # an arm only the recorded table had stays in it
    text = generalise.format_family("glyphs", merged, ["paper"], held_out=True)
    assert "tiny-s1-white *" in text and "*: kept from the recorded table" in text
    assert generalise.merge_recorded(tmp_path / "none.json", new, ["paper"]) == (new, ["paper"])
    path.write_text('{"rows": [{"cell": 3}]}')
    from UTILS.errors import UserError

    with pytest.raises(UserError, match="generalise-glyphs.json: not a table"):
        generalise.merge_recorded(path, new, ["paper"])


@pytest.mark.parametrize("flag, value", [("--families", "cifar"), ("--models", "vit"), ("--seeds", "9"),
                                         ("--triggers", "blend"), ("--arms", "magic"),
                                         ("--attacks", "strong"), ("--variants", "round")])
def test_bad_flags_are_one_line_errors(flag, value, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "generalise.py"), flag, value, "--runs",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and flag in proc.stderr


def test_collapse_measures_place_a_trigger_and_its_collapse_point(generalise):
    """The injected trigger itself: all its mass in the square, the same collapse point (cosine 1); a trigger
    outside the square: none of its mass there. float64 throughout, so 1e-9 is far above rounding."""
    import torch

    from DATASETS.stats import get_usage
    from DATASETS.triggers import GroundTruthTrigger, InvertedTrigger, white_square_trigger

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)).double()
    images = torch.rand(6, 3, 32, 32, dtype=torch.float64)
    usage = get_usage("cifar10")
    gt = GroundTruthTrigger(**white_square_trigger())
    gt_double = InvertedTrigger(gt.mask.double(), gt.pattern.double())
    same = generalise.collapse_measures(net, images, usage, gt_double, gt_double)
    assert abs(same["in_square"] - 1) < 1e-9 and abs(same["onto_injected"] - 1) < 1e-9
    corner = torch.zeros(32, 32, dtype=torch.float64)
    corner[:5, :5] = 1
    away = InvertedTrigger(corner, torch.rand(3, 32, 32, dtype=torch.float64))
    measured = generalise.collapse_measures(net, images, usage, away, gt_double)
    assert measured["in_square"] == 0 and -1 <= measured["onto_injected"] <= 1


def test_stage_table_runs_nothing_and_writes_the_tables_of_what_is_on_disk(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "generalise.py"), "--stage", "table", "--families",
                           "synthetic", "--runs", str(runs), "--data_root", str(tmp_path / "data"), "--results",
                           str(results)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not runs.exists()  # no cell was started
    text = (results / "generalise-synthetic.txt").read_text()
    assert "tuned" in text and "targets:" in text


def test_judging_again_builds_no_encoder(generalise, tmp_path, monkeypatch):
    monkeypatch.setitem(generalise.ensure_family.__globals__, "SIZES",  # the families module generalise uses
                        {"pre": {"train": 20, "test": 10}, "down": {"train": 20, "test": 10}})
    out = generalise.main(["--stage", "detect", "--families", "glyphs", "--seeds", "0,1", "--runs",
                           str(tmp_path / "runs"), "--data_root", str(tmp_path / "data"), "--results",
                           str(tmp_path / "results")])
    assert out == {"glyphs": []}  # no cell was built, so none is judged
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pth"))


def test_the_cone_shift_brings_the_clean_psim_to_its_target_and_changes_one_bias(generalise):
    """cone_shift moves only the last block's bn2 bias, and the psim it reports is measured again here; the
    target lies halfway between the encoder's own psim and its ceiling, so reaching it is a real change."""
    import torch

    from DATASETS.stats import get_usage
    from INVERSION.inversion import chunk_similarity
    from MODELS.simclr import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    images = torch.rand(64, 3, 32, 32)
    usage = get_usage("cifar10")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    own = chunk_similarity(model.f, images, usage, None, "original")
    ceiling = 31 / 32  # the paper's psim over chunks of 32 images stays below (B-1)/B
    target = own + (ceiling - own) / 2
    assert ceiling - target > 0.005  # room to move
    found = generalise.cone_shift(model.f, images, usage, target)
    assert found["shift"] > 0 and abs(found["psim_before"] - own) < 1e-6
    again = chunk_similarity(model.f, images, usage, None, "original")
    assert again == found["psim_after"] and target <= again < target + 0.002
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["f.f.6.0.bn2.bias"]  # layer4's (only) block of tiny
    shift = model.state_dict()[changed[0]] - before[changed[0]]
    assert torch.allclose(shift, torch.full_like(shift, found["shift"]))


def test_cone_cells_get_their_own_held_out_table(generalise):
    assert generalise.table_name("synthetic", "plain") == "synthetic"
    assert generalise.table_name("synthetic", "cone") == "synthetic-cone"
    text = generalise.format_family("synthetic-cone", [], ["paper"], True)
    assert text.startswith("Generalisation, family synthetic-cone: HELD OUT (the cone variant")


def test_no_cone_table_is_written_before_a_cone_cell_ran(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "generalise.py"), "--stage", "table", "--families",
                           "synthetic", "--variants", "plain,cone", "--runs", str(tmp_path / "runs"), "--data_root",
                           str(tmp_path / "data"), "--results", str(results)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in results.iterdir()) == ["generalise-synthetic.json", "generalise-synthetic.txt"]


@pytest.fixture
def cell(generalise, tmp_path, monkeypatch):
    """A synthetic tiny cell whose family files are tiny, under tmp_path; nothing of it has run."""
    import argparse

    monkeypatch.setitem(generalise.ensure_family.__globals__, "SIZES",
                        {"pre": {"train": 20, "test": 10}, "down": {"train": 20, "test": 10}})
    args = argparse.Namespace(runs=str(tmp_path / "runs"), data_root=str(tmp_path / "data"), rerun=False,
                              device="cpu")
    return generalise.Cell("synthetic", "tiny", 0, "white", args)


def test_the_references_unlearn_the_injected_or_an_empty_trigger_once_and_the_table_shows_them(
        generalise, cell, monkeypatch):
    """--oracle hands Unlearn-trigger.py the injected trigger, --floor a trigger whose mask is 0 everywhere (the
    unlearning stage alone); each is measured once, kept, and printed under its own heading."""
    import json

    from DATASETS.triggers import load_trigger
    from DEMO.layout import RunLayout

    handed = []

    class Run:  # the two scripts a reference runs, recorded instead of run
        def __init__(self, kind):
            self.layout = RunLayout(cell.root / kind)

        def unlearn(self, phase, trigger):
            handed.append(Path(trigger))
            return self.layout.root / "unlearned.pth"

        def evaluate(self, who, encoder):
            return {"acc": 90.0, "asr": 1.5 if "oracle" in str(encoder) else 7.5}

    monkeypatch.setattr(cell, "run_for", Run)
    assert cell.reference("oracle") == {"acc": 90.0, "asr": 1.5}
    assert handed[-1] == RunLayout(cell.root / "oracle").trigger
    assert cell.reference("floor") == {"acc": 90.0, "asr": 7.5}
    empty = load_trigger(handed[-1], "--re_mask_pattern", expected_size=32)
    assert float(empty.mask.abs().sum()) == 0.0 and tuple(empty.mask.shape) == (3, 32, 32)
    assert json.loads(cell.reference_file("floor").read_text()) == {"acc": 90.0, "asr": 7.5}
    cell.reference("floor")
    assert len(handed) == 2  # kept on disk: not measured again
    r = {**row(generalise, "synthetic", 0, 0.09, 0.03, "no backdoor found", "backdoor found", 2.0, 4.0),
         "oracle": {"acc": 90.0, "asr": 1.5}, "floor": {"acc": 90.0, "asr": 7.5}}
    text = generalise.format_family("synthetic", [r], ["paper"], held_out=False)
    assert "unlearning the injected trigger" in text and "unlearning an empty trigger" in text
    assert "ACC/ASR 90.0/7.5" in text


def test_a_second_pass_starts_from_the_arms_cleaned_encoder_once_and_the_table_shows_it(
        generalise, cell, monkeypatch):
    """--second checks the arm's cleaned encoder, inverts and unlearns on it (not on the backdoored one) with the
    arm's flags, keeps the numbers, and is skipped while the arm has cleaned nothing."""
    import json

    from DEMO.layout import RunLayout

    calls = []
    real_run_for = cell.run_for

    class Run:  # the scripts a second pass runs, recorded instead of run
        def __init__(self, arm, folder=None, encoder=None):
            self.real = real_run_for(arm, folder=folder, encoder=encoder)
            self.layout, self.backdoored = self.real.layout, self.real.backdoored
            self.inversion = self.real.preset.inversion

        def detect(self, label, encoder):
            calls.append(("detect", Path(encoder)))
            return {"verdict": "no backdoor found", "pl1": 0.1}

        def invert(self, phase):
            calls.append(("invert", self.backdoored, self.inversion.get("psim")))
            return {"best_round": 4, "best_l1": 120.0, "stop_reason": "patience 6"}

        def unlearn(self, phase, trigger):
            calls.append(("unlearn", self.backdoored, Path(trigger)))
            return self.layout.root / "unlearned.pth"

        def evaluate(self, who, encoder):
            return {"acc": 89.0, "asr": 3.5}

    monkeypatch.setattr(cell, "run_for", Run)
    assert cell.second("centred") is None and not calls  # the arm has cleaned nothing yet
    cleaned = RunLayout(cell.root / "centred").unlearn_ckpt / generalise.UNLEARNED_CKPT.format(
        cell.preset.unlearn["epochs"])
    cleaned.parent.mkdir(parents=True)
    cleaned.write_bytes(b"")
    found = cell.second("centred")
    assert found == {"acc": 89.0, "asr": 3.5, "round": 4, "l1": 120.0, "stop": "patience 6",
                     "check": {"verdict": "no backdoor found", "pl1": 0.1}}
    second = RunLayout(cell.root / "centred-second")
    assert calls == [("detect", cleaned), ("invert", cleaned, "centred"),
                     ("unlearn", cleaned, second.moth_log / generalise.BEST_TRIGGER)]
    cell.second("centred")
    assert len(calls) == 3 and json.loads(cell.second_file("centred").read_text()) == found  # kept, not run again
    r = {**row(generalise, "synthetic", 0, 0.09, 0.03, "no backdoor found", "backdoor found", 7.0, 4.0),
         "second": {"paper": found}}
    text = generalise.format_family("synthetic", [r], ["paper"], held_out=False)
    assert "arm paper run again on the encoder it cleaned" in text
    assert "no backdoor found (0.1000)" in text and "80.0/7.0" in text and "89.0/3.5" in text
    assert ("      (diagnostic) arm paper run twice (--second): ASR <= 5% and ACC at most 3 points below the "
            "backdoored encoder's in 1 of 1 cells with backdoored ASR >= 80% (mean ASR 7.00% once, 3.50% twice)"
            ) in generalise.targets([r], ["paper"])
    # clean psim 0.6, threshold 0.9: MAIN.py does not warn, so the recommended setting is the paper arm, run twice too
    assert any(line.startswith("      (diagnostic) arm recommended run twice (--second)") and "in 1 of 1 cells" in line
               for line in generalise.targets([r], ["paper"]))


def test_hardstart_unlearns_the_arms_trigger_from_its_hardened_encoder_once_and_the_table_shows_it(
        generalise, cell, monkeypatch):
    """--hardstart hands Unlearn-trigger.py the arm's chosen trigger with the encoder the arm's MAIN.py hardened
    (the path its metrics.json names) as the encoder to clean, measures that hardened encoder as it is too, keeps
    the numbers, and is skipped while the arm has not run."""
    import json

    from DEMO.layout import RunLayout

    calls = []
    real_run_for = cell.run_for

    class Run:  # the scripts --hardstart runs, recorded instead of run
        def __init__(self, arm, folder=None, encoder=None):
            self.real = real_run_for(arm, folder=folder, encoder=encoder)
            self.layout, self.backdoored = self.real.layout, self.real.backdoored

        def unlearn(self, phase, trigger):
            calls.append(("unlearn", self.backdoored, Path(trigger)))
            return self.layout.root / "unlearned.pth"

        def evaluate(self, who, encoder):
            calls.append(("evaluate", who, Path(encoder)))
            return {"acc": 88.0, "asr": 99.0} if who == "hardened" else {"acc": 89.0, "asr": 2.5}

    monkeypatch.setattr(cell, "run_for", Run)
    assert cell.hardstart("paper") is None and not calls  # the arm has not run yet
    first = RunLayout(cell.root / "paper")
    hardened = first.moth_ckpt / "Harden_model_2.pth"
    first.moth_log.mkdir(parents=True)
    (first.moth_log / "metrics.json").write_text(json.dumps({"hardened_encoder": str(hardened)}))
    first.summary.parent.mkdir(parents=True, exist_ok=True)
    first.summary.write_text("{}")
    found = cell.hardstart("paper")
    assert found == {"acc": 89.0, "asr": 2.5, "from": str(hardened), "hardened": {"acc": 88.0, "asr": 99.0}}
    mine = RunLayout(cell.root / "paper-hardstart")
    assert calls == [("evaluate", "hardened", hardened),
                     ("unlearn", hardened, first.moth_log / generalise.BEST_TRIGGER),
                     ("evaluate", "RECEIVE", mine.root / "unlearned.pth")]
    cell.hardstart("paper")
    assert len(calls) == 3 and json.loads(cell.hardstart_file("paper").read_text()) == found  # kept, not run again
    r = {**row(generalise, "synthetic", 0, 0.09, 0.03, "no backdoor found", "backdoor found", 7.0, 4.0),
         "hardstart": {"paper": found}}
    text = generalise.format_family("synthetic", [r], ["paper"], held_out=False)
    assert "arm paper's trigger unlearned from the encoder its MAIN.py --phase moth hardened" in text
    assert "80.0/7.0" in text and "89.0/2.5" in text and "88.0/99.0" in text
    lines = generalise.targets([r], ["paper"])
    assert ("      (diagnostic) arm paper unlearned from its hardened encoder (--hardstart): ASR <= 5% and ACC at "
            "most 3 points below the backdoored encoder's in 1 of 1 cells with backdoored ASR >= 80% (as recorded: 0; "
            "mean ASR 7.00% as recorded, 2.50% from the hardened encoder)") in lines
    assert any(line.startswith("      (diagnostic) arm recommended unlearned from its hardened encoder")
               for line in lines)


def test_the_families_picture_has_a_row_per_family_and_shows_their_images(families, tmp_path):
    sheet = families.preview(["glyphs", "textures"])
    assert sheet.size == (96 + 10 * 68, 2 * 68)
    tile = np.asarray(sheet)[2:66, 96 + 2:96 + 66]  # first row (glyphs), first column (class 0)
    x, y = families.generate("glyphs", "pre", "test", 40)
    assert np.array_equal(tile[::2, ::2], x[np.flatnonzero(y == 0)[0]])  # glyphs' first class-0 image, scaled x2


def test_the_families_picture_refuses_an_unknown_family_in_one_line(families, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        families.main(["--preview", str(tmp_path / "f.png"), "--families", "glyphs,nope"])
    assert stop.value.code != 0 and not (tmp_path / "f.png").exists()
    assert "--families glyphs,nope" in capsys.readouterr().err
