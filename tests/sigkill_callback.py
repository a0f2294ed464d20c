"""A callback for the command-line resume tests: a crash at a chosen epoch of a run that was not resumed."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class SigkillAtEpoch(Callback):
    """SIGKILLs the process at the start of epoch ``epoch`` (after the previous epoch's ``last.ckpt``), unless the
    fit resumed from a checkpoint: the same config then runs to its end, as a user's command does after a crash."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGKILL)
