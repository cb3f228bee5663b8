"""Safe checkpoint loading (no unpickling of arbitrary objects; ``.safetensors`` too), key-layout detection,
atomic saving."""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from MODELS.clip_vit import from_hugging_face, is_hugging_face, vit_named_by
from MODELS.names import DEFAULT_MODEL, TOWER_TEXT, either, family_of, published, tower_kind
from MODELS.simclr import build_model
from MODELS.visual import VisualEncoder
from UTILS.errors import fail
from UTILS.io import atomic_write
from UTILS.runtime import warn

_SHOW = 5  # how many offending keys an error message names


def load_checkpoint(path: str | os.PathLike, flag: str) -> dict:
    """``torch.load(weights_only=True)`` on the CPU, or the ``safetensors`` package's reader for a safetensors
    file (told by its bytes, not its name); every failure becomes one UserError line."""
    path = Path(path)
    if not path.exists():
        fail(f"{flag} {path}: file not found")
    if not path.is_file():
        fail(f"{flag} {path}: not a file")
    if _is_safetensors(path):
        return _load_safetensors(path, flag)
    try:
        with warnings.catch_warnings():
            # Non-checkpoint bytes make torch warn about pickle protocols before it fails; say it once.
            warnings.simplefilter("ignore", UserWarning)
            # an open file, not the path: torch.load would pick the safetensors reader by a .safetensors name
            with open(path, "rb") as handle:
                obj = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        _fail_unpickling(path, flag, str(exc))
    except RuntimeError:  # a zip archive that is not a torch checkpoint (an npz, say), or a cut-off one
        why = "it is an npz archive" if zipfile.is_zipfile(path) and _is_npz(path) else \
            "truncated, or not written by torch.save"
        fail(f"{flag} {path}: not a PyTorch checkpoint ({why})")
    except (KeyError, EOFError, ValueError, IndexError, TypeError, AttributeError):
        fail(f"{flag} {path}: not a PyTorch checkpoint (unreadable, empty or truncated file)")
    except OSError as exc:
        fail(f"{flag} {path}: cannot read ({exc.strerror or exc})")
    if not isinstance(obj, dict):
        fail(f"{flag} {path}: not a checkpoint dict (found {type(obj).__name__})")
    return obj


