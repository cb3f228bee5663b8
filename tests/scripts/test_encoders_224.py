"""Every stage at 224 pixels on BadEncoder-style ImageNet and CLIP encoders (random weights), on the
embedded data resized to 224: the small test-only towers in the normal suite, the full ResNet-50 and
CLIP RN50 under ``slow``. Also the two 224 trigger formats and the one-line refusals."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from DATASETS import synthetic
from DATASETS.triggers import save_ground_truth_trigger
from MODELS.checkpoint import load_encoder
from tests.MODELS.test_visual import calibrated
from tests.scripts.conftest import load_script, run_cli

BADENC_TRIGGER = "trigger/trigger_pt_white_173_50_ap_replace.npz"  # BadEncoder's (1,224,224,3)
DECREE_TRIGGER = "trigger/trigger_pt_white_185_24.npz"  # DECREE's, without the batch axis


def write_encoders(root, name: str, stem: str) -> None:
    """BadEncoder's two layouts: a backdoored file (visual.* keys) and a clean one (the bare tower)."""
    model = calibrated(name)
    torch.save({"state_dict": model.state_dict(), "epoch": 200}, root / f"{stem}_backdoored.pth")
    torch.save({"state_dict": model.visual.state_dict()}, root / f"{stem}_clean.pth")


