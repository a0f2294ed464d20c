"""BestAndLastCheckpoint, and forgetting the "best" checkpoints when the model changes kind (the hard prune).

Both reach into ModelCheckpoint's bookkeeping (Lightning 2.6 has no public API for either); this file is the one place
that does, so a Lightning upgrade is checked here (``tests/test_checkpointing.py``).
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` follows every epoch, as resuming needs (``cli.py`` uses it).

    Lightning 2.6 refreshes ``last.ckpt`` only at a step where a top-k checkpoint was saved, so with ``save_top_k: 1``
    a run whose final epochs do not improve the monitored score would leave ``last.ckpt`` pointing at an old epoch.

    Example::

        trainer = Trainer(callbacks=[BestAndLastCheckpoint(monitor="val/score", mode="max", save_last=True)])
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def forget_best_checkpoints(trainer: pl.Trainer) -> None:
    """Make every ModelCheckpoint of ``trainer`` choose its best among the checkpoints saved from now on.

    Used at the hard prune: the checkpoints before it are dense, and a dense one must not win "best" (nor be what
    ``SavePretrainedCallback(use_best=True)`` or ``--ckpt_path best`` loads). The files stay on disk.
    """
    for checkpoint in trainer.checkpoint_callbacks:
        if isinstance(checkpoint, ModelCheckpoint):
            checkpoint.best_k_models, checkpoint.kth_best_model_path = {}, ""
            checkpoint.best_model_score, checkpoint.best_model_path = None, ""