def _fail_unpickling(path: Path, flag: str, message: str) -> None:
    """weights_only refuses both malicious/legacy pickles (a GLOBAL) and garbage bytes; tell which."""
    match = re.search(r"GLOBAL\s+([\w.]+)", message)
    if match or "global" in message.lower():
        what = f" (e.g. {match.group(1)})" if match else ""
        fail(f"{flag} {path}: refused: the file holds pickled Python objects{what}; "
             "only plain tensors, numbers, strings and containers of them are accepted")
    fail(f"{flag} {path}: not a PyTorch checkpoint (unreadable pickle stream)")


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian) and then ``{``; a torch
    file starts with a zip's ``PK`` or a pickle's protocol byte, which read as a length far beyond the file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False  # torch.load's attempt reports it
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + struct.unpack("<Q", head[:8])[0] <= path.stat().st_size


def _load_safetensors(path: Path, flag: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (a format that holds tensors only: nothing in it can run)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        fail(f"{flag} {path}: a safetensors file, but the safetensors package is not installed "
             "(pip install -r requirements.txt)")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, json.JSONDecodeError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        fail(f"{flag} {path}: not a readable safetensors file ({reason or type(exc).__name__})")
    except OSError as exc:
        fail(f"{flag} {path}: cannot read ({exc.strerror or exc})")


def _is_npz(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _extract_state_dict(ckpt: dict, path: Path, flag: str) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` and strip DataParallel's ``module.`` prefix."""
    state = ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        what = f"non-tensor entries such as {bad[0]!r}" if bad else "no tensors"
        fail(f"{flag} {path}: expected a state dict (or a dict with 'state_dict'); found {what}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# Keys of a whole CLIP model that are not its image tower: OpenAI's and open_clip's text side (open_clip's
# CustomTextCLIP keeps it under text.*), the logit scale (and SigLIP-style bias).
_CLIP_TEXT = re.compile(r"^(token_embedding\.|positional_embedding$|transformer\.|ln_final\.|text_projection$|"
                        r"logit_scale$|logit_bias$|text\.)")


def _clip_layout(state: dict[str, torch.Tensor], path: Path, flag: str) -> tuple[dict[str, torch.Tensor], str]:
    """A CLIP file's image tower under OpenAI's names, and what the file was (for messages).

    Hugging Face ``CLIPVisionModelWithProjection`` / ``CLIPModel`` (``vision_model.*``, ``visual_projection``)
    are renamed through ``MODELS.clip_vit.HF_TABLE`` to the bare tower's names; a whole OpenAI or open_clip
    CLIP model (``visual.*`` beside the text side) keeps its ``visual.*`` keys only. Anything else is
    returned as it is."""
    if is_hugging_face(state):
        if "visual_projection.weight" not in state:
            fail(f"{flag} {path}: a Hugging Face CLIP vision model without visual_projection (CLIPVisionModel); "
                 f"expected the file of a CLIPVisionModelWithProjection or a CLIPModel, whose projection gives "
                 f"CLIP's image embedding")
        return from_hugging_face(state), "Hugging Face CLIP (vision_model.*)"
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    rest = [k for k in state if not k.startswith("visual.")]
    if visual and rest and all(_CLIP_TEXT.match(k) for k in rest):
        return visual, "whole CLIP model (visual.* kept)"
    return state, ""


def _pick_target(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[nn.Module, dict, str]:
    """Where the file's keys fit best: the whole model, ``model.f`` or ``model.f.f`` (a SimCLR), or the
    whole model (``visual.*``) or the bare tower (a :class:`VisualEncoder`: BadEncoder's backdoored and
    clean files; BadEncoder tells them apart by 'clean' in the path, here the keys decide).

    Also tries whole-model names without a head (``f.f.*`` only) as a backbone. The best fit shares
    the most keys with the module, then leaves the fewest of its keys missing.
    Returns (module, state renamed for it, description).
    """
    if isinstance(model, VisualEncoder):
        candidates = [(model, state, "whole model (visual.*)"), (model.visual, state, "bare image tower")]
    else:
        strip_f = {(k[2:] if k.startswith("f.") else k): v for k, v in state.items()}
        candidates = [(model, state, "whole model"), (model.f, state, "backbone (model.f)"),
                      (model.f.f, state, "backbone (model.f.f)"),
                      (model.f, strip_f, "backbone (whole-model names)")]

    def fit(candidate: tuple[nn.Module, dict, str]) -> tuple[int, int]:
        expected, found = set(candidate[0].state_dict()), set(candidate[1])
        shared = len(expected & found)
        # Nothing shared: all tie, and max keeps the first (whole model) for the error message.
        return (shared, -len(expected - found)) if shared else (0, 0)

    return max(candidates, key=fit)


_SIMCLR_KEY = re.compile(r"^(f\.)?(f\.)?\d+\.|^g\.\d+\.")
# family -> what a file of that family is, for the one-line mismatch error
_FAMILY_FOUND = {
    "simclr": "a 32-pixel SimCLR encoder (f.f.* / g.* keys)",
    "clip": "a CLIP image tower (attnpool.* keys)",
    "clip_vit": "a CLIP vision transformer (class_embedding / transformer.resblocks.* keys)",
    "imagenet": "an ImageNet ResNet (conv1 / layer1..4 / fc keys, no attnpool)",
}


def file_family(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which kind of encoder a state dict's keys belong to: 'simclr', 'clip' (CLIP's ResNet), 'clip_vit' (CLIP's
    vision transformer, OpenAI's or Hugging Face's names), 'imagenet', or None."""
    bare = [k[len("visual."):] if k.startswith("visual.") else k for k in state]
    if any(k.startswith("attnpool.") for k in bare):
        return "clip"
    if "class_embedding" in bare or is_hugging_face(state):
        return "clip_vit"
    if any(_SIMCLR_KEY.match(k) for k in state):
        return "simclr"
    if "conv1.weight" in bare and any(k.startswith("layer1.") for k in bare):
        return "imagenet"
    return None


def _check_family(model: nn.Module, model_name: str, state: Mapping[str, torch.Tensor], where: str) -> None:
    """A file of another family (or another tower of the family) than the model fails with one line saying
    what each is, and which flags read the file."""
    found = file_family(state)
    own = model.kind if isinstance(model, VisualEncoder) else "simclr"
    if found is None or found == own:
        return
    if own == "simclr":
        usage = "imagenet" if found == "imagenet" else "CLIP"
        fail(f"{where}: the file holds {_FAMILY_FOUND[found]}, but --model {model_name} expects "
             f"{_FAMILY_FOUND['simclr']}; for this file pass --encoder_usage_info {usage}")
    usage = "CLIP" if model.family == "clip" else "imagenet"
    hint = ""
    if found in ("clip", "clip_vit") and model.family == "clip":  # the same usage, the other tower
        towers = tuple(m for m in published("clip") if tower_kind(m) == found)
        hint = f"; for this file pass --model {either(towers)} (or leave --model at {DEFAULT_MODEL})"
    fail(f"{where}: the file holds {_FAMILY_FOUND[found]}, but --encoder_usage_info {usage} (--model {model_name}) "
         f"expects {TOWER_TEXT[own]}, with visual.* keys or the bare tower's{hint}")


def _tower_by_keys(model_name: str, state: Mapping[str, torch.Tensor], by_keys: bool, where: str) -> str:
    """The CLIP architecture a file's keys name where they may choose it: ``by_keys`` (``--model`` left at its
    default) and a vision transformer in a CLIP usage. A ViT of other shapes than the ones built here fails in
    one line; so does ``--model clip_vit_b32`` given a ViT-B/16 file (and the reverse). Else ``model_name``."""
    if file_family(state) != "clip_vit" or family_of(model_name) != "clip":
        return model_name
    own = tower_kind(model_name)
    if own != "clip_vit" and not by_keys:
        return model_name  # _check_family names the flags that read it
    bare = {k[len("visual."):] if k.startswith("visual.") else k: v for k, v in state.items()}
    named, shapes = vit_named_by(bare)
    if named is None and own != "clip_vit":
        vits = tuple(m for m in published("clip") if tower_kind(m) == "clip_vit")
        fail(f"{where}: the file holds a CLIP vision transformer of {shapes}; expected the shapes of "
             f"--model {either(vits)} at 224 pixels")
    if named is not None and own == "clip_vit" and named != model_name:
        fail(f"{where}: the file holds a CLIP vision transformer of {shapes}, which is --model {named}, "
             f"not --model {model_name}")
    return named or model_name


def _fill_optional(target: nn.Module, model: nn.Module, state: dict) -> None:
    """Tower keys the forward pass never reads (ImageNet's ``fc``) may be absent: keep the model's own."""
    if not isinstance(model, VisualEncoder):
        return
    prefix = "visual." if target is model else ""
    own = target.state_dict()
    for key in model.optional_keys:
        if prefix + key not in state:
            state[prefix + key] = own[prefix + key].clone()


def _check_real(state: dict[str, torch.Tensor], where: str) -> None:
    """Complex weights would lose their imaginary part in load_state_dict (with a multi-line warning)."""
    complex_ = [k for k, v in state.items() if v.is_complex()]
    if complex_:
        k = complex_[0]
        fail(f"{where}: {k} holds complex values ({str(state[k].dtype).replace('torch.', '')}); expected real "
             f"numbers ({len(complex_)} such tensor(s) in all)")


def _check_keys(target: nn.Module, state: dict, where: str) -> None:
    """Strict key and shape check with one-line messages; fills absent BatchNorm step counters."""
    expected = target.state_dict()
    for key, value in expected.items():
        # Checkpoints from old PyTorch lack num_batches_tracked; it never affects the forward pass.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        fail(f"{where}: {'; '.join(parts)} (maybe another --model?)")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        fail(f"{where}: shape mismatch at {k}: file {tuple(state[k].shape)} vs model "
             f"{tuple(expected[k].shape)} ({len(wrong)} in all; maybe another --model?)")


def load_error_reason(exc: BaseException, limit: int = 240) -> str:
    """torch's load_state_dict error in one line, without its header ("Error(s) in loading state_dict for
    SimCLR:"), which alone says nothing; cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = " ".join(lines) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(keys: list[str]) -> str:
    return f"{', '.join(keys[:_SHOW])}{', ...' if len(keys) > _SHOW else ''} ({len(keys)} in all)"


def load_encoder(path: str | os.PathLike, model_name: str, device: torch.device | str,
                 flag: str = "--pretrained_encoder", *, by_keys: bool = False) -> nn.Module:
    """Build ``model_name`` and load a whole-model or backbone-only checkpoint into it, strictly.

    Returns the model on ``device`` in eval mode. A backbone-only file leaves the head as initialised.
    A 224-pixel tower takes ``visual.*`` keys (``module.visual.*`` too) or the bare tower's; a CLIP tower
    also a whole CLIP model's and Hugging Face's names (:func:`_clip_layout`). ``.pt``/``.pth`` files are
    read with ``weights_only=True``, safetensors files with the safetensors package. With ``by_keys``
    (``--model`` left at its default) a CLIP vision transformer's keys choose the architecture instead of
    ``model_name`` (the RN50): the model's ``name`` says which was built.
    """
    state = _extract_state_dict(load_checkpoint(path, flag), Path(path), flag)
    _check_real(state, f"{flag} {path}")
    state, found_layout = _clip_layout(state, Path(path), flag)
    model_name = _tower_by_keys(model_name, state, by_keys, f"{flag} {path}")
    model = build_model(model_name)
    _check_family(model, model_name, state, f"{flag} {path}")
    target, state, layout = _pick_target(model, state)
    _fill_optional(target, model, state)
    layout = found_layout or layout
    where = f"{flag} {path}: {layout} checkpoint does not match --model {model_name}"
    _check_keys(target, state, where)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype oddities the checks above do not cover
        fail(f"{where}: {load_error_reason(exc)}")
    return model.to(device).eval()


def _check_plain(value, where: str) -> None:
    """Everything saved must load back under weights_only=True."""
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"save_checkpoint: {where} is a {type(value).__name__}; "
                    "only tensors, numbers, strings, lists and dicts can be saved")


def checkpoint_content(model: nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None,
                       **extra) -> dict:
    """``{"state_dict", "epoch", ["optimizer"], **extra}``, checked to load back under weights_only."""
    content: dict = {"state_dict": model.state_dict(), "epoch": int(epoch)}
    if optimizer is not None:
        content["optimizer"] = optimizer.state_dict()
    content.update(extra)
    _check_plain(content, "checkpoint")
    return content


def save_checkpoint(path: str | os.PathLike, model: nn.Module, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None, **extra) -> Path:
    """Atomically save ``{"state_dict", "epoch", ["optimizer"], **extra}``, loadable with weights_only."""
    content = checkpoint_content(model, epoch, optimizer, **extra)
    return atomic_write(path, lambda handle: torch.save(content, handle))


def snapshot(value):
    """A copy of ``value`` that later in-place training cannot change: tensors copied to the CPU
    (layout kept), lists and dicts rebuilt, everything else shared (immutable)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


class BackgroundSaver:
    """Writes checkpoints on a worker thread, one at a time, while the next round computes.

    :meth:`save` snapshots everything first (the caller may change the weights right after), waits
    for the previous write, then starts this one, still through :func:`atomic_write`: a crash leaves
    the previous file whole. :meth:`wait` must run before the file is read or the program ends; an
    error of the worker (disk full, read-only folder) is raised there, as the one-line error it was.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, path: str | os.PathLike, model: nn.Module, epoch: int,
             optimizer: torch.optim.Optimizer | None = None, **extra) -> None:
        """Snapshot the checkpoint now (CPU copies) and write it atomically in a thread, after the previous write
        ends."""
        content = snapshot(checkpoint_content(model, epoch, optimizer, **extra))
        self.wait()
        # not a daemon: an interpreter that exits early still finishes the write it started
        self._thread = threading.Thread(target=self._write, args=(Path(path), content), name="checkpoint-writer")
        self._thread.start()

    def _write(self, path: Path, content: dict) -> None:
        try:
            atomic_write(path, lambda handle: torch.save(content, handle))
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the write in flight is done; raise its error, if any (once)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """:meth:`wait` for a program already on its way out with another error: a failed write is
        printed as a warning instead of replacing that error."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - reported, the caller's own error goes on
            warn(f"the last background write failed too: {exc}")


def sanity_check_frozen(model: nn.Module, reference_state: Mapping[str, torch.Tensor]) -> None:
    """Assert every parameter and buffer still equals ``reference_state`` (a cloned state dict).

    Raises AssertionError naming the first entry that changed; used to prove a frozen model stayed frozen.
    """
    for key, value in model.state_dict().items():
        assert key in reference_state, f"{key} is not in the reference state"
        ref = reference_state[key]
        assert torch.equal(value.detach().cpu(), ref.detach().cpu()), f"{key} changed although it is frozen"
