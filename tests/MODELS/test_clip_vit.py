"""CLIP's vision transformer: the published sizes, attention against torch's MHA, every file layout
(OpenAI visual.* alone, in a whole CLIP model, module.-prefixed; open_clip's training checkpoint; Hugging
Face's CLIPVisionModelWithProjection and CLIPModel) as .pt and .safetensors, Hugging Face's names checked
against a forward pass written from them, the keys choosing the tower, and the one-line refusals."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from MODELS import build_model, load_encoder, save_checkpoint
from MODELS.checkpoint import file_family
from MODELS.clip_vit import SelfAttention
from Trainer.configs import MainConfig
from UTILS.errors import UserError

SIDE = 224
TINY = "clip_vit_tiny"


def tiny_vit(seed: int = 0):
    """The test-only tower with random weights, every LayerNorm and bias drawn too (so none is left at 0/1)."""
    torch.manual_seed(seed)
    model = build_model(TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, params, patch, tokens", [("clip_vit_b32", 87_849_216, 32, 50),
                                                         ("clip_vit_b16", 86_192_640, 16, 197)])
def test_full_size_towers_have_the_published_sizes_and_key_names(name, params, patch, tokens):
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = build_model(name)
    # OpenAI CLIP's visual towers: width 768, 12 layers, 12 heads, 512-d output, 224 pixels
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.feature_dim == 512 and model.name == name and model.kind == "clip_vit" and model.family == "clip"
    keys = model.state_dict()
    assert keys["visual.conv1.weight"].shape == (768, 3, patch, patch)
    assert keys["visual.positional_embedding"].shape == (tokens, 768)
    assert keys["visual.proj"].shape == (768, 512) and keys["visual.class_embedding"].shape == (768,)
    assert keys["visual.transformer.resblocks.11.attn.in_proj_weight"].shape == (3 * 768, 768)
    assert keys["visual.transformer.resblocks.11.mlp.c_fc.weight"].shape == (4 * 768, 768)
    for key in ("visual.ln_pre.weight", "visual.ln_post.bias", "visual.transformer.resblocks.0.ln_1.weight",
                "visual.transformer.resblocks.0.attn.out_proj.bias", "visual.transformer.resblocks.0.ln_2.bias",
                "visual.transformer.resblocks.0.mlp.c_proj.weight"):
        assert key in keys
    assert "visual.transformer.resblocks.12.ln_1.weight" not in keys and "visual.conv1.bias" not in keys


def test_forward_gives_normalised_features_that_differ_between_images():
    model = tiny_vit()
    x = images()
    with torch.no_grad():
        feature, out = model(x)
        raw = model.f(x)
    assert feature.shape == (3, 32) and torch.equal(feature, out)
    assert torch.allclose(feature, F.normalize(raw, dim=1))
    assert (feature @ feature.T)[0, 1] < 0.9999


def test_attention_equals_torch_multi_head_attention():
    torch.manual_seed(0)
    attn = SelfAttention(32, 4).double()
    torch.nn.init.normal_(attn.in_proj_weight, std=0.3)
    torch.nn.init.normal_(attn.in_proj_bias)
    torch.nn.init.normal_(attn.out_proj.bias)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True).double()
    ref.load_state_dict(attn.state_dict())  # the same parameter names: OpenAI's keys are torch's MHA's
    x = torch.randn(2, 50, 32, dtype=torch.float64)
    expected, _ = ref(x, x, x, need_weights=False)
    assert torch.allclose(attn(x), expected, rtol=1e-10, atol=1e-12)


# --- the layouts, written here by hand from the OpenAI names (not through the loader's table) ---

def hugging_face(bare: dict) -> dict:
    """CLIPVisionModelWithProjection's state dict from the bare OpenAI tower's."""
    out = {"vision_model.embeddings.class_embedding": bare["class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": bare["conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": bare["positional_embedding"],
           "vision_model.embeddings.position_ids": torch.arange(bare["positional_embedding"].shape[0])[None],
           "vision_model.pre_layrnorm.weight": bare["ln_pre.weight"], "vision_model.pre_layrnorm.bias": bare["ln_pre.bias"],
           "vision_model.post_layernorm.weight": bare["ln_post.weight"],
           "vision_model.post_layernorm.bias": bare["ln_post.bias"],
           "visual_projection.weight": bare["proj"].T}
    blocks = {k.split(".")[2] for k in bare if k.startswith("transformer.resblocks.")}
    for i in blocks:
        ours, hf = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        q, k, v = bare[ours + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = bare[ours + "attn.in_proj_bias"].chunk(3)
        out.update({hf + "self_attn.q_proj.weight": q, hf + "self_attn.k_proj.weight": k,
                    hf + "self_attn.v_proj.weight": v, hf + "self_attn.q_proj.bias": qb,
                    hf + "self_attn.k_proj.bias": kb, hf + "self_attn.v_proj.bias": vb})
        for theirs, mine in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for p in ("weight", "bias"):
                out[f"{hf}{theirs}.{p}"] = bare[f"{ours}{mine}.{p}"]
    return out


def text_side(prefix: str = "") -> dict:
    """A stand-in for the text half of a whole CLIP model (OpenAI's / open_clip's names)."""
    return {f"{prefix}token_embedding.weight": torch.randn(10, 8), f"{prefix}positional_embedding": torch.randn(7, 8),
            f"{prefix}transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8),
            f"{prefix}ln_final.weight": torch.ones(8), f"{prefix}text_projection": torch.randn(8, 32),
            f"{prefix}logit_scale": torch.tensor(4.6)}


def layouts(model) -> dict:
    visual = {k: v.clone() for k, v in model.state_dict().items()}
    bare = {k: v.clone() for k, v in model.visual.state_dict().items()}
    whole = {**visual, **text_side()}
    hf = hugging_face(bare)
    return {
        "openai visual.*": visual,
        "bare tower": bare,
        "whole CLIP model": whole,
        "whole CLIP model, module.": {"module." + k: v for k, v in whole.items()},
        "open_clip training checkpoint": {"epoch": 32, "name": "ViT-B-32", "state_dict": {
            "module." + k: v for k, v in whole.items()}, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}},
        "HF CLIPVisionModelWithProjection": hf,
        "HF CLIPModel": {**hf, "text_model.embeddings.token_embedding.weight": torch.randn(10, 8),
                         "text_model.final_layer_norm.weight": torch.ones(8),
                         "text_projection.weight": torch.randn(32, 8), "logit_scale": torch.tensor(4.6)},
    }


def write(state: dict, path, fmt: str):
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))  # tensors only: no wrapper dict
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("layout", ["openai visual.*", "bare tower", "whole CLIP model", "whole CLIP model, module.",
                                    "open_clip training checkpoint", "HF CLIPVisionModelWithProjection",
                                    "HF CLIPModel"])
def test_every_layout_loads_the_same_tower(tmp_path, layout, fmt):
    model = tiny_vit()
    state = layouts(model)[layout]
    if fmt == "safetensors" and "state_dict" in state:
        state = state["state_dict"]  # a safetensors file holds the tensors alone
    path = write(state, tmp_path / f"enc.{fmt}", fmt)
    loaded = load_encoder(path, TINY, "cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_the_format_is_read_from_the_bytes_not_the_name(tmp_path):
    model = tiny_vit()
    hf = hugging_face(model.visual.state_dict())
    for path, fmt in ((tmp_path / "model.pth", "safetensors"), (tmp_path / "model.safetensors", "pt")):
        loaded = load_encoder(write(hf, path, fmt), TINY, "cpu")
        assert torch.equal(loaded.visual.proj, model.visual.proj)


def hf_forward(w: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's CLIP vision forward pass written from its own names (separate q, k, v; q scaled before
    the product; the pooled class token through post_layernorm and visual_projection), QuickGELU."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], w[name + ".weight"], w[name + ".bias"])

    def lin(t, name):
        return F.linear(t, w[name + ".weight"], w.get(name + ".bias"))

    emb = F.conv2d(x, w["vision_model.embeddings.patch_embedding.weight"],
                   stride=w["vision_model.embeddings.patch_embedding.weight"].shape[-1])
    emb = emb.flatten(2).transpose(1, 2)
    cls = w["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    h = ln(torch.cat([cls, emb], 1) + w["vision_model.embeddings.position_embedding.weight"], "vision_model.pre_layrnorm")
    b, n, width = h.shape
    d = width // heads
    layers = len({k.split(".")[3] for k in w if k.startswith("vision_model.encoder.layers.")})
    for i in range(layers):
        pre = f"vision_model.encoder.layers.{i}."
        t = ln(h, pre + "layer_norm1")
        q = (lin(t, pre + "self_attn.q_proj") * d**-0.5).view(b, n, heads, d).transpose(1, 2)
        k = lin(t, pre + "self_attn.k_proj").view(b, n, heads, d).transpose(1, 2)
        v = lin(t, pre + "self_attn.v_proj").view(b, n, heads, d).transpose(1, 2)
        a = (torch.softmax(q @ k.transpose(-1, -2), -1) @ v).transpose(1, 2).reshape(b, n, width)
        h = h + lin(a, pre + "self_attn.out_proj")
        t = lin(ln(h, pre + "layer_norm2"), pre + "mlp.fc1")
        h = h + lin(t * torch.sigmoid(1.702 * t), pre + "mlp.fc2")
    return lin(ln(h[:, 0], "vision_model.post_layernorm"), "visual_projection")


def test_hugging_face_names_mean_what_the_table_maps_them_to(tmp_path):
    """Not a round trip through the loader's own table: a forward pass written from Hugging Face's names
    gives the embedding our tower gives once it loaded that file (float64)."""
    model = tiny_vit().double()
    hf = {k: v.double() if v.is_floating_point() else v for k, v in hugging_face(model.visual.state_dict()).items()}
    loaded = load_encoder(write(hf, tmp_path / "model.safetensors", "safetensors"), TINY, "cpu").double()
    x = images(2).double()
    with torch.no_grad():
        ours, reference = loaded.f(x), hf_forward(hf, x, heads=4)
        # the check can fail: with q and k swapped in one block the embedding moves far beyond the tolerance
        swapped = dict(hf, **{"vision_model.encoder.layers.0.self_attn.q_proj.weight":
                              hf["vision_model.encoder.layers.0.self_attn.k_proj.weight"],
                              "vision_model.encoder.layers.0.self_attn.k_proj.weight":
                              hf["vision_model.encoder.layers.0.self_attn.q_proj.weight"]})
        wrong = hf_forward(swapped, x, heads=4)
    assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(wrong, reference, rtol=1e-4, atol=1e-6)


def test_a_vit_file_chooses_the_tower_when_model_is_left_at_its_default(tmp_path):
    model = tiny_vit()
    path = write(hugging_face(model.visual.state_dict()), tmp_path / "model.safetensors", "safetensors")
    loaded = load_encoder(path, "clip_rn50", "cpu", by_keys=True)  # what --model resnet18 + CLIP resolves to
    assert loaded.name == TINY and torch.equal(loaded.visual.proj, model.visual.proj)
    rn = save_checkpoint(tmp_path / "rn.pth", build_model("clip_tiny"), epoch=0)
    assert load_encoder(rn, "clip_tiny", "cpu", by_keys=True).name == "clip_tiny"  # a ResNet file: unchanged


@pytest.mark.parametrize("model, by_keys, expected", [("resnet18", True, False), ("clip_rn50", False, True),
                                                      ("clip_vit_b32", False, False)])
def test_only_the_default_model_lets_the_keys_choose(model, by_keys, expected):
    cfg = MainConfig(model=model, encoder_usage_info="CLIP").validate()
    assert cfg.model_by_keys is by_keys and cfg.model == ("clip_rn50" if expected or by_keys else model)
    assert MainConfig(model="resnet18").validate().model_by_keys is False  # a 32-pixel usage: nothing to choose


def one_line(tmp_path, path, model, by_keys=False) -> str:
    with pytest.raises(UserError) as err:
        load_encoder(path, model, "cpu", flag="--pretrained_encoder", by_keys=by_keys)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--pretrained_encoder {path}")
    return message


def test_files_of_another_family_fail_in_one_line(tmp_path):
    vit = save_checkpoint(tmp_path / "vit.pth", tiny_vit(), epoch=0)
    assert file_family(torch.load(vit, weights_only=True)["state_dict"]) == "clip_vit"
    rn = save_checkpoint(tmp_path / "rn.pth", build_model("clip_tiny"), epoch=0)
    simclr = save_checkpoint(tmp_path / "simclr.pth", build_model("tiny"), epoch=0)
    message = one_line(tmp_path, vit, "clip_tiny")
    assert "holds a CLIP vision transformer" in message and "expects a CLIP RN50" in message
    assert "pass --model clip_vit_b32 or clip_vit_b16 (or leave --model at resnet18)" in message
    message = one_line(tmp_path, rn, TINY)
    assert "holds a CLIP image tower (attnpool.* keys)" in message and "expects a CLIP vision transformer" in message
    assert "pass --model clip_rn50" in message
    assert "for this file pass --encoder_usage_info CLIP" in one_line(tmp_path, vit, "tiny")
    assert "--encoder_usage_info imagenet (--model imagenet_tiny)" in one_line(tmp_path, vit, "imagenet_tiny")
    assert "holds a 32-pixel SimCLR encoder" in one_line(tmp_path, simclr, TINY, by_keys=True)


def test_vit_shapes_are_checked_against_the_towers_built_here(tmp_path):
    vit = save_checkpoint(tmp_path / "vit.pth", tiny_vit(), epoch=0)
    assert "which is --model clip_vit_tiny, not --model clip_vit_b32" in one_line(tmp_path, vit, "clip_vit_b32")
    state = tiny_vit().visual.state_dict()
    state["conv1.weight"] = torch.randn(64, 3, 14, 14)  # a ViT-?/14: no tower here has that patch
    odd = write(state, tmp_path / "odd.safetensors", "safetensors")
    message = one_line(tmp_path, odd, "clip_rn50", by_keys=True)
    assert "a CLIP vision transformer of patch 14, width 64, 2 layers, 32-d output" in message
    assert "expected the shapes of --model clip_vit_b32 or clip_vit_b16 at 224 pixels" in message


def test_hugging_face_files_without_the_projection_or_readable_bytes_fail_in_one_line(tmp_path):
    hf = hugging_face(tiny_vit().visual.state_dict())
    del hf["visual_projection.weight"]  # CLIPVisionModel: no projection to CLIP's embedding space
    message = one_line(tmp_path, write(hf, tmp_path / "model.safetensors", "safetensors"), TINY)
    assert "without visual_projection (CLIPVisionModel)" in message and "CLIPVisionModelWithProjection" in message
    good = write(hugging_face(tiny_vit().visual.state_dict()), tmp_path / "good.safetensors", "safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])  # a download cut short
    assert "not a readable safetensors file" in one_line(tmp_path, cut, TINY)
    qkv = dict(hf, **{"visual_projection.weight": torch.randn(32, 64)})
    del qkv["vision_model.encoder.layers.1.self_attn.v_proj.weight"]
    message = one_line(tmp_path, write(qkv, tmp_path / "no_v.safetensors", "safetensors"), TINY)
    assert "missing transformer.resblocks.1.attn.in_proj_weight" in message
    assert "unexpected vision_model.encoder.layers.1.self_attn" in message
