"""What every run shares: the start of a run (seed, device, --amp check, normalisation, writable folders,
output guard), the ground-truth trigger, settings files, resume fingerprints and non-finite checks."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from DATASETS.loaders import split_files
from DATASETS.stats import UsageInfo, get_usage, normalize
from DATASETS.triggers import load_trigger
from EVALUATION.features import feature_problem
from INVERSION.hardening import first_nonfinite
from INVERSION.inversion import frozen
from MODELS.checkpoint import load_encoder, load_error_reason
from MODELS.precision import check_amp, with_precision
from Trainer.filenames import DEFAULT_TRIGGER, INT, name_matches
from UTILS.distributed import agree_on, from_main, start
from UTILS.errors import fail
from UTILS.io import atomic_write, ensure_writable_dir, file_digest, remove_stale_temps
from UTILS.runtime import log, seed_everything
from UTILS.seeds import global_seed, loader_reseed




def reseed_after_loading(ratio: float, seed_index: int) -> None:
    """Right after the training share is loaded: the paper's code reseeds torch with ``LOADER_SEED`` there when
    ``ratio`` < 1, so every later torch draw of its stage ignores ``--seed``. ``--seed 0`` does the same here;
    ``--seed N`` seeds ``LOADER_SEED + seed_offset(N)`` (``UTILS.seeds.loader_reseed``), so other seeds still give
    other runs. ``ratio`` 1: no reseed (the stream of ``--seed``, as there)."""
    if ratio < 1:
        torch.manual_seed(loader_reseed(seed_index))


@dataclasses.dataclass(frozen=True)
class Outputs:
    """One output folder of a stage: the config field that names it (``log_dir`` -> flag ``--log_dir``),
    this stage's own files there (exact names, ``{int}`` for a number: :func:`name_matches`; none: the folder is only made writable, not guarded)
    and the fixed names it also writes there (an input under such a name is refused)."""

    field: str
    patterns: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """The flag that names this folder (``--log_dir`` for the field ``log_dir``)."""
        return "--" + self.field


@dataclasses.dataclass(frozen=True)
class RunStart:
    """What :func:`start_run` set up: the device, the encoder's normalisation, the output folders
    ({field: folder}) and an earlier run's files of this stage in each guarded folder ({field: files})."""

    device: torch.device
    usage: UsageInfo
    dirs: dict[str, Path]
    earlier: dict[str, list[Path]]


def start_run(cfg, folders: Sequence[Outputs], inputs: Mapping[str, str] | None = None) -> RunStart:
    """The preamble of every stage, in this order: seed (``--seed``, an index into ``cfg.SEEDS`` where the
    original takes it so), device, ``--amp`` check, normalisation of ``--encoder_usage_info``, every output
    folder made writable, then each guarded against an earlier run's files (:func:`guard_outputs`; nothing is
    removed yet: --overwrite removes them once the inputs proved usable) and against holding an input.
    Under torchrun the device is this rank's and the folders are rank 0's decision (its disk)."""
    seed_everything(global_seed(cfg.seed, cfg.SEEDS))
    device = start(cfg.device, cfg.gpu)  # one process: UTILS.runtime.resolve_device
    agree_on(rank_settings(cfg))  # under torchrun: every rank the same flags, or every rank stops here
    check_amp(getattr(cfg, "amp", False), device)
    usage = get_usage(cfg.encoder_usage_info)
    dirs, earlier = from_main(lambda: _prepare_folders(cfg, folders, inputs))
    return RunStart(device, usage, dirs, earlier)


def _prepare_folders(cfg, folders: Sequence[Outputs], inputs: Mapping[str, str] | None
                     ) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    dirs: dict[str, Path] = {}
    for out in folders:  # a folder may be listed twice: made writable first, guarded later in that order
        if out.field not in dirs:
            dirs[out.field] = ensure_writable_dir(getattr(cfg, out.field), out.flag)
    earlier = {out.field: guard_outputs(dirs[out.field], out.patterns, out.flag, overwrite=cfg.overwrite,
                                        resume=cfg.resume, remove=False, inputs=inputs, writes=out.writes)
               for out in folders if out.patterns}
    return dirs, earlier