@pytest.fixture(scope="module")
def ws224(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws224")
    for name, n in (("synthetic", 24), ("synthetic_down", 20)):  # small caches of the embedded sets
        (root / "data" / name).mkdir(parents=True)
        for split in ("train", "test"):
            x, y = synthetic.generate(name, split, n=n)
            np.savez(root / "data" / name / f"{split}.npz", x=x, y=y)
    save_ground_truth_trigger(root / BADENC_TRIGGER, 224, 50, 173)
    save_ground_truth_trigger(root / DECREE_TRIGGER, 224, 24, 185, batch_axis=False)
    write_encoders(root, "clip_tiny", "clip")
    write_encoders(root, "imagenet_tiny", "imagenet")
    return root


def main_args(model: str, usage: str, encoder: str, log_dir: str, phase: str = "moth") -> list[str]:
    return ["--phase", phase, "--dataset", "synthetic", "--model", model, "--pretrained_encoder", encoder,
            "--batch_size", "4", "--epochs", "1", "--data_ratio", "0.34", "--encoder_usage_info", usage,
            "--log_dir", log_dir, "--results_dir", log_dir + "-ckpt", "--attack_size", "4", "--re_steps", "2",
            "--re_steps_cap", "2", "--monitor_every", "0", "--trigger_file", BADENC_TRIGGER, "--device", "cpu"]


def unlearn_args(model: str, usage: str, encoder: str, trigger: str, out: str) -> list[str]:
    return ["--results_dir", out, "--dataset", "synthetic", "--model", model, "--pretrained_encoder", encoder,
            "--batch_size", "4", "--epochs", "1", "--lr", "0.1", "--data_ratio", "0.34", "--encoder_usage_info",
            usage, "--log_dir", out + "-log", "--reference_label", "0", "--downstreamTask", "synthetic_down",
            "--re_mask_pattern", trigger, "--portion", "0.5", "--trigger_file", BADENC_TRIGGER, "--knn-k", "5",
            "--device", "cpu"]


def downstream_args(model: str, usage: str, encoder: str, trigger: str, out: str) -> list[str]:
    return ["--dataset", "synthetic_down", "--model", model, "--trigger_file", trigger, "--encoder", encoder,
            "--reference_label", "0", "--nn_epochs", "2", "--batch_size", "8", "--encoder_usage_info", usage,
            "--results_dir", out, "--device", "cpu"]


def check_inverted_224(path):
    with np.load(path, allow_pickle=False) as z:
        assert z["mask"].shape == (3, 224, 224) and z["pattern"].shape == (3, 224, 224)
        assert 0 <= z["mask"].min() and z["mask"].max() <= 1


def check_preview(path):
    with Image.open(path) as img:
        # mask | pattern | mask*pattern | 4 stamped images at x1, not x4 (which would be ~6,300 px wide)
        assert img.size[1] == 224 and img.size[0] < 1700


@pytest.fixture(scope="module")
def clip_runs(ws224):
    """The CLIP tower through every stage's command line (BadEncoder's flag value 'CLIP')."""
    out = {"moth": run_cli("MAIN.py", main_args("clip_tiny", "CLIP", "clip_backdoored.pth", "clip-moth")
                           + ["--micro_batch", "2"], ws224)}
    out["unlearn"] = run_cli("Unlearn-trigger.py", unlearn_args("clip_tiny", "CLIP", "clip_backdoored.pth",
                                                                "clip-moth/mask-pattern-best.npz", "clip-unl"), ws224)
    out["downstream"] = run_cli("training_downstream_classifier.py", downstream_args(
        "clip_tiny", "CLIP", "clip-unl/Harden_Unlearn_model_1.pth", DECREE_TRIGGER, "clip-clf"), ws224)
    for name, proc in out.items():
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    # the other two in-process (main([...])), which spares two interpreter starts
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(ws224)
    try:
        load_script("MAIN.py").main(main_args("clip_tiny", "CLIP", "clip_clean.pth", "clip-nc", "nc"))
        load_script("badencoder.py").main([
            "--pretrained_encoder", "clip_clean.pth", "--model", "clip_tiny", "--shadow_dataset", "synthetic",
            "--data_ratio", "0.34", "--reference_dataset", "synthetic_down", "--reference_label", "0",
            "--reference_count", "2", "--trigger_file", BADENC_TRIGGER, "--batch_size", "4", "--epochs", "1",
            "--encoder_usage_info", "CLIP", "--results_dir", "clip-bd", "--monitor_every", "0", "--device", "cpu"])
    finally:
        monkeypatch.undo()
    return ws224, out


def test_clip_moth_and_nc_invert_224_triggers(clip_runs):
    ws, _ = clip_runs
    check_inverted_224(ws / "clip-moth" / "mask-pattern-0.npz")
    check_inverted_224(ws / "clip-moth" / "mask-pattern-best.npz")
    check_preview(ws / "clip-moth" / "preview-0.png")
    check_inverted_224(ws / "clip-nc" / "mask-pattern-NC.npz")
    hardened = torch.load(next((ws / "clip-moth-ckpt").glob("Harden_model_*.pth")), weights_only=True)["state_dict"]
    assert all(k.startswith("visual.") for k in hardened)  # BadEncoder's backdoored layout, loadable by it


def test_clip_unlearn_downstream_and_badencoder_run(clip_runs):
    ws, out = clip_runs
    assert load_encoder(ws / "clip-unl" / "Harden_Unlearn_model_1.pth", "clip_tiny", "cpu").feature_dim == 64
    summary = json.loads((ws / "clip-clf" / "downstream-metrics.json").read_text())
    assert 0 <= summary["acc"] <= 100 and 0 <= summary["asr"] <= 100
    made = torch.load(ws / "clip-bd" / "model_1.pth", weights_only=True)["state_dict"]
    assert all(k.startswith("visual.") for k in made)
    assert (ws / "clip-unl-log" / "unlearn-trigger.png").is_file()


def test_imagenet_stages_in_process(ws224, monkeypatch):
    """The ImageNet ResNet through main([...]) of each script; --model left at resnet18 is read as the
    architecture --encoder_usage_info picks, so the tiny tower is named explicitly here."""
    monkeypatch.chdir(ws224)
    moth = load_script("MAIN.py").main(main_args("imagenet_tiny", "imagenet", "imagenet_clean.pth", "in-moth"))
    assert moth is not None
    check_inverted_224(ws224 / "in-moth" / "mask-pattern-best.npz")
    load_script("Unlearn-trigger.py").main(unlearn_args("imagenet_tiny", "imagenet", "imagenet_backdoored.pth",
                                                        "in-moth/mask-pattern-best.npz", "in-unl"))
    load_script("training_downstream_classifier.py").main(downstream_args(
        "imagenet_tiny", "imagenet", "in-unl/Harden_Unlearn_model_1.pth", BADENC_TRIGGER, "in-clf"))
    summary = json.loads((ws224 / "in-clf" / "downstream-metrics.json").read_text())
    assert 0 <= summary["acc"] <= 100


def test_a_contradiction_is_one_line_through_the_command_line(ws224):
    proc = run_cli("MAIN.py", main_args("resnet34", "CLIP", "clip_backdoored.pth", "refused"), ws224)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "--model resnet34 contradicts --encoder_usage_info CLIP" in lines[0], proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--pretrained_encoder", "imagenet_clean.pth"],
     "the file holds an ImageNet ResNet (conv1 / layer1..4 / fc keys, no attnpool), but --encoder_usage_info CLIP"),
    (["--trigger_file", "trigger/t32.npz"], "trigger is 32x32 but the encoder expects 224x224"),
])
def test_refusals_are_one_line(ws224, monkeypatch, capsys, args, words):
    monkeypatch.chdir(ws224)
    save_ground_truth_trigger(ws224 / "trigger" / "t32.npz")
    with pytest.raises(SystemExit) as exc:
        load_script("MAIN.py").main(main_args("clip_tiny", "CLIP", "clip_backdoored.pth", "refused") + args)
    assert exc.value.code == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and words in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("usage, stem, model", [("CLIP", "clip", "clip_rn50"), ("imagenet", "imagenet", "imagenet_resnet50")])
