"""Data-parallel runs under ``torchrun``: the process group, ranks, sharded batches, gathers and BatchNorm.

A stage launched as ``torchrun --nproc_per_node N <script> ...`` runs N processes (ranks). They share
one design, chosen so that N processes compute what one process computes on the same global batch:

- Every rank holds the whole (small, in-memory) dataset on its device, is seeded alike and makes the
  same random draws in the same order: the epoch's permutation and the augmentation of the whole
  global batch (element-wise, cheap next to the encoder). So the images and the augmentation that
  rank r sees are exactly those of rows ``shard_bounds(B)`` of the one-process batch. This stands in
  for torch's ``DistributedSampler``, which would give each rank its own permutation of its own part
  of the epoch and so another run than the one-process run.
- The encoder's forward and backward passes run on the rank's rows only (the work that scales). A
  loss whose terms mix rows (NT-Xent's negatives, a mean over the batch) is computed on the rows of
  every rank, gathered *with gradient* (:func:`gather_rows`), identically on each rank.
- Gradients are synchronised by torch's ``DistributedDataParallel`` (:func:`data_parallel`), which
  averages them over ranks. The collectives here follow the same convention (the objective is the mean
  of the ranks' losses; a collective's backward sums the gradients of all ranks), so the gradient each
  rank applies is the one-process gradient.
- BatchNorm in train mode normalises with the statistics of the *global* batch
  (:class:`GlobalBatchNorm`, via :func:`sync_batchnorm`) where a stage's method relies on those
  statistics. torch's ``nn.SyncBatchNorm`` refuses CPU tensors, so this one (two all-reduces of
  per-channel sums per layer) is the one code path on CPU (gloo) and GPU (NCCL).

The backend follows the device: NCCL for CUDA, gloo for the CPU. Only rank 0 writes files, holds the
output folders' lock and prints (``UTILS.runtime.log`` and the progress bars are quiet elsewhere);
a checkpoint to resume from is read by rank 0 and sent to every rank (:func:`from_main`), so nodes need
no shared disk. Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) every function here is the
identity or a no-op and a run is the single-process run, byte for byte.
"""
from __future__ import annotations

import atexit
import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from UTILS.device_flags import device_choice
from UTILS.errors import UserError, fail
from UTILS.launch import env_is_main

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes files and prints."""
        return self.rank == 0


def world_from_env(environ: Mapping[str, str] = os.environ) -> World:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; World() when absent."""
    try:
        size = int(environ.get("WORLD_SIZE", "1") or 1)
        rank = int(environ.get("RANK", "0") or 0)
        local = int(environ.get("LOCAL_RANK", str(rank)) or 0)
    except ValueError:
        fail(f"RANK/WORLD_SIZE/LOCAL_RANK: expected integers as torchrun sets them, found "
             f"{environ.get('RANK')!r}/{environ.get('WORLD_SIZE')!r}/{environ.get('LOCAL_RANK')!r}")
    if size < 1 or not 0 <= rank < size:
        fail(f"RANK {rank}, WORLD_SIZE {size}: expected 0 <= RANK < WORLD_SIZE (start the run with torchrun)")
    return World(rank, size, local)


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for the CPU: the one place the backend is chosen."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device_flag(device: str, world: World) -> str:
    """The ``--device`` a rank resolves: under torchrun ``auto``/``cuda`` mean the GPU of LOCAL_RANK.

    ``cuda:N`` is refused there: every process would take the same GPU.
    """
    choice = device_choice(device)
    if world.size == 1 or choice == "cpu":
        return device
    if choice.startswith("cuda:"):
        fail(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; pass --device "
             f"cuda (or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if choice == "auto" and not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{world.local_rank}"


def start(device: str = "auto", gpu: int | str = 0) -> torch.device:
    """Resolve this rank's device and, under torchrun, join the process group (once per process).

    Returns the device. One process (no torchrun): ``UTILS.runtime.resolve_device(device, gpu)``.
    """
    from UTILS.runtime import resolve_device  # runtime imports this module: import here, not at the top

    world = world_from_env()
    dev = resolve_device(rank_device_flag(device, world), gpu, verbose=world.main)
    if world.size == 1 or is_distributed():
        return dev
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend_for(dev), init_method="env://", timeout=collective_timeout(), **kwargs)
    atexit.register(stop)
    if world.main:
        print(f"data parallel: {world.size} processes, backend {backend_for(dev)}", flush=True)
    return dev