def load_ground_truth(path: str, size: int, flag: str = "--trigger_file"):
    """The injected trigger, used for monitoring only. A missing *default* file just turns ASR off;
    a path the user named that is missing is an error."""
    if not path:
        return None
    if path == DEFAULT_TRIGGER and not Path(path).is_file():
        log(f"note: {flag} {path} not found; ASR monitoring is off "
            f"(create it with: python -m DATASETS.triggers --out {DEFAULT_TRIGGER})")
        return None
    return load_trigger(path, flag, expected_size=size)


# How a run was launched, not what it computes: left out of setting.txt (so a resumed run writes the
# same file as an uninterrupted one) and out of the resume fingerprint. --epochs may grow on --resume.
LAUNCH_FLAGS = ("overwrite", "resume")
NOT_FINGERPRINTED = LAUNCH_FLAGS + ("gpu", "device", "data_dir", "log_dir", "results_dir", "epochs")


# Flags that may differ between the processes of one torchrun run: each node's device and paths (only rank 0
# writes into the output folders; each node reads its own copy of the data).
PER_RANK_FLAGS = ("gpu", "device", "data_dir", "log_dir", "results_dir")


def rank_settings(config) -> dict:
    """Every flag that must be the same on every rank (all but :data:`PER_RANK_FLAGS`)."""
    items = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    return {k: v for k, v in items.items() if k not in PER_RANK_FLAGS}


def write_settings(path: Path, config) -> None:
    """setting.txt: every option of the run, one ``name: value`` per line (the original's format)."""
    items = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    text = "".join(f"{k}: {v}\n" for k, v in items.items() if k not in LAUNCH_FLAGS)
    # surrogateescape: a path given in bytes that are not UTF-8 is written back as those same bytes
    atomic_write(path, lambda h: h.write(text.encode(errors="surrogateescape")))


def fmt_metrics(row: dict) -> str:
    """``row`` as one JSON line, floats rounded to 4 decimals (the stages' log lines)."""
    return json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


def guard_outputs(directory: Path, patterns: Sequence[str], flag: str, *, overwrite: bool, resume: bool,
                  remove: bool = True, inputs: Mapping[str, str] | None = None,
                  writes: Sequence[str] = ()) -> list[Path]:
    """Never overwrite an earlier run's outputs silently, and never touch an input.

    Only this stage's own files count (the README's recipe shares one log dir between stages).
    ``inputs`` ({flag: path}) are refused first, whatever the switches, when one of them lies in
    ``directory`` under a name this stage writes there (``patterns`` plus the fixed names ``writes``).
    Without --resume/--overwrite an earlier run's files are refused; with --overwrite they are removed
    so no stale file of a longer earlier run survives (``remove=False`` leaves that to
    :func:`remove_outputs`, called once every input has been checked); with --resume they are kept.
    """
    protect_inputs(directory, tuple(patterns) + tuple(writes), flag, inputs or {})
    remove_stale_temps(directory)  # half-written files of a killed run (the real files are whole)
    found = stage_files(directory, patterns)
    if found and not (overwrite or resume):
        names = ", ".join(p.name for p in found[:3]) + (" ..." if len(found) > 3 else "")
        fail(f"{flag} {directory}: holds outputs of an earlier run ({names}); "
             f"pass --resume to continue it or --overwrite to replace it")
    if overwrite and remove:
        remove_outputs(found)
    return found


