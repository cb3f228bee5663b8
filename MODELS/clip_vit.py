"""CLIP's vision transformer (OpenAI CLIP's ``VisionTransformer``) for ViT-B/32 and ViT-B/16 at 224 pixels,
and the one table that reads Hugging Face's names for it.

Key names are OpenAI's, which open_clip keeps: ``conv1`` (the patch embedding, no bias),
``class_embedding`` (W,), ``positional_embedding`` (grid**2 + 1, W), ``ln_pre``, ``transformer.resblocks.{i}``
(``ln_1``, ``attn.in_proj_weight``/``in_proj_bias`` = q, k, v stacked, ``attn.out_proj``, ``ln_2``,
``mlp.c_fc``, ``mlp.c_proj``; QuickGELU between them), ``ln_post`` and ``proj`` (W, D): the class token's
output, layer-normed, times ``proj`` is the embedding. Hugging Face's ``CLIPVisionModelWithProjection``
and ``CLIPModel`` hold the same weights under other names (``vision_model.*`` + ``visual_projection``),
with q, k, v apart and the projection as a Linear (D, W): :data:`HF_TABLE` maps them.
Written here in torch (docs/DESIGN.md says why); nothing is downloaded.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from MODELS.visual import VisualEncoder

SIDE = 224
# name -> (patch, width, layers, heads, output dim). OpenAI derives heads = width // 64; the test-only tiny
# tower (same key structure, no published file) is too narrow for that rule, so heads are stated.
_ARCH = {
    "clip_vit_b32": (32, 768, 12, 12, 512),
    "clip_vit_b16": (16, 768, 12, 12, 512),
    "clip_vit_tiny": (32, 64, 2, 4, 32),
}


class QuickGELU(nn.Module):
    """CLIP's activation, x * sigmoid(1.702 x) (OpenAI's models were trained with it, not with exact GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise, any shape."""
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``torch.nn.MultiheadAttention``'s parameter names (OpenAI's keys)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # q, k, v stacked
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) -> (B, N, W): every token attends over all N (no mask: the image tower has none)."""
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3W)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # each (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d), softmax(q k^T / sqrt(d)) v
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a 4x QuickGELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) -> (B, N, W)."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``resblocks``: the blocks in order (the name OpenAI's keys carry)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) -> (B, N, W)."""
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """Patch embedding + class token + positions, ``ln_pre``, the blocks, ``ln_post`` of the class token, ``proj``."""

    def __init__(self, patch: int, width: int, layers: int, heads: int, output_dim: int,
                 input_resolution: int = SIDE) -> None:
        super().__init__()
        self.output_dim, self.input_resolution = output_dim, input_resolution
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        # OpenAI's CLIP.initialize_parameters, so a random tower's features differ between images as a trained one's do
        proj_std, attn_std, fc_std = scale * (2 * layers) ** -0.5, scale, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 224, 224), normalised -> embeddings (B, output_dim) from the class token."""
        x = self.conv1(x.to(self.conv1.weight.dtype))  # (B, W, g, g), g = 224 / patch
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, g*g + 1, W)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, output_dim)


def build_clip_vit(name: str) -> VisualEncoder:
    """``clip_vit_b32``, ``clip_vit_b16`` (or the test-only ``clip_vit_tiny``), randomly initialised, on the CPU."""
    patch, width, layers, heads, output_dim = _ARCH[name]
    tower = VisionTransformer(patch, width, layers, heads, output_dim)
    return VisualEncoder(tower, output_dim, SIDE, "clip", name=name, kind="clip_vit")


def vit_named_by(tower: Mapping[str, torch.Tensor]) -> tuple[str | None, str]:
    """(the name in :data:`_ARCH` whose shapes a bare tower state dict has, or None; those shapes in words).

    Read from ``conv1.weight`` (W, 3, p, p), ``positional_embedding`` (tokens, W), ``proj`` (W, D) and the
    number of ``transformer.resblocks``; the heads leave no trace in the weights (OpenAI: W // 64)."""
    try:
        width, _, patch, _ = tower["conv1.weight"].shape
        tokens, out = tower["positional_embedding"].shape[0], tower["proj"].shape[1]
    except (KeyError, ValueError, IndexError):
        return None, "a vision transformer without readable conv1 / positional_embedding / proj shapes"
    layers = len({k.split(".")[2] for k in tower if k.startswith("transformer.resblocks.")})
    words = f"patch {patch}, width {width}, {layers} layers, {out}-d output, {tokens} tokens"
    for name, (p, w, n, _, d) in _ARCH.items():
        if (p, w, n, d, (SIDE // p) ** 2 + 1) == (patch, width, layers, out, tokens):
            return name, words
    return None, words


# Hugging Face's name -> OpenAI's (bare tower), and how the value changes: 'copy', 'T' (transposed: a Linear's
# (D, W) weight is OpenAI's (W, D) proj), or 'qkv' (q, k, v stacked, in this order, into one in_proj tensor).
# {i} is a block index, {p} 'weight' or 'bias', {qkv} one of q, k, v.
HF_TABLE = (
    ("vision_model.embeddings.class_embedding", "class_embedding", "copy"),
    ("vision_model.embeddings.patch_embedding.weight", "conv1.weight", "copy"),
    ("vision_model.embeddings.position_embedding.weight", "positional_embedding", "copy"),
    ("vision_model.pre_layrnorm.{p}", "ln_pre.{p}", "copy"),  # sic: Hugging Face's spelling
    ("vision_model.encoder.layers.{i}.layer_norm1.{p}", "transformer.resblocks.{i}.ln_1.{p}", "copy"),
    ("vision_model.encoder.layers.{i}.self_attn.{qkv}_proj.{p}", "transformer.resblocks.{i}.attn.in_proj_{p}", "qkv"),
    ("vision_model.encoder.layers.{i}.self_attn.out_proj.{p}", "transformer.resblocks.{i}.attn.out_proj.{p}", "copy"),
    ("vision_model.encoder.layers.{i}.layer_norm2.{p}", "transformer.resblocks.{i}.ln_2.{p}", "copy"),
    ("vision_model.encoder.layers.{i}.mlp.fc1.{p}", "transformer.resblocks.{i}.mlp.c_fc.{p}", "copy"),
    ("vision_model.encoder.layers.{i}.mlp.fc2.{p}", "transformer.resblocks.{i}.mlp.c_proj.{p}", "copy"),
    ("vision_model.post_layernorm.{p}", "ln_post.{p}", "copy"),
    ("visual_projection.weight", "proj", "T"),
)
# Hugging Face keys that are not weights of the image tower: the position indices (a buffer older files
# hold) and, in a whole CLIPModel, the text side.
HF_SKIPPED = re.compile(r"^(vision_model\.embeddings\.position_ids|text_model\..*|text_projection\.weight|logit_scale)$")
_FIELDS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "qkv": r"(?P<qkv>[qkv])"}
_HF_RULES = [(re.compile("^" + re.escape(hf).replace(r"\{", "{").replace(r"\}", "}").format(**_FIELDS) + "$"),
              ours, how) for hf, ours, how in HF_TABLE]


def is_hugging_face(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a Hugging Face CLIP vision state dict (``vision_model.*`` keys)."""
    return any(k.startswith("vision_model.") for k in state)


def from_hugging_face(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ``CLIPVisionModelWithProjection`` / ``CLIPModel`` state dict under OpenAI's bare tower names.

    Keys the table does not know are kept as they are (the strict check names them); so are the q, k, v of a
    block that lacks one of them. The text side of a ``CLIPModel`` and ``position_ids`` are dropped."""
    out: dict[str, torch.Tensor] = {}
    stacks: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if HF_SKIPPED.match(key):
            continue
        for rule, ours, how in _HF_RULES:
            match = rule.match(key)
            if match is None:
                continue
            name = ours.format(**match.groupdict())
            if how == "qkv":
                stacks.setdefault(name, {})[match["qkv"]] = (key, value)
            else:
                out[name] = value.t() if how == "T" else value
            break
        else:
            out[key] = value
    for name, parts in stacks.items():
        if set(parts) == {"q", "k", "v"}:
            out[name] = torch.cat([parts[x][1] for x in "qkv"])
        else:
            out.update({key: value for key, value in parts.values()})
    return out