TIMEOUT_ENV = "RECEIVE_DIST_TIMEOUT"  # seconds a rank waits in one collective for the others (default 1800)


def collective_timeout() -> datetime.timedelta:
    """How long a collective may wait for the other ranks before it fails (instead of hanging for ever when
    a rank is stuck): ``RECEIVE_DIST_TIMEOUT`` seconds, default 1800 (room for rank 0's kNN monitor or a large
    checkpoint while the others wait)."""
    value = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        fail(f"{TIMEOUT_ENV}={value}: expected a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def agree_on(settings: Mapping[str, Any], what: str = "settings") -> None:
    """Every rank checks that all ranks run with the same ``settings`` ({flag name: value}) before any work.

    A flag typed differently on one node (``--lr``, ``--data_ratio``, ``--epochs``) would otherwise give
    silently different losses, a hang, or a traceback at the first collective of another shape. Each rank
    gathers every rank's hash; a mismatch stops every rank with the same one line naming the first
    differing flags (rank 0's value and the other rank's). Nothing on one process."""
    if not is_distributed():
        return
    digest = hashlib.sha256(repr(sorted((k, repr(v)) for k, v in settings.items())).encode()).hexdigest()
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, (digest, dict(settings)))
    base_hash, base = every[0]
    for other, (h, theirs) in enumerate(every):
        if h == base_hash:
            continue
        diff = [f"--{k} {base.get(k)!r} on rank 0, {theirs.get(k)!r} on rank {other}"
                for k in sorted(set(base) | set(theirs)) if base.get(k) != theirs.get(k)]
        fail(f"torchrun: the processes were started with different {what} ({'; '.join(diff[:3])}"
             f"{'; ...' if len(diff) > 3 else ''}); start every process with the same flags")


def stop() -> None:
    """Leave the process group (registered at exit by :func:`start`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group of more than one process is running (torchrun)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 on one process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 on one process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0 (always on one process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing on one process)."""
    if is_distributed():
        dist.barrier()


def shard_bounds(n: int, size: Optional[int] = None, index: Optional[int] = None) -> tuple[int, int]:
    """[lo, hi) of the rows of a global batch of ``n`` that rank ``index`` of ``size`` computes.

    Contiguous, in rank order, the first ``n % size`` ranks one row more (as ``torch.tensor_split``).
    """
    size = world_size() if size is None else size
    index = rank() if index is None else index
    base, extra = divmod(n, size)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def local_rows(x: Tensor) -> Tensor:
    """This rank's rows of a global batch (N, ...) -> (n_r, ...); the batch itself on one process."""
    if not is_distributed():
        return x
    lo, hi = shard_bounds(x.shape[0])
    return x[lo:hi]


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; backward sums every rank's gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor, total: int) -> Tensor:  # type: ignore[override]
        size, me = dist.get_world_size(), dist.get_rank()
        bounds = [shard_bounds(total, size, r) for r in range(size)]
        if x.shape[0] != bounds[me][1] - bounds[me][0]:
            raise ValueError(f"gather_rows: rank {me} holds {x.shape[0]} rows, expected {bounds[me]} of {total}")
        longest = max(hi - lo for lo, hi in bounds)
        padded = x.new_zeros((longest,) + tuple(x.shape[1:]))  # all_gather needs equal shapes
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded)
        ctx.rows = bounds[me]
        return torch.cat([p[:hi - lo] for p, (lo, hi) in zip(parts, bounds)])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        lo, hi = ctx.rows
        return grad[lo:hi], None


