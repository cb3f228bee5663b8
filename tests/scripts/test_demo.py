"""demo.py end to end with the tiny `ci` preset on shrunken embedded datasets: every artifact exists and
holds sane values, the table's numbers are the stages' own outputs, and report.py redraws the report."""
import contextlib
import csv
import io
import json
import math

import pytest
from PIL import Image

from DATASETS import synthetic
from tests.scripts.conftest import load_script

ENCODERS = ("clean", "backdoored", "RECEIVE", "NC baseline")
EVAL_DIRS = ("clean", "backdoored", "receive", "nc")
FIGURES = ("triggers.png", "trigger_growth.png", "unlearning.png", "results.png")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setitem(synthetic.SIZES, "synthetic", {"train": 3200, "test": 64})
        mp.setitem(synthetic.SIZES, "synthetic_down", {"train": 200, "test": 100})
        summary = load_script("demo.py").main(["--preset", "ci", "--out", str(root / "run"), "--device", "cpu",
                                               "--data_dir", str(root / "data"), "--target", "3"])
    return root / "run", summary, out.getvalue()


def test_every_stage_wrote_its_artifacts(demo):
    run, _, _ = demo
    expected = ["trigger/trigger_pt_white_21_10_ap_replace.npz", "clean/model_1.pth", "clean/pretrain-metrics.csv",
                "backdoor/model_1.pth", "backdoor/reference.npz", "backdoor/badencoder-metrics.json",
                "receive/log/mask-pattern-best.npz", "receive/log/mask-pattern-0.npz", "receive/log/metrics.csv",
                "receive/log/metrics.json", "receive/unlearned/Harden_Unlearn_model_2.pth",
                "receive/unlearn-log/unlearn-metrics.csv", "nc/log/mask-pattern-NC.npz", "nc/log/metrics-NC.json",
                "nc/unlearned/Harden_Unlearn_model_2.pth", "summary.json", "stage-times.csv", "report/report.md"]
    expected += [f"eval/{name}/downstream-metrics.json" for name in EVAL_DIRS]
    expected += [f"eval/{name}/clf_2.pth" for name in EVAL_DIRS]
    expected += [f"report/{name}" for name in FIGURES]
    expected += [f"detect/{name}/{f}" for name in EVAL_DIRS[:2] for f in ("detect.json", "detect.png")]
    missing = [p for p in expected if not (run / p).is_file()]
    assert not missing
    assert (run.parent / "data" / "synthetic_down" / "train.npz").is_file()  # generated into --data_dir


def test_table_numbers_are_the_downstream_results_of_the_run(demo):
    run, summary, _ = demo
    assert [r["encoder"] for r in summary["table"]] == list(ENCODERS)
    for row, folder in zip(summary["table"], EVAL_DIRS):
        metrics = json.loads((run / "eval" / folder / "downstream-metrics.json").read_text())
        assert row["acc"] == metrics["acc"] and row["asr"] == metrics["asr"]
        assert 0 <= row["acc"] <= 100 and 0 <= row["asr"] <= 100
        assert metrics["dataset"] == "synthetic_down" and metrics["reference_label"] == 3
    moth = json.loads((run / "receive" / "log" / "metrics.json").read_text())
    receive = summary["table"][2]
    assert receive["round"] == moth["best_round"] and receive["trigger_l1"] == pytest.approx(moth["best_l1"])
    nc = json.loads((run / "nc" / "log" / "metrics-NC.json").read_text())
    assert summary["table"][3]["trigger_l1"] == pytest.approx(nc["l1"])
    assert summary["injected_trigger_l1"] == pytest.approx(100.0)
    for row, folder in zip(summary["table"][:2], EVAL_DIRS):  # the check before removal: clean and backdoored
        detect = json.loads((run / "detect" / folder / "detect.json").read_text())
        assert row["detect_verdict"] == detect["verdict"]
        # JSON has no NaN: a PL1 that was not measured is null in the file, NaN in memory
        assert row["detect_pl1"] == detect["pl1"] or math.isnan(row["detect_pl1"]) and detect["pl1"] is None
    assert all("detect_verdict" not in row for row in summary["table"][2:])
    judged = [t for t in summary["targets"] if t["target"].startswith("detection")]
    assert [t["met"] for t in judged] == [summary["table"][0]["detect_verdict"] == "no backdoor found",
                                          summary["table"][1]["detect_verdict"] == "backdoor found"]