def stage_files(directory: Path, templates: Sequence[str]) -> list[Path]:
    """The files in ``directory`` named exactly as one of ``templates`` (see :func:`name_matches`), sorted."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if any(name_matches(p.name, t) for t in templates) and p.is_file())


def protect_inputs(directory: Path, names: Sequence[str], flag: str, inputs: Mapping[str, str]) -> None:
    """Refuse an input file that this stage could overwrite or delete: one that lies in ``directory``
    (directly, or as the target of a symbolic link) under a name matching one of ``names``."""
    folder = Path(directory).resolve()
    for input_flag, value in inputs.items():
        if not value:
            continue
        given = Path(value)
        for candidate in (Path(os.path.abspath(given)), given.resolve()):
            if candidate.parent.resolve() != folder:
                continue
            clash = next((n for n in names if name_matches(candidate.name, n)), None)
            if clash is not None:
                fail(f"{input_flag} {value}: is an input of this run, but lies in {flag} {directory} under a name "
                     f"this stage writes there ({clash.replace(INT, '<n>')}); inputs are never overwritten or deleted, so move the "
                     f"file or choose another {flag}")


def remove_outputs(paths: Sequence[Path]) -> None:
    """--overwrite: delete an earlier run's files (after the new run's inputs proved usable)."""
    for p in paths:
        p.unlink(missing_ok=True)


INPUTS_KEY = "inputs"  # the fingerprint's record of the input files' contents (input_record)


def run_fingerprint(config, inputs: Mapping | None = None) -> dict:
    """The settings a checkpoint's numbers depend on; stored in resume checkpoints, compared on --resume.
    ``inputs`` (:func:`input_record`) adds what the run's input files held."""
    items = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    found = {k: v for k, v in items.items() if k not in NOT_FINGERPRINTED}
    return found if inputs is None else {**found, INPUTS_KEY: dict(inputs)}


def input_record(files: Mapping[str, str | Path | Mapping[str, Path] | None]) -> dict:
    """{flag: {name: [size, sha256]}} of a run's input files, for --resume to compare (:func:`check_inputs`).

    ``files``: {flag: one path (named as given) | {name: path} (a dataset's files by name under --data_dir)
    | None or "" (no such input)}. Contents decide, not paths or times: a copy of the same file in another
    place is the same input, a file replaced at the same path is not."""
    record = {}
    for flag, value in files.items():
        if not value:
            continue
        named = dict(value) if isinstance(value, Mapping) else {str(value): Path(value)}
        record[flag] = {name: file_digest(path) for name, path in sorted(named.items())}
    return record


def monitor_files(task: str, data_dir: str, size: int) -> dict[str, Path]:
    """The files the kNN monitor reads: both splits of the downstream task (for :func:`input_record`)."""
    return {**split_files(task, "train", data_dir, size), **split_files(task, "test", data_dir, size)}


def input_change(saved, now) -> str | None:
    """The first input file whose record differs between ``saved`` and ``now`` (:func:`input_record`), as
    ``<flag> <name> (<what changed>)``; None when they agree or ``saved`` predates the records."""
    if not isinstance(saved, Mapping) or not isinstance(now, Mapping):
        return None  # a state written before input files were recorded: its settings are all there is to check
    for flag in sorted(set(saved) | set(now)):
        before, after = saved.get(flag) or {}, now.get(flag) or {}
        for name in sorted(set(before) | set(after)):
            a, b = before.get(name), after.get(name)
            if a is None and b is None or a is not None and b is not None and list(a) == list(b):
                continue
            if a is None or b is None:
                change = "not read when the run began" if a is None else "read when the run began, not now"
            elif a[0] != b[0]:
                change = f"{a[0]} bytes when the run began, {b[0]} now"
            else:
                change = f"same size, other contents: sha256 {a[1][:12]}... when the run began, {b[1][:12]}... now"
            return f"{flag} {name} ({change})"
    return None


def check_inputs(saved, now, path: Path) -> None:
    """Refuse to resume from a run that began from other input files (the state would mix the two)."""
    change = input_change(saved, now)
    if change is not None:
        fail(f"--resume {path}: {change} is not the file the run began from; resuming would mix two inputs; "
             f"restore that file, or pass --overwrite to start over")


