"""Speed benchmark: each pipeline stage of OUR implementation against the FLOOR measured in the same run.

    python bench/bench.py                      # quick: resnet18_small all sizes + resnet18 a subset
    python bench/bench.py --full               # all sizes, both models
    python bench/bench.py --model resnet18_small --stages unlearn --data-ratios 0.05
    python bench/bench.py --model clip_rn50        # a 224-pixel tower: the rows of bench/encoders224.py

The floor of a stage is the bare tensor work the stage cannot avoid (the same backbone, the same batch
shapes, the same kind of pass), with inputs prepared outside the timer:

  inversion   one step of ``invert_trigger`` over ``attack_size`` images  vs  one forward+backward of the
              backbone w.r.t. its input (eval mode, parameters frozen)
  distance    ``wasserstein_shift`` over the inversion set                 vs  one no_grad forward pass over it
  unlearn     one ``unlearn_epoch`` (portion 0.3, batch 128)               vs  the same batches (two passes of B
              images each) through ``model(x)`` with parameter grads + an SGD step
  features    ``extract_features`` (the downstream classifier's input)    vs  no_grad forward passes
  mlp         one epoch of ``train_downstream`` (batch 64, eval each epoch) vs a bare MLP epoch (same net,
              Adam, same minibatches, one eval forward); the note gives 500 epochs / feature extraction
  knn         ``knn_monitor`` (bank = set, test = set/5, k 200)             vs  the forward passes over bank, test
              and stamped test plus one matrix product
  amp-*       the inversion step, distance, unlearn epoch and feature extraction with ``--amp`` (bf16
              autocast + channels_last)                                   vs  the same call of ours in float32
  state-save  the per-round resume state written by BackgroundSaver, overlapping the next inversion
              steps (and competing with them for the CPU)                 vs  a synchronous save_checkpoint,
              then the same steps

Times are medians over repeats (after one warm-up) with ``time.perf_counter``; ours and the floor run
back to back, alternating which goes first, so that a load change on a shared machine hits both.
Sizes: ``attack_size`` for the inversion step, ``data_ratio`` of a 50,000-image 32x32 set of random
uint8 pixels for the others.
Nothing here asserts a time: this is a measuring tool, not a test.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("RECEIVE_NO_PROGRESS", "1")  # progress bars off: they would interleave with the table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from DATASETS.loaders import ImageSet, take_ratio  # noqa: E402
from DATASETS.stats import get_usage, normalize  # noqa: E402
from DATASETS.tensors import TensorSet  # noqa: E402
from DATASETS.triggers import GroundTruthTrigger, InvertedTrigger, white_square_trigger  # noqa: E402
from EVALUATION.downstream import DownstreamMLP, adam, train_downstream  # noqa: E402
from EVALUATION.features import extract_features  # noqa: E402
from EVALUATION.knn import knn_monitor  # noqa: E402
from INVERSION.inversion import InversionConfig, frozen, invert_trigger  # noqa: E402
from MODELS.checkpoint import BackgroundSaver, save_checkpoint  # noqa: E402
from MODELS.precision import with_precision  # noqa: E402
from MODELS.simclr import build_model  # noqa: E402
from INVERSION.hardening import sorted_features, wasserstein_shift  # noqa: E402
if str(ROOT / "bench") not in sys.path:  # the 224 rows live next to this file, however it was loaded
    sys.path.insert(0, str(ROOT / "bench"))
from encoders224 import MODELS_224, QUICK_224, STAGES_224, Rows224, unlearn_floor  # noqa: E402
from Trainer.unlearn import epoch_batches, unlearn_epoch  # noqa: E402
from UTILS.errors import ArgumentParser, UserError, cli_entry  # noqa: E402
from flags import at_least, number_list  # noqa: E402
from UTILS.runtime import resolve_device  # noqa: E402

BASE_STAGES = ("inversion", "distance", "unlearn", "features", "mlp", "knn")
AMP_STAGES = ("amp-inversion", "amp-distance", "amp-unlearn", "amp-features")  # --amp against our float32
STATE_STAGE = "state-save"  # the per-round resume state: background against synchronous writing (no size axis)
STAGES = BASE_STAGES + AMP_STAGES + (STATE_STAGE,)
MODELS = ("resnet18_small", "resnet18")
ATTACK_SIZES = (32, 64, 128)
DATA_RATIOS = (0.01, 0.02, 0.05)
POOL = 50_000           # images in the generated CIFAR-sized set
USAGE = get_usage("cifar10")
DIST_BATCH = 256        # wasserstein_shift / sorted_features default
UNLEARN_BATCH = 128     # Unlearn-trigger.py --batch_size default
PORTION, BETA, TEMP = 0.3, 3.5, 0.5  # the README's unlearning recipe (--portion, --beta, --knn-t)
FEAT_BATCH = 512        # extract_features / knn_monitor default
MLP_BATCH = 64          # training_downstream_classifier.py --batch_size default
KNN_K = 200
QUICK_PLAN = {  # model -> {stage: sizes} of the default quick mode (attack sizes for inversion, else ratios)
    "resnet18_small": {**{s: ATTACK_SIZES if s == "inversion" else DATA_RATIOS for s in BASE_STAGES},
                       "amp-inversion": (32,), "amp-distance": (0.01,), "amp-unlearn": (0.01,),
                       "amp-features": (0.01,)},
    "resnet18": {**{s: (32,) if s == "inversion" else (0.01,) for s in BASE_STAGES},
                 "amp-inversion": (32,), "amp-distance": (0.01,), "amp-features": (0.01,), STATE_STAGE: (0,)},
}


@dataclass
class Row:
    """One measured row: a stage at one size, our median seconds against the floor's."""

    model: str
    stage: str
    axis: str            # attack_size | data_ratio
    size: float
    images: int          # images the stage handles (attack set, inversion set, ...)
    ours_s: float
    floor_s: float
    repeats: int
    note: str = ""
    busy: int = 0        # repeats that started while other processes kept the CPUs busy
    ours_all: list = field(default_factory=list)
    floor_all: list = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """ours / floor of the medians (NaN without a floor time)."""
        return self.ours_s / self.floor_s if self.floor_s > 0 else float("nan")

    @property
    def min_ratio(self) -> float:
        """min(ours) / min(floor): the least load-sensitive estimate on a shared machine."""
        return min(self.ours_all) / min(self.floor_all) if self.floor_all and min(self.floor_all) > 0 else float("nan")


