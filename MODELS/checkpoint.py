"""Safe checkpoint loading (no unpickling of arbitrary objects), key-layout detection, atomic saving."""
from __future__ import annotations

import os
import pickle
import re
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from MODELS.names import FAMILY_TEXT
from MODELS.simclr import build_model
from MODELS.visual import VisualEncoder
from UTILS.errors import fail
from UTILS.io import atomic_write
from UTILS.runtime import warn

_SHOW = 5  # how many offending keys an error message names


def load_checkpoint(path: str | os.PathLike, flag: str) -> dict:
    """``torch.load(weights_only=True)`` on the CPU; every failure becomes one UserError line."""
    path = Path(path)
    if not path.exists():
        fail(f"{flag} {path}: file not found")
    if not path.is_file():
        fail(f"{flag} {path}: not a file")
    try:
        with warnings.catch_warnings():
            # Non-checkpoint bytes make torch warn about pickle protocols before it fails; say it once.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
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
    "imagenet": "an ImageNet ResNet (conv1 / layer1..4 / fc keys, no attnpool)",
}


def file_family(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which architecture family a state dict's keys belong to: 'simclr', 'clip', 'imagenet', or None."""
    bare = [k[len("visual."):] if k.startswith("visual.") else k for k in state]
    if any(k.startswith("attnpool.") for k in bare):
        return "clip"
    if any(_SIMCLR_KEY.match(k) for k in state):
        return "simclr"
    if "conv1.weight" in bare and any(k.startswith("layer1.") for k in bare):
        return "imagenet"
    return None


def _check_family(model: nn.Module, model_name: str, state: Mapping[str, torch.Tensor], where: str) -> None:
    """A file of another family than the model fails with one line saying what each is."""
    found = file_family(state)
    own = model.family if isinstance(model, VisualEncoder) else "simclr"
    if found is None or found == own:
        return
    if own == "simclr":
        usage = "CLIP" if found == "clip" else "imagenet"
        fail(f"{where}: the file holds {_FAMILY_FOUND[found]}, but --model {model_name} expects "
             f"{_FAMILY_FOUND['simclr']}; for this file pass --encoder_usage_info {usage}")
    usage = "CLIP" if own == "clip" else "imagenet"
    fail(f"{where}: the file holds {_FAMILY_FOUND[found]}, but --encoder_usage_info {usage} (--model {model_name}) "
         f"expects {FAMILY_TEXT[own]}, with visual.* keys or the bare tower's")


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
                 flag: str = "--pretrained_encoder") -> nn.Module:
    """Build ``model_name`` and load a whole-model or backbone-only checkpoint into it, strictly.

    Returns the model on ``device`` in eval mode. A backbone-only file leaves the head as initialised.
    A 224-pixel tower takes ``visual.*`` keys (``module.visual.*`` too) or the bare tower's.
    """
    model = build_model(model_name)
    state = _extract_state_dict(load_checkpoint(path, flag), Path(path), flag)
    _check_real(state, f"{flag} {path}")
    _check_family(model, model_name, state, f"{flag} {path}")
    target, state, layout = _pick_target(model, state)
    _fill_optional(target, model, state)
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