def check_fingerprint(saved, config, path: Path, inputs: Mapping | None = None) -> None:
    """Refuse to resume a checkpoint written with other settings, or from other input files (``inputs``:
    this run's :func:`input_record`), since the numbers would silently mix."""
    if not isinstance(saved, dict):
        fail(f"--resume {path}: holds no record of the run's settings (not written by this program?); "
             f"pass --overwrite to start over")
    saved = dict(saved)
    saved_inputs = saved.pop(INPUTS_KEY, None)
    now = run_fingerprint(config)
    # A flag added after the checkpoint was written counts as its default there (e.g. --amp: off).
    defaults = ({f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
                if dataclasses.is_dataclass(config) else {})
    saved = {**{k: defaults[k] for k in now if k not in saved and k in defaults}, **saved}
    diff = [f"--{k.replace('knn_', 'knn-')} {saved.get(k)!r} there, {now.get(k)!r} now"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        fail(f"--resume {path}: was written by a run with other settings ({'; '.join(diff[:3])}"
             f"{'; ...' if len(diff) > 3 else ''}); repeat the original flags, or pass --overwrite to start over")
    check_inputs(saved_inputs, inputs, path)


def load_training_state(state: dict, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        what: str = "model/optimiser", also: Callable[[], None] | None = None) -> None:
    """--resume: a checkpoint's model and optimiser state (and ``also()``: the rest a stage restores), or one
    line saying it does not fit this ``what``."""
    try:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if also is not None:
            also()
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        fail(f"--resume {path}: does not fit this {what} ({load_error_reason(exc)}); pass --overwrite to start over")


def check_finite_model(model: torch.nn.Module, path: str, flag: str) -> None:
    """An encoder with NaN/inf weights or buffers would only produce NaN losses later; say so up front."""
    name = first_nonfinite(model.state_dict().items())
    if name is not None:
        fail(f"{flag} {path}: the checkpoint holds NaN or inf values (first in {name}); "
             f"it cannot be used as an encoder")


BROKEN_CHECK_IMAGES = 64  # clean images whose features are checked before any verdict or training


def refuse_broken_encoder(backbone: torch.nn.Module, images: torch.Tensor, usage: UsageInfo, path: str, flag: str,
                          amp: bool = False) -> None:
    """One line and no verdict, trigger or classifier for an encoder whose features of the first clean
    ``images`` (N, 3, H, W) cannot be judged (:func:`EVALUATION.features.feature_problem`)."""
    if images.shape[0] < 2:
        return
    with torch.no_grad(), frozen(backbone):  # eval mode as every judging pass; raw features: normalised ones
        # would hide zeros and overflow
        features = with_precision(backbone, amp)(normalize(images[:BROKEN_CHECK_IMAGES], usage))
    problem = feature_problem(features)
    if problem is not None:
        fail(f"{flag} {path}: {problem}, so no similarity-based answer about it would mean anything; check that "
             f"the file and --model are right (nothing was judged or written)")


def load_stage_encoder(cfg, path: str, device: torch.device, flag: str) -> torch.nn.Module:
    """A stage's encoder file, loaded (``MODELS.checkpoint.load_encoder``) and checked finite. With ``--model``
    left at its default (``cfg.model_by_keys``) a CLIP vision transformer's keys choose the tower, and
    ``cfg.model`` then names the one built, so setting.txt and the resume fingerprint say what ran."""
    model = load_encoder(path, cfg.model, device, flag=flag, by_keys=getattr(cfg, "model_by_keys", False))
    built = getattr(model, "name", cfg.model)
    if built != cfg.model:
        log(f"note: {flag} {path} holds a CLIP vision transformer: --model {built} (chosen by the file's keys)")
    cfg.model = built
    check_finite_model(model, path, flag)
    return model


def check_nonfinite(values: dict, where: str, keep: str, hint: str) -> None:
    """Stop on a NaN/inf loss: one line saying where, which good state is kept, and what to try."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} = {v}" for k, v in bad.items())
        fail(f"{where}: {what}; stopped. {keep}. {hint}")


def canonical(obj):
    """A checkpoint read back for --resume, with every string interned like the literals of a fresh run.

    Pickle writes one copy of an object seen twice; in a fresh run equal names (row keys, the
    optimiser's "lr", ...) are often one interned object, in data read from a file they are not.
    Interning keys and string values of the loaded dicts and lists keeps a resumed run's later
    checkpoints byte-identical to an uninterrupted run's.
    """
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(canonical(v) for v in obj)
    return obj