def test_targets_are_judged_on_the_measured_numbers(demo):
    _, summary, out = demo
    row = {r["encoder"]: r for r in summary["table"]}
    met = [t["met"] for t in summary["targets"]]
    assert met[0] == (row["backdoored"]["asr"] >= 90)
    assert met[1] == (row["backdoored"]["acc"] - row["clean"]["acc"] >= -3)  # one-sided: utility kept
    assert met[2] == (row["RECEIVE"]["asr"] <= 5)
    assert met[3] == (row["RECEIVE"]["acc"] - row["backdoored"]["acc"] >= -3)
    for t in summary["targets"]:
        assert f"{t['target']}: {t['measured']}" in out


def test_stage_times_are_printed_and_recorded(demo):
    run, summary, out = demo
    names = [s["stage"] for s in summary["stage_times"]]
    assert len(names) == 14 and all(s["seconds"] > 0 for s in summary["stage_times"])
    with open(run / "stage-times.csv") as h:
        assert [r["stage"] for r in csv.DictReader(h)] == names
    assert "stage times:" in out and all(name in out for name in names)
    assert "encoder" in out and "ACC (%)" in out and "chosen round" in out and "trigger L1" in out
    commands = summary["commands"]
    assert [c.split()[1] for c in commands] == ["pretraining_encoder.py", "badencoder.py"] + \
        ["training_downstream_classifier.py"] * 2 + ["MAIN.py"] * 2 + ["MAIN.py", "Unlearn-trigger.py",
                                                     "training_downstream_classifier.py"] * 2


def test_report_holds_the_table_and_pictures(demo):
    run, summary, _ = demo
    text = (run / "report" / "report.md").read_text()
    for row in summary["table"]:
        assert f"| {row['encoder']} | {row['acc']:.2f} | {row['asr']:.2f} |" in text
    for name in FIGURES:
        assert f"]({name})" in text
        with Image.open(run / "report" / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
    assert "```bash" in text and "python MAIN.py" in text


def test_report_command_redraws_from_the_metrics_files(demo, tmp_path):
    run, _, _ = demo
    main = load_script("report.py").main
    made = main(["--run", str(run), "--out", str(tmp_path / "again")])
    assert {"triggers", "trigger_growth", "unlearning", "results", "report"} <= set(made)
    partial = main(["--moth_log", str(run / "receive" / "log"), "--unlearn_log", str(run / "receive" / "unlearn-log"),
                    "--out", str(tmp_path / "partial")])
    assert set(partial) == {"triggers", "trigger_growth", "unlearning", "report"}
    assert not (tmp_path / "partial" / "results.png").exists()
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "x")])
    assert exc.value.code == 2


def test_demo_refuses_a_used_run_folder(demo, capsys):
    run, _, _ = demo
    with pytest.raises(SystemExit) as exc:
        load_script("demo.py").main(["--preset", "ci", "--out", str(run)])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_script("demo.py").main(["--preset", "fast"])
    assert "--preset" in capsys.readouterr().err


def test_sane_metric_files(demo):
    run, _, _ = demo
    with open(run / "receive" / "log" / "metrics.csv") as h:
        rows = list(csv.DictReader(h))
    assert rows and all(float(r["l1"]) >= 0 and float(r["distance"]) >= 0 for r in rows)
    with open(run / "receive" / "unlearn-log" / "unlearn-metrics.csv") as h:
        rows = list(csv.DictReader(h))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(0 <= float(r["knn_acc"]) <= 100 for r in rows)
    assert all(math.isfinite(float(r["loss"])) for r in rows[1:])


def test_every_preset_name_has_settings():
    from DEMO.presets import PRESETS
    from Trainer.configs import PRESET_NAMES
    assert set(PRESETS) == set(PRESET_NAMES)


@pytest.mark.slow
def test_default_preset_meets_the_targets(tmp_path):
    """The real demo (about 4 minutes on 2 idle CPU cores): the four targets of the issue, as measured."""
    summary = load_script("demo.py").main(["--out", str(tmp_path / "run"), "--data_dir", str(tmp_path / "data")])
    missed = [f"{t['target']}: {t['measured']}" for t in summary["targets"][:4] if not t["met"]]
    assert not missed
    total = sum(s["seconds"] for s in summary["stage_times"])
    print(f"default demo: {total:.0f} s")
    assert total < 15 * 60


def strict_json(path):
    """Parse as a standard JSON parser does (JavaScript's JSON.parse): NaN and Infinity are not JSON."""
    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_json_file_of_a_run_is_standard_json(demo):
    """summary.json, detect.json, unlearn-metrics.json, badencoder-metrics.json, ...: unmeasured numbers
    are null, never NaN."""
    run, _, _ = demo
    files = sorted(run.rglob("*.json"))
    assert {"summary.json", "detect.json", "unlearn-metrics.json", "badencoder-metrics.json"} <= {p.name for p in files}
    for path in files:
        strict_json(path)
