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