class Timer:
    """perf_counter around a call, with a device sync on both sides for CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        """Wait for queued CUDA work, so a time covers it (nothing on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


def _cpu_times() -> Optional[tuple[int, int]]:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where unavailable."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return values[3] + values[4], sum(values)


def machine_busy(window: float = 0.25) -> Optional[float]:
    """Share of all CPUs busy over ``window`` seconds while this process sleeps (= other processes)."""
    a = _cpu_times()
    time.sleep(window)
    b = _cpu_times()
    if a is None or b is None or b[1] == a[1]:
        return None
    return 1.0 - (b[0] - a[0]) / (b[1] - a[1])


class IdleGate:
    """Before each timed pair, wait (up to ``max_wait`` s) until other processes leave the CPUs idle.

    On a shared machine other jobs slow OpenMP-parallel ops several-fold; a pair that still starts on a
    busy machine is counted, and the table notes it. ``max_wait`` 0 turns the gate off (GPU runs)."""

    def __init__(self, max_wait: float, total: float, threshold: float = 0.15):
        self.max_wait, self.left, self.threshold = max_wait, total, threshold
        self.waited = 0.0

    def __call__(self) -> bool:
        """True when the machine was quiet (or the gate is off) when the pair started."""
        if self.max_wait <= 0:
            return True
        start = time.perf_counter()
        deadline = start + min(self.max_wait, max(self.left, 0.0))
        try:
            while True:
                busy = machine_busy()
                if busy is None or busy <= self.threshold:
                    return True
                if time.perf_counter() > deadline:
                    return False
                time.sleep(0.5)
        finally:
            spent = time.perf_counter() - start
            self.waited += spent
            self.left -= spent
            self.spin()

    @staticmethod
    def spin(seconds: float = 0.1) -> None:
        """Busy compute after the sleeps above: a timed call that starts right after a sleep runs
        measurably slower (20-30% for calls of a few ms here), which would bias the first of a pair."""
        m = torch.ones(128, 128)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            torch.mm(m, m)


def measure(timer: Timer, gate: IdleGate, ours: Callable[[], Callable[[], object]],
            floor: Callable[[], Callable[[], object]], *, repeats: int, budget: float,
            warm_ours: Optional[Callable[[], Callable[[], object]]] = None,
            warm_floor: Optional[Callable[[], Callable[[], object]]] = None) -> tuple[list, list, int]:
    """Warm up both, then time ours and the floor back to back ``repeats`` times, alternating which goes
    first (fewer once ``budget`` seconds are spent, at least one). Each argument is a *preparer*: it sets
    up state outside the timer and returns the zero-argument callable to time.
    Returns (ours times, floor times, pairs started on a busy machine)."""
    timer((warm_ours or ours)())
    timer((warm_floor or floor)())
    t_ours, t_floor, spent, busy = [], [], 0.0, 0
    for i in range(repeats):
        if i > 0 and spent > budget:
            break
        run_ours, run_floor = ours(), floor()
        busy += not gate()
        if i % 2 == 0:  # alternate which one goes first
            a = timer(run_ours)
            b = timer(run_floor)
        else:
            b = timer(run_floor)
            a = timer(run_ours)
        t_ours.append(a)
        t_floor.append(b)
        spent += a + b
    return t_ours, t_floor, busy


# ---------------------------------------------------------------- data and models

def make_pool(seed: int = 0) -> ImageSet:
    """50,000 random 32x32 RGB uint8 images with random labels (no dataset files needed)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (POOL, 32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
    y = torch.randint(0, 10, (POOL,), generator=gen).numpy().astype(np.int64)
    return ImageSet(x=x, y=y, num_classes=10, name="random", split="train")


def share(pool: ImageSet, ratio: float, device: torch.device) -> TensorSet:
    """The --data_ratio share, exactly as the pipeline takes it (first floor(N * r) images)."""
    return TensorSet.from_images(take_ratio(pool, ratio), device)


def test_split(pool: ImageSet, n: int, device: torch.device) -> TensorSet:
    """A held-out 'test' slice from the end of the pool (n images)."""
    part = ImageSet(x=pool.x[POOL - n:], y=pool.y[POOL - n:], num_classes=10, name="random", split="test")
    return TensorSet.from_images(part, device)


def random_inverted_trigger(device: torch.device) -> InvertedTrigger:
    """A fixed, seeded inverted trigger (mask (32, 32) below 0.2, pattern (3, 32, 32)) on ``device``."""
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(32, 32, generator=g) * 0.2).to(device)
    pattern = torch.rand(3, 32, 32, generator=g).to(device)
    return InvertedTrigger(mask, pattern)


def ground_truth_trigger() -> GroundTruthTrigger:
    """The white-square BadEncoder trigger the demo injects."""
    arrays = white_square_trigger()
    return GroundTruthTrigger(arrays["t"], arrays["tm"])


def batches(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of the consecutive batches of ``size`` over ``n`` rows, the last one shorter."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


# ---------------------------------------------------------------- our calls, as preparers
# A preparer sets up state outside the timer and returns the zero-argument call to time.

def invert_preparer(backbone, attack, init, config: InversionConfig):
    """A preparer of one invert_trigger round on ``attack`` from ``init`` (nothing to set up per repeat)."""
    def call():
        invert_trigger(backbone, attack, USAGE, config, init)
    return lambda: call


def distance_preparer(backbone, x, trigger, clean_sorted):
    """A preparer of one wasserstein_shift over ``x`` against the precomputed ``clean_sorted``."""
    return lambda: lambda: wasserstein_shift(backbone, x, USAGE, trigger, clean_sorted, DIST_BATCH)


def unlearn_preparer(base, data: TensorSet, trigger, amp: bool = False):
    """A preparer of one unlearn_epoch: each repeat starts from a fresh copy of ``base`` and its optimiser."""
    def prepare():
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
        net = with_precision(model, amp)
        return lambda: unlearn_epoch(net, opt, data, batch_size=UNLEARN_BATCH, trigger=trigger, usage=USAGE,
                                     portion=PORTION, beta=BETA, temperature=TEMP)
    return prepare


def features_preparer(backbone, x):
    """A preparer of one extract_features pass over ``x``."""
    return lambda: lambda: extract_features(backbone, x, USAGE, batch_size=FEAT_BATCH)


# ---------------------------------------------------------------- stages

class Bench:
    """What every row is measured with: the timer, the idle gate, seeded models and the inversion setup.

    The rows of the 32-pixel stages (the subclasses below, joined in :class:`Rows32`) each build our call and
    its floor and time them in alternation.
    """

    def __init__(self, args, device: torch.device, pool: ImageSet):
        self.args, self.device, self.pool = args, device, pool
        self.timer = Timer(device)
        # Other processes may keep the cores this run leaves free (fewer threads than CPUs) busy.
        cpus = os.cpu_count() or 1
        spare = max(0, cpus - torch.get_num_threads()) / cpus
        self.gate = IdleGate(args.idle_wait if device.type == "cpu" else 0.0, args.idle_total, 0.15 + spare)
        self.busy = 0  # busy pairs of the last measurement
        self._features_s: dict = {}  # (model, ratio) -> our feature-extraction seconds, for the MLP note

    def model(self, name: str):
        """A fresh ``name`` encoder with seed-0 weights on the bench's device."""
        torch.manual_seed(0)
        return build_model(name).to(self.device)

    def run_measure(self, ours, floor, **kw):
        """Time ``ours`` against ``floor`` (alternating, with the idle gate); their per-repeat seconds."""
        t_o, t_f, self.busy = measure(self.timer, self.gate, ours, floor, repeats=self.args.repeats,
                                      budget=self.args.budget, **kw)
        return t_o, t_f

    # 6.1: one inversion step -------------------------------------------------------------
    def inversion_setup(self, attack_size: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor],
                                                          InversionConfig]:
        """The attack images (attack_size, 3, 32, 32), a random start trigger (mask, pattern) and a
        config that runs exactly ``--steps`` steps (each attack_size // 32 Adam updates on chunks of 32)."""
        inv_set = share(self.pool, 0.01, self.device)
        torch.manual_seed(2)
        attack = inv_set.x[torch.randint(len(inv_set), (attack_size,)).to(self.device)]
        init = (torch.rand(32, 32, device=self.device), torch.rand(3, 32, 32, device=self.device))
        steps = self.args.steps
        return attack, init, InversionConfig(steps=steps, step_cap=steps, lr=0.5)

    def row(self, model, stage, *, axis, size, images, t_o, t_f, per: int = 1) -> Row:
        """A :class:`Row` from the per-repeat seconds (divided by ``per``: steps per call); printed as it is made."""
        t_o = [t / per for t in t_o]
        t_f = [t / per for t in t_f]
        r = Row(model, stage, axis, size, images, statistics.median(t_o), statistics.median(t_f), len(t_o),
                ours_all=t_o, floor_all=t_f, busy=self.busy)
        print(f"  {model:15s} {stage:20s} {axis}={size:<5g} ours {r.ours_s:9.4f}s  floor {r.floor_s:9.4f}s  "
              f"ratio {r.ratio:5.2f}  (n={r.repeats})", file=sys.stderr, flush=True)
        return r