def test_full_size_towers_through_every_stage(ws224, monkeypatch, usage, stem, model):
    """BadEncoder's real architectures, --model left at its default (the usage picks the tower)."""
    monkeypatch.chdir(ws224)
    write_encoders(ws224, model, f"full-{stem}")
    args = main_args("resnet18", usage, f"full-{stem}_backdoored.pth", f"full-{stem}-moth") + ["--micro_batch", "2"]
    load_script("MAIN.py").main(args)
    load_script("Unlearn-trigger.py").main(unlearn_args("resnet18", usage, f"full-{stem}_clean.pth",
                                                        f"full-{stem}-moth/mask-pattern-best.npz", f"full-{stem}-unl"))
    load_script("training_downstream_classifier.py").main(downstream_args(
        "resnet18", usage, f"full-{stem}-unl/Harden_Unlearn_model_1.pth", DECREE_TRIGGER, f"full-{stem}-clf"))
    assert load_encoder(ws224 / f"full-{stem}-unl" / "Harden_Unlearn_model_1.pth", model, "cpu").feature_dim in (1024, 2048)


@pytest.mark.parametrize("model, usage, stem", [("clip_tiny", "CLIP", "clip"), ("imagenet_tiny", "imagenet", "imagenet")])
def test_detect_runs_on_the_224_towers(ws224, monkeypatch, model, usage, stem):
    """MAIN.py --phase detect on both towers: a verdict, a 224x224 trigger, PL1 over 224*224 pixels."""
    monkeypatch.chdir(ws224)
    out = load_script("MAIN.py").main(main_args(model, usage, f"{stem}_backdoored.pth", f"{stem}-detect", "detect"))
    assert out["verdict"] in ("backdoor found", "no backdoor found") and out["image_pixels"] == 224 * 224
    assert out["gt_pl1"] == pytest.approx(50 * 50 / 224**2)  # BadEncoder's 50x50 square
    check_inverted_224(ws224 / f"{stem}-detect" / "mask-pattern-detect.npz")
    check_preview(ws224 / f"{stem}-detect" / "detect.png")
