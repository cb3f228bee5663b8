"""Data-parallel scaling: images per second of a SimCLR pre-training step with 1 and N processes.

    python bench/scaling.py                       # CPU, gloo: 1 and 2 processes, 1 thread each
    python bench/scaling.py --device cuda --procs 1,2,4,8   # GPUs, NCCL (one GPU per process)

Each process runs the project's own step (``Trainer.pretrain.simclr_step``: two views, NT-Xent over the
gathered global batch, global BatchNorm, DDP) on ``--per_process`` images, so N processes train on a
global batch of N x per_process (weak scaling: what adding devices buys at a fixed per-device batch).
Throughput = global images / median step time (rank 0, after warm-up steps, a barrier around each
step); efficiency = throughput(N) / (N x throughput(1)). On a CPU each process gets ``--threads``
threads, so N processes use N x threads cores: efficiency below 1 is the cost of the collectives, of
the augmentation every rank repeats for the whole global batch (about 4 % of a step here), and of a
machine that cannot give N processes N cores; the row of N unrelated one-process runs side by side
measures that last part alone.

A second table answers whether ``MAIN.py`` should be data-parallel: the share of one round's time spent
in the parts that could be split (the hardening step and the early-stop distance) next to the
inversion steps, which run one after another on one small attack set; its Amdahl bound says what
2 processes could save at best.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RECEIVE_NO_PROGRESS", "1")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from UTILS.errors import ArgumentParser, cli_entry  # noqa: E402
from UTILS.launch import free_port, local_rank_env  # noqa: E402
from flags import at_least, number_list  # noqa: E402


def _step_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str, mode: str) -> None:
    """Time the step on rank ``rank`` of ``world``. ``mode``: "global" (the project's DDP, global BatchNorm),
    "local" (DDP with each rank's own BatchNorm statistics: what the global BatchNorm costs) or "alone"
    (``world`` unrelated one-process runs at once)."""
    if mode == "alone":
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    else:
        os.environ.update(local_rank_env(rank, world, port))
    torch.set_num_threads(args.threads)
    from DATASETS.stats import get_usage
    from MODELS.simclr import build_model
    from Trainer.pretrain import simclr_step
    from UTILS import distributed as D
    from UTILS.runtime import seed_everything

    device = D.start(args.device, 0)
    seed_everything(0)
    usage = get_usage("cifar10")
    model = build_model(args.model).to(device)
    model = D.sync_batchnorm(model) if mode == "global" else model
    net = D.data_parallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(args.per_process * D.world_size(), 3, 32, 32, device=device)
    times = []
    for i in range(args.warmup + args.steps):
        D.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        simclr_step(net, optimizer, images, usage, 0.5)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        D.barrier()
        if i >= args.warmup:
            times.append(time.perf_counter() - began)
    if rank == 0:
        torch.save(times, Path(out) / "times.pt")
    D.stop()


def step_times(world: int, args: argparse.Namespace, mode: str = "global") -> list[float]:
    """Seconds per pre-training step with ``world`` spawned processes (``mode``: see ``_step_worker``)."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_step_worker, args=(world, free_port(), args, out, mode), nprocs=world, join=True,
                           start_method="spawn")
        return torch.load(Path(out) / "times.pt", weights_only=True)


def scaling_table(args: argparse.Namespace) -> str:
    """One row per process count; next to each N > 1, the same with each rank's own BatchNorm statistics
    (what the global BatchNorm's collectives cost: not the method's numbers, see docs/PERFORMANCE.md), and N unrelated
    one-process runs at the same time: what the machine gives N processes without any collective."""
    rows, base = [], None
    labels = {"global": "data-parallel", "local": "data-parallel, per-rank BatchNorm", "alone": "unrelated"}
    for world in args.procs:
        for mode in (("global", "local", "alone") if world > 1 else ("global",)):
            alone = mode == "alone"
            what = f"{world} {labels[mode]}"
            print(f"timing {what} process(es) ...", file=sys.stderr, flush=True)
            med = statistics.median(step_times(world, args, mode))
            rate = world * args.per_process / med
            base = rate if world == 1 else base
            eff = rate / (world * base) if base else float("nan")
            batch = f"{world} x {args.per_process}" if alone else f"{world * args.per_process}"
            rows.append(f"| {what} | {batch} | {med:.3f} | {rate:.1f} | {eff:.2f} |")
    head = ("| processes | batch | step (s, median) | images/s | efficiency |\n"
            "| --- | ---: | ---: | ---: | ---: |")
    return head + "\n" + "\n".join(rows)


def round_shares(args: argparse.Namespace) -> str:
    """Time one MAIN.py round's parts on one process: inversion steps, one hardening step, the distance."""
    from DATASETS.stats import get_usage, normalize
    from DATASETS.triggers import GroundTruthTrigger, white_square_trigger
    from INVERSION.hardening import harden_step, sorted_features, wasserstein_shift
    from MODELS.simclr import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    usage = get_usage("cifar10")
    device = torch.device(args.device if args.device != "auto" else "cpu")
    model = build_model(args.model).to(device)
    f = model.f
    trigger = GroundTruthTrigger(**white_square_trigger())  # moves itself to the images' device
    data = torch.rand(args.distance_images, 3, 32, 32, device=device)
    attack = data[:args.attack_size]
    opt = torch.optim.SGD(f.parameters(), lr=1e-3)

    def inversion_step(rows: int = args.attack_size):  # its floor: forward + backward w.r.t. the input
        f.eval().requires_grad_(False)
        x = attack[:rows].clone().requires_grad_(True)
        f(normalize(x, usage)).sum().backward()
        f.requires_grad_(True)

    def with_threads(n: int, fn):
        def run():
            torch.set_num_threads(n)
            try:
                fn()
            finally:
                torch.set_num_threads(args.threads)
        return run

    clean_sorted = sorted_features(f, data, usage)
    parts = {"inversion step": inversion_step,
             "hardening step": lambda: harden_step(f, opt, data[:args.attack_size], trigger, usage),
             "early-stop distance": lambda: wasserstein_shift(f, data, usage, trigger, clean_sorted),
             # the same 2 x threads cores spent inside one process, or on half the attack set per process
             "step, 2x threads": with_threads(2 * args.threads, inversion_step),
             "step, half the set": lambda: inversion_step(args.attack_size // 2)}
    return _round_table({name: _median_time(fn) for name, fn in parts.items()}, args)


def _median_time(fn, repeats: int = 5) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - began)
    return statistics.median(runs)


def _round_table(med: dict, args: argparse.Namespace) -> str:
    inversion = med["inversion step"] * args.re_steps
    split = med["hardening step"] + med["early-stop distance"]
    total = inversion + split
    best2 = total / (inversion + split / 2)
    return (f"| part of one round | seconds | share |\n| --- | ---: | ---: |\n"
            f"| {args.re_steps} inversion steps (attack_size {args.attack_size}) | {inversion:.2f} | "
            f"{inversion / total:.1%} |\n"
            f"| hardening step | {med['hardening step']:.3f} | {med['hardening step'] / total:.1%} |\n"
            f"| early-stop distance ({args.distance_images} images) | {med['early-stop distance']:.3f} | "
            f"{med['early-stop distance'] / total:.1%} |\n\n"
            f"Amdahl bound with 2 processes splitting hardening and distance perfectly: x{best2:.3f} per round\n\n"
            f"The inversion step itself on 2 x {args.threads} thread(s): {med['step, 2x threads']:.4f} s in one "
            f"process; half the attack set ({args.attack_size // 2} images) on {args.threads} thread(s), the most "
            f"a 2-process split could reach before its per-step collectives: {med['step, half the set']:.4f} s "
            f"(1 process, {args.threads} thread(s): {med['inversion step']:.4f} s)")


def parse_args(argv=None) -> argparse.Namespace:
    """The scaling benchmark's flags."""
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    p.add_argument("--procs", default="1,2", help="process counts, comma-separated; 1 first (the baseline)")
    p.add_argument("--model", default="resnet18_small")
    p.add_argument("--per_process", type=int, default=32, help="images per process and step")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--re_steps", type=int, default=300, help="MAIN.py's inversion steps per round (its default)")
    p.add_argument("--attack_size", type=int, default=32)
    p.add_argument("--distance_images", type=int, default=500, help="the early-stop set (1%% of CIFAR-10)")
    p.add_argument("--skip_round", action="store_true", help="only the scaling table")
    p.add_argument("--out", default="", help="also write the tables to this file")
    args = p.parse_args(argv)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        p.error(f"--device {args.device}: expected cpu (gloo) or cuda (NCCL)")
    at_least(p, args, 1, "per_process", "threads", "steps", "re_steps", "attack_size", "distance_images")
    at_least(p, args, 0, "warmup")
    args.procs = number_list(p, args.procs, "--procs", int, 1, 64)
    if args.procs[0] != 1:
        p.error("--procs must start with 1 (the baseline of the efficiency)")
    return args


@cli_entry
def main(argv=None) -> str:
    """The data-parallel scaling table (and one MAIN.py round's shares); prints and returns it as text."""
    args = parse_args(argv)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    text = (f"Data-parallel scaling, {args.model}, SimCLR pre-training step, {args.per_process} images per process, "
            f"device {args.device}, {args.threads} thread(s) per process, {os.cpu_count()} CPUs (load average "
            f"{load} at the start), torch {torch.__version__}\n\n"
            + scaling_table(args))
    if not args.skip_round:
        text += "\n\nMAIN.py, one round on one process (" + args.model + ")\n\n" + round_shares(args)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