class PipelineRows(Bench):
    """The rows of the defence's own stages: inversion step, early-stop distance, unlearn epoch."""

    def inversion(self, name: str, attack_size: int) -> Row:
        """The inversion-step row: invert_trigger against a bare Adam loop on Equation 2."""
        backbone = self.model(name).f
        attack, init, config = self.inversion_setup(attack_size)
        steps = config.steps
        ours = invert_preparer(backbone, attack, init, config)
        x_norm = normalize(attack, USAGE).detach()

        def floor():
            def call():
                with frozen(backbone):
                    for _ in range(steps):
                        x = x_norm.clone().requires_grad_(True)
                        torch.autograd.grad(backbone(x).sum(), x)
            return call

        t_o, t_f = self.run_measure(ours, floor)
        return self.row(name, "inversion step", axis="attack_size", size=attack_size, images=attack_size,
                        t_o=t_o, t_f=t_f, per=steps)

    # 6.2d: the early-stop distance --------------------------------------------------------
    def distance(self, name: str, ratio: float) -> Row:
        """The distance row: wasserstein_shift against one no_grad forward pass over the stamped set."""
        model = self.model(name)
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        data = share(self.pool, ratio, self.device)
        trigger = random_inverted_trigger(self.device)
        clean_sorted = sorted_features(reference.f, data.x, USAGE)  # computed once per run, not timed
        stamped_norm = normalize(trigger(data.x), USAGE)
        warm_n = min(len(data), DIST_BATCH)

        def ours_on(x, cs):
            return distance_preparer(reference.f, x, trigger, cs)

        def floor_on(xn):
            def call():
                with torch.no_grad():
                    for s, e in batches(xn.shape[0], DIST_BATCH):
                        reference.f(xn[s:e])
            return lambda: call

        t_o, t_f = self.run_measure(ours_on(data.x, clean_sorted), floor_on(stamped_norm),
                                    warm_ours=ours_on(data.x[:warm_n], clean_sorted[:warm_n]),
                                    warm_floor=floor_on(stamped_norm[:warm_n]))
        return self.row(name, "early-stop distance", axis="data_ratio", size=ratio, images=len(data), t_o=t_o, t_f=t_f)

    # 6.4: one unlearning epoch ------------------------------------------------------------
    def unlearn(self, name: str, ratio: float) -> Row:
        """The unlearn-epoch row: unlearn_epoch against the same batches through model(x) with an SGD step."""
        base = self.model(name)
        data = share(self.pool, ratio, self.device)
        trigger = random_inverted_trigger(self.device)
        warm = TensorSet(data.x[:min(len(data), 2 * UNLEARN_BATCH)], data.y[:min(len(data), 2 * UNLEARN_BATCH)], 10)

        def floor_batches(ds):
            """The batch composition of unlearn_loss: two passes of the B images of a batch, normalised."""
            out, n = [], len(ds)
            for s, e in epoch_batches(n, UNLEARN_BATCH):
                x = normalize(ds.x[s:e], USAGE)
                out.append((x, x.flip(-1)))  # the second pass sees other pixels, as the stamped/augmented one
            return out

        def floor_on(ds):
            return unlearn_floor(base, floor_batches(ds))

        t_o, t_f = self.run_measure(unlearn_preparer(base, data, trigger), floor_on(data),
                                    warm_ours=unlearn_preparer(base, warm, trigger), warm_floor=floor_on(warm))
        return self.row(name, "unlearn epoch", axis="data_ratio", size=ratio, images=len(data), t_o=t_o, t_f=t_f)

    # 6.6: downstream feature extraction ---------------------------------------------------


