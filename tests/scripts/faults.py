"""Fault injections for the CLI tests (see fastcli.run_fast's ``inject``): failures that no flag
provokes reliably, injected inside the child process just before the script runs."""
import torch

import Trainer.unlearn


def nan_unlearn_loss_in_epoch_2() -> None:
    """The unlearning loss of the first batch of epoch 2 becomes NaN (the NaN/inf guard must stop there)."""
    original = Trainer.unlearn.unlearn_loss
    original_epoch = Trainer.unlearn.unlearn_epoch
    state = {"epoch": 0}

    def epoch(*args, **kwargs):
        state["epoch"] += 1
        return original_epoch(*args, **kwargs)

    def loss(*args, **kwargs):
        value, parts = original(*args, **kwargs)
        if state["epoch"] == 2:
            value = value * torch.tensor(float("nan"))
        return value, parts

    Trainer.unlearn.unlearn_loss = loss
    Trainer.unlearn.unlearn_epoch = epoch


def ctrl_c_in_downstream_epoch_2() -> None:
    """A real SIGINT reaches the classifier's process while its epoch 2 ends (no race with a poller)."""
    import os
    import signal

    import Trainer.downstream

    original = Trainer.downstream.train_downstream

    def train(*args, on_epoch=None, **kwargs):
        def hook(row):
            if row["epoch"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
            on_epoch(row)

        return original(*args, on_epoch=hook, **kwargs)

    Trainer.downstream.train_downstream = train


class _FullDisk:
    """A file that takes ``room`` bytes, then fails every write as a full disk does (ENOSPC)."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        import errno

        size = len(memoryview(data).cast("B"))
        if size > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= size
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def disk_full_for_checkpoints() -> None:
    """Every ``.pth`` file written through UTILS.io.atomic_write hits a full disk after 100 bytes (inside
    torch.save, which turns the OSError into a RuntimeError); other files are written normally."""
    import UTILS.io

    original = UTILS.io._open_temp

    def open_temp(fd, path):
        handle = original(fd, path)
        return _FullDisk(handle, 100) if str(path).endswith(".pth") else handle

    UTILS.io._open_temp = open_temp


def cpu_out_of_memory_in_first_round() -> None:
    """The first inversion round fails to allocate, as torch's CPU allocator reports it."""
    import INVERSION.iterative

    def invert(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 12884901888 bytes. Error code 12 (Cannot allocate memory)")

    INVERSION.iterative.invert_trigger = invert


def cuda_out_of_memory_in_features() -> None:
    """Feature extraction runs out of GPU memory, as torch reports it (a multi-line OutOfMemoryError)."""
    import Trainer.downstream

    def extract(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                                     "of 79.25 GiB of which 1.2 GiB is free.\nOf the allocated memory ...")

    Trainer.downstream.extract_features_sharded = extract


def _signal_self(sig: int, times: int = 1) -> None:
    """Deliver ``sig`` to this process now (the handler runs before the next Python line)."""
    import os

    for _ in range(times):
        os.kill(os.getpid(), sig)


def _sigterm_on_call(module: str, name: str) -> None:
    """Make ``module.name`` send this process SIGTERM each time it is called, then do its work."""
    import importlib
    import signal

    owner = importlib.import_module(module)
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        _signal_self(signal.SIGTERM)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def sigterm_while_loading_data() -> None:
    """SIGTERM reaches the process while it reads a dataset split (before any loop can stop gracefully)."""
    _sigterm_on_call("DATASETS.tensors", "load_split")


def sigterm_while_extracting_features() -> None:
    """SIGTERM reaches the downstream classifier while it extracts the encoder's features."""
    _sigterm_on_call("Trainer.downstream", "extract_features_sharded")


def double_ctrl_c_in_first_round() -> None:
    """Ctrl-C twice while round 0 hardens (its trigger file is written, its state is not): abort at once."""
    import signal

    import INVERSION.iterative

    original = INVERSION.iterative.IterativeInversion.harden

    def harden(self, *args, **kwargs):
        if self.state.round == 0:
            _signal_self(signal.SIGINT, times=2)
        return original(self, *args, **kwargs)

    INVERSION.iterative.IterativeInversion.harden = harden


def double_ctrl_c_in_badencoder_epoch_1() -> None:
    """Ctrl-C twice during BadEncoder's first epoch (reference.npz is written, no checkpoint yet)."""
    import signal

    import Trainer.badencoder

    original = Trainer.badencoder.badencoder_epoch

    def epoch(*args, **kwargs):
        if kwargs.get("desc", "").startswith("badencoder epoch 1/"):
            _signal_self(signal.SIGINT, times=2)
        return original(*args, **kwargs)

    Trainer.badencoder.badencoder_epoch = epoch


def umask_027() -> None:
    """Run with umask 027 (group may read, others nothing), as on a shared machine."""
    import os

    os.umask(0o027)


def _small_synthetic() -> None:
    from DATASETS import synthetic

    synthetic.SIZES["synthetic"] = {"train": 3200, "test": 64}  # as tests/scripts/test_demo.py
    synthetic.SIZES["synthetic_down"] = {"train": 200, "test": 100}


def ctrl_c_in_demo_stage_2() -> None:
    """Ctrl-C inside the demo's second stage (pre-training), on small embedded datasets."""
    import Trainer.pretrain

    _small_synthetic()

    def interrupted(cfg):
        raise KeyboardInterrupt

    Trainer.pretrain.run_pretrain = interrupted


def ctrl_c_in_demo_stage_1() -> None:
    """Ctrl-C while the demo prepares its datasets (outside any entry script)."""
    import DEMO.demo

    def interrupted(self):
        raise KeyboardInterrupt

    DEMO.demo.DemoRun.prepare = interrupted
