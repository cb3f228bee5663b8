"""The 224-pixel rows of ``bench/bench.py``: BadEncoder's ImageNet ResNet-50 and CLIP RN50 towers, CLIP's
ViT-B/32 and ViT-B/16 (and the test-only tiny towers), each stage against its floor measured in the same run,
with peak device memory.

  inversion        one ``invert_trigger`` step over ``attack_size`` images   vs  forward+backward w.r.t. the
                   input, whole chunks of 32 (eval mode, parameters frozen)
  inversion-micro  the same step with ``--micro_batch`` (default 8)         vs  the same floor
  unlearn          one ``unlearn_epoch`` (portion 0.3)                      vs  the two train-mode passes of
                   every batch through ``model(x)`` + an SGD step
  features         ``extract_features``                                    vs  no_grad forward passes

Images are random uint8 at 224x224, normalised with the CLIP or ImageNet statistics of the tower's
family. Peak memory (MB) is ``torch.cuda.max_memory_allocated`` of one call, on CUDA only.
``Rows224(..., amp=True)`` measures the same rows with the tower in bf16 autocast + channels_last
(``MODELS.precision``), ours and the floor alike (``bench/gpu_check.py`` sets the two precisions side by side).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from DATASETS.stats import get_usage, normalize
from DATASETS.tensors import TensorSet
from DATASETS.triggers import InvertedTrigger
from EVALUATION.features import extract_features
from INVERSION.inversion import CHUNK, InversionConfig, chunks, frozen, invert_trigger
from MODELS.names import family_of
from MODELS.precision import with_precision
from MODELS.simclr import build_model
from Trainer.unlearn import epoch_batches, unlearn_epoch

SIDE = 224
MODELS_224 = ("imagenet_tiny", "clip_tiny", "clip_vit_tiny", "imagenet_resnet50", "clip_rn50", "clip_vit_b32",
              "clip_vit_b16")
STAGES_224 = ("inversion", "inversion-micro", "unlearn", "features")
# quick plan: model -> {stage: sizes} (attack sizes for the inversion rows, images for the others)
QUICK_224 = {
    "imagenet_tiny": {"inversion": (32,), "inversion-micro": (32,), "unlearn": (64,), "features": (64,)},
    "clip_tiny": {"inversion": (32,), "inversion-micro": (32,), "unlearn": (64,), "features": (64,)},
    "clip_vit_tiny": {"inversion": (32,), "inversion-micro": (32,), "unlearn": (64,), "features": (64,)},
    "imagenet_resnet50": {"inversion": (32,), "inversion-micro": (32,), "unlearn": (32,), "features": (64,)},
    "clip_rn50": {"inversion": (32,), "inversion-micro": (32,), "unlearn": (32,), "features": (64,)},
    "clip_vit_b32": {"inversion": (32,), "inversion-micro": (32,), "unlearn": (32,), "features": (64,)},
    "clip_vit_b16": {"inversion": (32,), "inversion-micro": (32,), "unlearn": (32,), "features": (64,)},
}
UNLEARN_BATCH_224 = 16  # BadEncoder-scale towers at 224: a CPU-sized batch (Unlearn-trigger.py --batch_size)
PORTION, BETA, TEMP = 0.3, 3.5, 0.5


def images_224(n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(n, 3, 224, 224) float in [0, 1] from random uint8 pixels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIDE, SIDE), dtype=torch.uint8, generator=g).float().div_(255).to(device)


def peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak allocated device memory of one call in MB; nan where the device does not report it (CPU)."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def unlearn_floor(base: torch.nn.Module, prepared: list) -> Callable[[], Callable[[], None]]:
    """The floor of an unlearning epoch: a fresh train-mode copy of ``base`` and its SGD, then one call runs
    the two forward/backward passes of every prepared (x1, x2) batch pair, normalised in advance."""
    def prepare() -> Callable[[], None]:
        model = copy.deepcopy(base).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)

        def call() -> None:
            for x1, x2 in prepared:
                loss = model(x1)[1].sum() + model(x2)[1].sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return call
    return prepare


class Rows224:
    """One method per 224 stage; ``bench`` is bench.py's Bench (timer, idle gate, repeats, row format).
    ``amp``: every module measured (ours and the floor) runs in bf16 autocast; the rows' stages say ``--amp``."""

    def __init__(self, bench, micro_batch: int = 8, amp: bool = False) -> None:
        self.bench, self.device, self.micro, self.amp = bench, bench.device, micro_batch, amp

    def _model(self, name: str):
        torch.manual_seed(0)
        return build_model(name).to(self.device)

    def _precise(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in the rows' precision: itself, or its bf16 autocast view under ``amp``."""
        return with_precision(module, self.amp)

    def _stage(self, stage: str) -> str:
        return f"{stage} --amp" if self.amp else stage

    def _usage(self, name: str):
        return get_usage(family_of(name))

    def _note(self, ours: Callable[[], object], floor: Callable[[], object], extra: str = "") -> str:
        mo, mf = peak_mb(ours, self.device), peak_mb(floor, self.device)
        mem = "" if mo != mo else f"peak MB ours {mo:.0f} / floor {mf:.0f}"
        return "; ".join(filter(None, [extra, mem]))

    def inversion(self, name: str, attack_size: int, micro: int = 0) -> object:
        """The inversion-step row of a 224-pixel tower: invert_trigger against the bare forward/backward floor."""
        backbone, usage = self._precise(self._model(name).f), self._usage(name)
        attack = images_224(attack_size, self.device, seed=2)
        init = (torch.rand(SIDE, SIDE, device=self.device), torch.rand(3, SIDE, SIDE, device=self.device))
        steps = self.bench.args.steps
        config = InversionConfig(steps=steps, step_cap=steps, lr=0.5, micro_batch=micro)
        x_norm = normalize(attack, usage).detach()

        def ours():
            return lambda: invert_trigger(backbone, attack, usage, config, init)

        def floor():
            def call():
                with frozen(backbone):
                    for _ in range(steps):
                        for chunk in chunks(x_norm, CHUNK):
                            x = chunk.clone().requires_grad_(True)
                            torch.autograd.grad(backbone(x).sum(), x)
            return call

        t_o, t_f = self.bench.run_measure(ours, floor)
        stage = self._stage(f"inversion step (micro {micro})" if micro else "inversion step")
        row = self.bench.row(name, stage, axis="attack_size", size=attack_size, images=attack_size,
                             t_o=t_o, t_f=t_f, per=steps)
        row.note = self._note(ours(), floor(), "floor: whole 32-image chunks" if micro else "")
        return row

    def inversion_micro(self, name: str, attack_size: int) -> object:
        """The inversion-step row with --micro_batch (``self.micro``) against the same floor."""
        return self.inversion(name, attack_size, self.micro)

    def unlearn(self, name: str, n: int) -> object:
        """The unlearn-epoch row of a 224-pixel tower on ``n`` random images."""
        base, usage = self._precise(self._model(name)), self._usage(name)
        data = TensorSet(images_224(n, self.device), torch.zeros(n, dtype=torch.long, device=self.device), 10)
        g = torch.Generator().manual_seed(1)
        trigger = InvertedTrigger((torch.rand(SIDE, SIDE, generator=g) * 0.2).to(self.device),
                                  torch.rand(3, SIDE, SIDE, generator=g).to(self.device))

        def ours():
            model = copy.deepcopy(base)
            opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
            return lambda: unlearn_epoch(model, opt, data, batch_size=UNLEARN_BATCH_224, trigger=trigger,
                                         usage=usage, portion=PORTION, beta=BETA, temperature=TEMP)

        prepared = [(normalize(data.x[s:e], usage), normalize(data.x[s:e].flip(-1), usage))
                    for s, e in epoch_batches(n, UNLEARN_BATCH_224)]

        floor = unlearn_floor(base, prepared)
        t_o, t_f = self.bench.run_measure(ours, floor)
        row = self.bench.row(name, self._stage("unlearn epoch"), axis="images", size=n, images=n, t_o=t_o, t_f=t_f)
        row.note = self._note(ours(), floor(), f"batch {UNLEARN_BATCH_224}")
        return row

    def features(self, name: str, n: int) -> object:
        """The feature-extraction row of a 224-pixel tower on ``n`` random images."""
        backbone, usage = self._precise(self._model(name).f.eval()), self._usage(name)
        x = images_224(n, self.device)
        x_norm = normalize(x, usage)

        def ours():
            return lambda: extract_features(backbone, x, usage, batch_size=64)

        def floor():
            def call():
                with torch.no_grad():
                    for s in range(0, n, 64):
                        backbone(x_norm[s:s + 64])
            return call

        t_o, t_f = self.bench.run_measure(ours, floor)
        row = self.bench.row(name, self._stage("feature extraction"), axis="images", size=n, images=n, t_o=t_o, t_f=t_f)
        row.note = self._note(ours(), floor(), "batch 64")
        return row