class EvaluationRows(Bench):
    """The rows of the evaluation: feature extraction, the downstream MLP, the kNN monitor."""

    def features(self, name: str, ratio: float) -> Row:
        """The feature-extraction row: extract_features against bare no_grad forward passes."""
        backbone = self.model(name).f.eval()
        data = share(self.pool, ratio, self.device)
        x_norm = normalize(data.x, USAGE)
        warm_n = min(len(data), FEAT_BATCH)

        def floor_on(xn):
            def call():
                with torch.no_grad():
                    for s, e in batches(xn.shape[0], FEAT_BATCH):
                        backbone(xn[s:e])
            return lambda: call

        t_o, t_f = self.run_measure(features_preparer(backbone, data.x), floor_on(x_norm),
                                    warm_ours=features_preparer(backbone, data.x[:warm_n]),
                                    warm_floor=floor_on(x_norm[:warm_n]))
        row = self.row(name, "feature extraction", axis="data_ratio", size=ratio, images=len(data), t_o=t_o, t_f=t_f)
        self._features_s[(name, ratio)] = row.ours_s
        return row

    # 6.6: downstream MLP, per epoch -------------------------------------------------------
    def mlp(self, name: str, ratio: float) -> Row:
        """The MLP row: train_downstream epochs against a bare MLP loop on the same features and batches."""
        backbone = self.model(name).f.eval()
        data = share(self.pool, ratio, self.device)
        feats = extract_features(backbone, data.x, USAGE, batch_size=FEAT_BATCH)
        n_test = max(2, len(data) // 5)
        test_feat, test_y, bd_feat = feats[:n_test], data.y[:n_test], feats[:n_test]
        epochs = self.args.mlp_epochs

        def ours():
            def call():
                with contextlib.redirect_stdout(io.StringIO()):  # two JSON lines per epoch
                    train_downstream(feats, data.y, test_feat, test_y, bd_feat, bd_target=0, num_classes=10,
                                     epochs=epochs, lr=1e-4, batch_size=MLP_BATCH)
            return call

        def floor():
            def call():
                net = DownstreamMLP(feats.shape[1], 10).to(self.device)  # train_downstream builds its net too
                opt = adam(net.parameters(), 1e-4, self.device)  # the same (fused) Adam as ours
                for _ in range(epochs):
                    net.train()
                    order = torch.randperm(feats.shape[0], device=self.device)
                    for s, e in batches(feats.shape[0], MLP_BATCH):
                        idx = order[s:e]
                        loss = F.cross_entropy(net(feats[idx]), data.y[idx])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    net.eval()
                    with torch.no_grad():
                        net(test_feat).argmax(1)
                        net(bd_feat).argmax(1)
            return call

        t_o, t_f = self.run_measure(ours, floor)
        row = self.row(name, "MLP epoch", axis="data_ratio", size=ratio, images=len(data), t_o=t_o, t_f=t_f, per=epochs)
        feat_s = self._features_s.get((name, ratio))
        if feat_s:
            row.note = f"500 ep = {500 * row.ours_s / feat_s:.1f}x features"
        return row

    # 6.5: kNN monitor ---------------------------------------------------------------------
    def knn(self, name: str, ratio: float) -> Row:
        """The kNN row: knn_monitor against the bare forward passes and one similarity product."""
        backbone = self.model(name).f.eval()
        bank = share(self.pool, ratio, self.device)
        test = test_split(self.pool, max(2, len(bank) // 5), self.device)
        trigger = ground_truth_trigger()
        target = 0
        keep = test.y != target
        bank_n, test_n = normalize(bank.x, USAGE), normalize(test.x, USAGE)
        stamped_n = normalize(trigger(test.x[keep]), USAGE)

        def ours():
            return lambda: knn_monitor(backbone, bank.x, bank.y, test.x, test.y, num_classes=10, usage=USAGE,
                                       trigger=trigger, target=target, k=KNN_K, t=TEMP)

        def floor():
            def call():
                with torch.no_grad():
                    outs = []
                    for xn in (bank_n, test_n, stamped_n):
                        outs.append(torch.cat([backbone(xn[s:e]) for s, e in batches(xn.shape[0], FEAT_BATCH)]))
                    torch.cat(outs[1:]) @ outs[0].T
            return call

        t_o, t_f = self.run_measure(ours, floor)
        images = len(bank) + len(test) + int(keep.sum())
        return self.row(name, "kNN monitor", axis="data_ratio", size=ratio, images=images, t_o=t_o, t_f=t_f)


class AmpRows(Bench):
    """The rows of ``--amp`` (the encoder in bf16 autocast, against our own float32) and of the per-round
    state save."""

    def amp_row(self, row: Row) -> Row:
        """Mark an --amp row: its floor is our own code in float32."""
        row.note = "; ".join(filter(None, ["floor = ours in float32", row.note]))
        return row

    def amp_inversion(self, name: str, attack_size: int) -> Row:
        """The inversion step with --amp against the same in float32."""
        backbone = self.model(name).f
        fast = with_precision(copy.deepcopy(backbone), True)
        attack, init, config = self.inversion_setup(attack_size)
        t_o, t_f = self.run_measure(invert_preparer(fast, attack, init, config),
                                    invert_preparer(backbone, attack, init, config))
        return self.amp_row(self.row(name, "inversion step --amp", axis="attack_size", size=attack_size,
                                     images=attack_size, t_o=t_o, t_f=t_f, per=config.steps))

    def amp_distance(self, name: str, ratio: float) -> Row:
        """The distance with --amp against the same in float32."""
        reference = self.model(name).f.eval()
        fast = with_precision(copy.deepcopy(reference), True)
        data = share(self.pool, ratio, self.device)
        trigger = random_inverted_trigger(self.device)
        # each precision compares against clean features computed in that precision, as MAIN.py does
        ours = distance_preparer(fast, data.x, trigger, sorted_features(fast, data.x, USAGE))
        floor = distance_preparer(reference, data.x, trigger, sorted_features(reference, data.x, USAGE))
        t_o, t_f = self.run_measure(ours, floor)
        return self.amp_row(self.row(name, "early-stop distance --amp", axis="data_ratio", size=ratio, images=len(data),
                                     t_o=t_o, t_f=t_f))

    def amp_unlearn(self, name: str, ratio: float) -> Row:
        """The unlearn epoch with --amp against the same in float32."""
        base = self.model(name)
        data = share(self.pool, ratio, self.device)
        trigger = random_inverted_trigger(self.device)
        t_o, t_f = self.run_measure(unlearn_preparer(base, data, trigger, amp=True),
                                    unlearn_preparer(base, data, trigger))
        return self.amp_row(self.row(name, "unlearn epoch --amp", axis="data_ratio", size=ratio, images=len(data),
                                     t_o=t_o, t_f=t_f))

    def amp_features(self, name: str, ratio: float) -> Row:
        """Feature extraction with --amp against the same in float32."""
        backbone = self.model(name).f.eval()
        fast = with_precision(copy.deepcopy(backbone), True)
        data = share(self.pool, ratio, self.device)
        t_o, t_f = self.run_measure(features_preparer(fast, data.x), features_preparer(backbone, data.x))
        return self.amp_row(self.row(name, "feature extraction --amp", axis="data_ratio", size=ratio, images=len(data),
                                     t_o=t_o, t_f=t_f))

    # 6.2: the resume state written after every round
    def state_save(self, name: str, _size: float) -> Row:
        """A round's end: its resume state written, then the next round's first inversion steps.
        Ours: ``BackgroundSaver.save`` (snapshot; the write overlaps the steps, and competes with them
        for the CPU) and a wait for the write at the end. Floor: a synchronous ``save_checkpoint``
        of the same content, then the same steps (how it was written before)."""
        model = self.model(name)
        opt = torch.optim.SGD(model.f.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        model.f(torch.rand(2, 3, 32, 32, device=self.device)).sum().backward()
        opt.step()  # momentum buffers: the state holds them too
        steps = invert_preparer(model.f, *self.inversion_setup(32))()
        saver = BackgroundSaver()
        with tempfile.TemporaryDirectory(prefix="receive-bench-") as folder:
            background, synchronous = Path(folder) / "background.pth", Path(folder) / "synchronous.pth"

            def ours():
                saver.save(background, model, 1, opt, rows=[])
                steps()
                saver.wait()

            def floor():
                save_checkpoint(synchronous, model, 1, opt, rows=[])
                steps()

            t_o, t_f = self.run_measure(lambda: ours, lambda: floor)
            size = synchronous.stat().st_size / 1e6
        row = self.row(name, "round state save", axis="MB", size=round(size, 1), images=32, t_o=t_o, t_f=t_f)
        row.note = f"state write + {self.args.steps} inversion steps; floor = synchronous write"
        return row


class Rows32(PipelineRows, EvaluationRows, AmpRows):
    """Every row of the 32-pixel encoders, on one timer and idle gate."""


# ---------------------------------------------------------------- output

def load_average() -> str:
    """1-minute load average (other processes on the machine skew absolute times); '?' where unknown."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "?"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (else the platform's processor name)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def format_table(rows: list[Row], header: str) -> str:
    """The rows as a fixed-width table under ``header``; ratios above 1.10 are starred."""
    cols = ("model", "stage", "size", "images", "ours (s)", "floor (s)", "ours/floor", "min/min", "n", "note")
    body = []
    for r in rows:
        size = f"{r.axis} {r.size:g}"
        body.append((r.model, r.stage, size, str(r.images), f"{r.ours_s:.4f}", f"{r.floor_s:.4f}",
                     f"{r.ratio:.2f}" + (" *" if r.ratio > 1.10 else ""), f"{r.min_ratio:.2f}", str(r.repeats),
                     "; ".join(filter(None, [r.note, f"busy {r.busy}/{r.repeats}" if r.busy else ""]))))
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [header, line(cols), line(tuple("-" * w for w in widths))]
    last = None
    for r, b in zip(rows, body):
        if last is not None and (r.model, r.stage) != last:
            out.append("")
        out.append(line(b))
        last = (r.model, r.stage)
    out.append("ours/floor: ratio of the medians (* above 1.10); min/min: ratio of the fastest repeats. Times per "
               "call (inversion: per step; MLP: per epoch), medians of n repeats after a warm-up.")
    return "\n".join(out)


def write_csv(path: Path, rows: list[Row], device: torch.device, name: str) -> None:
    """Every row with its per-repeat times and the machine (device, threads, torch) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ("device", "device_name", "threads", "torch", "model", "stage", "axis", "size", "images",
              "ours_s", "floor_s", "ratio", "min_ratio", "repeats", "busy", "ours_all", "floor_all", "note")
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(fields)
        for r in rows:
            w.writerow((device.type, name, torch.get_num_threads(), torch.__version__, r.model, r.stage, r.axis,
                        r.size, r.images, f"{r.ours_s:.6f}", f"{r.floor_s:.6f}", f"{r.ratio:.4f}",
                        f"{r.min_ratio:.4f}", r.repeats, r.busy,
                        " ".join(f"{t:.6f}" for t in r.ours_all), " ".join(f"{t:.6f}" for t in r.floor_all),
                        r.note))


def parse_args(argv=None):
    """The speed benchmark's flags."""
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=(*MODELS, *MODELS_224, "all"), default="all",
                   help="which encoder(s); 'all' = both 32-pixel ones (the quick mode measures resnet18 on a "
                        "subset); a 224-pixel tower (BadEncoder's ImageNet/CLIP, or its tiny test variant) "
                        "measures the rows of bench/encoders224.py")
    p.add_argument("--micro-batch", type=int, default=8, help="224 rows: --micro_batch of the inversion-micro row")
    p.add_argument("--sizes-224", default="", help="224 rows: comma list of sizes (attack size / images) "
                   "replacing the plan's")
    p.add_argument("--full", action="store_true", help="every stage and size for every model")
    p.add_argument("--stages", default="", help=f"comma list from {','.join(STAGES)} (default: the plan)")
    p.add_argument("--attack-sizes", default="", help="comma list (default: the plan)")
    p.add_argument("--data-ratios", default="", help="comma list (default: the plan)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--repeats", type=int, default=0,
                   help="timed repeats after one warm-up, at most (quick 5, full 7); see --budget")
    p.add_argument("--budget", type=float, default=0.0,
                   help="stop repeating once a measurement has spent this many seconds (quick 8, full 60)")
    p.add_argument("--idle-wait", type=float, default=10.0,
                   help="CPU only: before each timed pair wait up to this many seconds for other processes to "
                        "go idle (0 = off); pairs that start busy are noted as 'busy k/n'")
    p.add_argument("--idle-total", type=float, default=0.0,
                   help="cap on all idle waiting in a run, seconds (quick 90, full 900)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads (default: torch's own choice); 1 is steadier on a shared CPU")
    p.add_argument("--steps", type=int, default=3, help="inversion steps per timed call")
    p.add_argument("--mlp-epochs", type=int, default=3, help="MLP epochs per timed call")
    p.add_argument("--out", default="", help="CSV path (default bench/results/<device>-<model>.csv per model)")
    p.add_argument("--table", default="", help="also write the final table to this file")
    args = p.parse_args(argv)
    at_least(p, args, 0, "repeats", "budget", "idle-wait", "idle-total", "threads")
    at_least(p, args, 1, "steps", "mlp-epochs", "micro-batch")
    for flag, kind, low, high in (("attack-sizes", int, 2, 10**6), ("sizes-224", int, 2, 10**6),
                                  ("data-ratios", float, 1e-6, 1.0)):
        text = getattr(args, flag.replace("-", "_"))
        if text:
            number_list(p, text, f"--{flag}", kind, low, high)
    if args.stages:
        known = STAGES_224 if args.model in MODELS_224 else STAGES
        bad = [s for s in args.stages.split(",") if s.strip() and s.strip() not in known]
        if bad:
            p.error(f"--stages {args.stages}: unknown {', '.join(bad)}; expected from {', '.join(known)}")
    args.repeats = args.repeats or (7 if args.full else 5)
    args.budget = args.budget or (60.0 if args.full else 8.0)
    args.idle_total = args.idle_total or (900.0 if args.full else 90.0)
    return args


def plan(args) -> list[tuple[str, dict[str, tuple]]]:
    """[(model, {stage: sizes})]: attack sizes for the inversion stages, data ratios for the others."""
    models = MODELS if args.model == "all" else (args.model,)
    chosen = None
    if args.stages:
        chosen = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        bad = [s for s in chosen if s not in (STAGES_224 if args.model in MODELS_224 else STAGES)]
        if bad:
            sys.exit(f"--stages: unknown {bad}; expected from {STAGES}")
    out = []
    if args.model in MODELS_224:  # the 224-pixel towers have their own stages and sizes
        stages = {s: v for s, v in QUICK_224[args.model].items() if not chosen or s in chosen}
        if args.sizes_224:
            stages = {s: tuple(int(v) for v in args.sizes_224.split(",")) for s in stages}
        return [(args.model, stages)]
    for m in models:
        full = {s: ATTACK_SIZES if s.endswith("inversion") else DATA_RATIOS for s in STAGES}
        full[STATE_STAGE] = (0,)
        stages = dict(full if args.full else QUICK_PLAN[m])
        if chosen:
            stages = {s: stages.get(s, full[s]) for s in chosen}
        for s in stages:
            if args.attack_sizes and s.endswith("inversion"):
                stages[s] = tuple(int(v) for v in args.attack_sizes.split(","))
            if args.data_ratios and not s.endswith("inversion") and s != STATE_STAGE:
                stages[s] = tuple(float(v) for v in args.data_ratios.split(","))
        out.append((m, stages))
    return out


@cli_entry
def main(argv=None) -> list[Row]:
    """Measure the chosen stages and sizes; prints the table (and writes it, the CSV) and returns the rows."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device, 0, verbose=False)
    except UserError as err:
        sys.exit(f"error: {err}")
    name = device_name(device)
    started, load_before = time.perf_counter(), load_average()
    print(f"bench: device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads",
          file=sys.stderr, flush=True)
    pool = None if args.model in MODELS_224 else make_pool()  # the 224 rows draw their own images
    bench = Rows32(args, device, pool)
    rows: list[Row] = []
    per_model: dict[str, list[Row]] = {}
    rows224 = Rows224(bench, args.micro_batch)
    for model, stages in plan(args):
        for stage in (STAGES_224 if model in MODELS_224 else STAGES):  # fixed order: features before mlp
            if stage not in stages:
                continue
            fn = getattr(rows224 if model in MODELS_224 else bench, stage.replace("-", "_"))
            for size in stages[stage]:
                row = fn(model, size)
                rows.append(row)
                per_model.setdefault(model, []).append(row)
    elapsed = time.perf_counter() - started
    mode = "full" if args.full else "quick"
    header = (f"RECEIVE bench ({mode}) on {device.type} [{name}], torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {elapsed:.0f} s (idle waits {bench.gate.waited:.0f} s), "
              f"load avg {load_before} -> {load_average()}")
    if args.out:
        write_csv(Path(args.out), rows, device, name)
    else:
        for model, model_rows in per_model.items():
            write_csv(ROOT / "bench" / "results" / f"{device.type}-{model}.csv", model_rows, device, name)
    table = format_table(rows, header)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table + "\n")
    print(table, flush=True)
    return rows


if __name__ == "__main__":
    main()
