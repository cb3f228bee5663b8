"""Every stage at 224 pixels on BadEncoder-style ImageNet and CLIP encoders (random weights), on the
embedded data resized to 224: the small test-only towers in the normal suite, the full ResNet-50 and
CLIP RN50 under ``slow``; CLIP's tiny vision transformer from a Hugging Face and a whole OpenAI CLIP file,
unlearning also in 2 gloo processes. Also the two 224 trigger formats and the one-line refusals."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from DATASETS import synthetic
from DATASETS.triggers import save_ground_truth_trigger
from MODELS.checkpoint import load_encoder
from tests.MODELS.test_clip_vit import hugging_face, text_side, tiny_vit, write
from tests.MODELS.test_visual import calibrated
from tests.ranks import run_ranks
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
@pytest.mark.parametrize("usage, stem, model", [("CLIP", "clip", "clip_rn50"), ("imagenet", "imagenet", "imagenet_resnet50"),
                                                 ("CLIP", "vit-b32", "clip_vit_b32"), ("CLIP", "vit-b16", "clip_vit_b16")])
def test_full_size_towers_through_every_stage(ws224, monkeypatch, usage, stem, model):
    """BadEncoder's real architectures and CLIP's ViTs, --model left at its default (the usage picks the tower,
    or a ViT file's keys do)."""
    monkeypatch.chdir(ws224)
    write_encoders(ws224, model, f"full-{stem}")
    args = main_args("resnet18", usage, f"full-{stem}_backdoored.pth", f"full-{stem}-moth") + ["--micro_batch", "2"]
    load_script("MAIN.py").main(args)
    load_script("Unlearn-trigger.py").main(unlearn_args("resnet18", usage, f"full-{stem}_clean.pth",
                                                        f"full-{stem}-moth/mask-pattern-best.npz", f"full-{stem}-unl"))
    load_script("training_downstream_classifier.py").main(downstream_args(
        "resnet18", usage, f"full-{stem}-unl/Harden_Unlearn_model_1.pth", DECREE_TRIGGER, f"full-{stem}-clf"))
    assert load_encoder(ws224 / f"full-{stem}-unl" / "Harden_Unlearn_model_1.pth", model, "cpu").feature_dim in (
        512, 1024, 2048)


@pytest.mark.parametrize("model, usage, stem", [("clip_tiny", "CLIP", "clip"), ("imagenet_tiny", "imagenet", "imagenet")])
def test_detect_runs_on_the_224_towers(ws224, monkeypatch, model, usage, stem):
    """MAIN.py --phase detect on both towers: a verdict, a 224x224 trigger, PL1 over 224*224 pixels."""
    monkeypatch.chdir(ws224)
    out = load_script("MAIN.py").main(main_args(model, usage, f"{stem}_backdoored.pth", f"{stem}-detect", "detect"))
    assert out["verdict"] in ("backdoor found", "no backdoor found") and out["image_pixels"] == 224 * 224
    assert out["gt_pl1"] == pytest.approx(50 * 50 / 224**2)  # BadEncoder's 50x50 square
    check_inverted_224(ws224 / f"{stem}-detect" / "mask-pattern-detect.npz")
    check_preview(ws224 / f"{stem}-detect" / "detect.png")


# --- CLIP's vision transformer (the test-only clip_vit_tiny) through every stage ---

def write_vit_files(root) -> None:
    """The tiny ViT as a Hugging Face CLIPVisionModelWithProjection file (model.safetensors) and as a whole
    OpenAI CLIP state dict (.pth): the layouts people download."""
    model = tiny_vit()
    (root / "hf-vit").mkdir(exist_ok=True)
    write(hugging_face(model.visual.state_dict()), root / "hf-vit" / "model.safetensors", "safetensors")
    torch.save({**model.state_dict(), **text_side()}, root / "vit_whole.pth")


@pytest.fixture(scope="module")
def vit_runs(ws224):
    """Unlearning through its command line with --model left at its default (the Hugging Face file's keys
    choose the tower); inversion with --micro_batch, NC and detect and the downstream classifier in-process."""
    write_vit_files(ws224)
    unl = run_cli("Unlearn-trigger.py", unlearn_args("resnet18", "CLIP", "hf-vit/model.safetensors", BADENC_TRIGGER,
                                                     "vit-unl"), ws224)
    assert unl.returncode == 0, f"unlearn failed:\n{unl.stdout[-2000:]}\n{unl.stderr[-3000:]}"
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(ws224)
    try:
        main = load_script("MAIN.py").main
        main(main_args("clip_vit_tiny", "CLIP", "hf-vit/model.safetensors", "vit-moth") + ["--micro_batch", "2"])
        main(main_args("resnet18", "CLIP", "vit_whole.pth", "vit-nc", "nc"))
        detect = main(main_args("clip_vit_tiny", "CLIP", "vit_whole.pth", "vit-detect", "detect"))
        load_script("training_downstream_classifier.py").main(downstream_args(
            "resnet18", "CLIP", "vit-unl/Harden_Unlearn_model_1.pth", DECREE_TRIGGER, "vit-clf"))
    finally:
        monkeypatch.undo()
    return ws224, detect


def test_vit_moth_nc_and_detect_invert_224_triggers(vit_runs):
    ws, detect = vit_runs
    check_inverted_224(ws / "vit-moth" / "mask-pattern-best.npz")
    check_preview(ws / "vit-moth" / "preview-0.png")
    check_inverted_224(ws / "vit-nc" / "mask-pattern-NC.npz")
    check_inverted_224(ws / "vit-detect" / "mask-pattern-detect.npz")
    assert detect["verdict"] in ("backdoor found", "no backdoor found", "inconclusive")
    assert detect["image_pixels"] == 224 * 224
    if detect["outside_calibration"]:  # a random tiny ViT's images may already agree: then no verdict
        assert detect["verdict"] == "inconclusive" and detect["clean_psim"] > detect["calibrated_clean_psim_max"]
    hardened = torch.load(next((ws / "vit-moth-ckpt").glob("Harden_model_*.pth")), weights_only=True)["state_dict"]
    assert "visual.class_embedding" in hardened and all(k.startswith("visual.") for k in hardened)


def test_vit_unlearn_with_the_default_model_reads_the_tower_from_the_keys(vit_runs):
    ws, _ = vit_runs
    assert "model: clip_vit_tiny\n" in (ws / "vit-unl-log" / "unlearn-setting.txt").read_text()  # what ran, not the RN50
    assert "model: clip_vit_tiny\n" in (ws / "vit-nc" / "setting-NC.txt").read_text()
    unlearned = load_encoder(ws / "vit-unl" / "Harden_Unlearn_model_1.pth", "clip_vit_tiny", "cpu")
    assert unlearned.feature_dim == 32  # saved in OpenAI's layout (visual.*), whatever layout it was read in
    summary = json.loads((ws / "vit-clf" / "downstream-metrics.json").read_text())
    assert 0 <= summary["acc"] <= 100 and 0 <= summary["asr"] <= 100


def _unlearn_in_ranks(out_dir, root, args: list[str]) -> None:
    """A torchrun rank (tests.ranks): Unlearn-trigger.py's main in the workspace."""
    import os

    os.chdir(root)
    load_script("Unlearn-trigger.py").main(args)


def test_vit_unlearning_under_two_gloo_processes_follows_the_one_process_run(vit_runs):
    """No BatchNorm in a ViT: the 2-process run differs from the 1-process one by the order of float sums only."""
    ws, _ = vit_runs
    run_ranks(_unlearn_in_ranks, ws, unlearn_args("resnet18", "CLIP", "hf-vit/model.safetensors", BADENC_TRIGGER,
                                                  "vit-unl-2"), world=2)
    with open(ws / "vit-unl-log" / "unlearn-metrics.csv") as a, open(ws / "vit-unl-2-log" / "unlearn-metrics.csv") as b:
        one, two = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two] == ["0", "1"]  # before, after the epoch
    for key in ("loss", "contrastive", "unlearn"):  # the tolerance of tests/scripts/test_data_parallel.py
        assert two[0][key] == one[0][key] == "nan"
        assert float(two[1][key]) == pytest.approx(float(one[1][key]), rel=1e-4, abs=1e-5), key
    assert sorted(p.name for p in (ws / "vit-unl").iterdir()) == sorted(p.name for p in (ws / "vit-unl-2").iterdir())