def gather_rows(x: Tensor, total: int) -> Tensor:
    """(n_r, ...) rows of this rank -> (total, ...) rows of every rank, with gradient; x on one process."""
    if not is_distributed():
        return x
    return _GatherRows.apply(x, total)


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(x: Tensor) -> Tensor:
    """Element-wise sum of ``x`` over ranks, with gradient (x itself on one process)."""
    return _SumOverRanks.apply(x) if is_distributed() else x


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose train-mode statistics are those of the global batch of every rank.

    Same parameters, buffers and state-dict keys as BatchNorm1d/2d (a checkpoint is unchanged); in
    eval mode, or on one process, it *is* ``F.batch_norm``. Mean first, then the squared deviations
    from it (two all-reduces), which keeps the variance as accurate as one process's.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        """BatchNorm of ``x`` (B, C, ...) with the statistics of every rank's batch in train mode under torchrun."""
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() / x.shape[1])])
        summed = sum_over_ranks(local)  # (C + 1,): per-channel sums, then the global count
        count = summed[-1].detach()
        mean = summed[:-1] / count  # (C,)
        centred = x - mean.view(shape)
        var = sum_over_ranks(centred.square().sum(dims)) / count  # biased, as BatchNorm normalises
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), count)
        return out

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every BatchNorm layer of ``module`` into :class:`GlobalBatchNorm` in place (a no-op on one process).

    Parameters and buffers are the same tensors, so optimisers and frozen flags carry over.
    """
    if not is_distributed():
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            swapped = GlobalBatchNorm.__new__(GlobalBatchNorm)
            swapped.__dict__.update(child.__dict__)  # same parameters, buffers, hooks and mode
            setattr(module, name, swapped)
        else:
            sync_batchnorm(child)
    return module


def data_parallel(module: nn.Module) -> nn.Module:
    """torch's DistributedDataParallel around ``module`` (module itself on one process).

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts from the same
    weights, and averages the gradients of the parameters that take one.
    """
    if not is_distributed():
        return module
    device = next(module.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def mean_over_ranks(x: Tensor) -> Tensor:
    """The mean of a (detached) tensor over ranks, for numbers each rank measured on its own rows."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0; every rank returns its result or raises its :class:`UserError`.

    For decisions only rank 0 can make (its disk: earlier outputs, the checkpoint to resume from), so
    every rank continues from the same state or stops with the same one-line error.
    """
    if not is_distributed():
        return compute()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", compute())
        except UserError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0, device=_object_device())
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def _object_device() -> Optional[torch.device]:
    """NCCL moves tensors (and pickled objects) through the rank's GPU; gloo through the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def gather_to_all(x: Tensor) -> Tensor:
    """(n_r, ...) rows of every rank concatenated in rank order, without gradient (rows per
    :func:`shard_bounds`); x itself on one process."""
    if not is_distributed():
        return x
    sizes = torch.tensor([x.shape[0]], device=x.device)
    every = [torch.empty_like(sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(every, sizes)
    total = int(sum(int(s) for s in every))
    with torch.no_grad():
        return _GatherRows.apply(x.detach(), total)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on some rank (a stop request), so that every rank stops after the same step."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=_object_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_batch(batch_size: int, flag: str = "--batch_size") -> None:
    """Refuse a global batch smaller than the number of processes (some rank would get no row)."""
    n = world_size()
    if batch_size < n:
        fail(f"{flag} {batch_size}: the global batch must hold at least one image per process ({n} processes "
             f"under torchrun); raise it or start fewer processes")


__all__ = ["World", "world_from_env", "env_is_main", "backend_for", "rank_device_flag", "start", "stop",
           "is_distributed", "rank", "world_size", "is_main", "barrier", "shard_bounds", "local_rows",
           "gather_rows", "sum_over_ranks", "GlobalBatchNorm", "sync_batchnorm", "data_parallel",
           "mean_over_ranks", "from_main", "gather_to_all", "any_rank", "check_batch", "agree_on",
           "collective_timeout"]
