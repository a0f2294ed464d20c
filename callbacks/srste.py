"""SRSTECallback: train through the N:M projection of the dense weights (SR-STE) until HardPruneCallback's cut."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from callbacks._common import refuse_sharded_strategy
from callbacks._precision import refuse_fp16_weights
from callbacks._targeting import TargetingCallback
from callbacks.hard_prune import HardPruneCallback
from callbacks.nxm_sparsify import NxMSparsifyCallback
from nxm_lightning.sparsity.srste import DEFAULT_DECAY, ProjectedForward, check_decay


class SRSTECallback(TargetingCallback):
    r"""Train the targeted Linear layers as N:M sparse from the first step while their mask keeps moving (SR-STE,
    Zhou et al., ICLR 2021), until the trainer's :class:`HardPruneCallback` fixes it.

    Each forward pass uses ``W * mask(W)`` (the N largest magnitudes of every M, recomputed at every pass); the
    gradient reaches every entry of the dense W, plus ``decay * W`` on the dropped ones
    (:mod:`nxm_lightning.sparsity.srste`). Validation therefore scores the N:M model. The HardPruneCallback's cut
    (``at_step`` or ``at_epoch``: where the mask stops moving) keeps the current mask, since it ranks the same
    magnitudes, and its masked fine-tuning follows. Checkpoints hold the dense W (a resume continues SR-STE).

    Args:
        **targets: ``pattern`` (N:M, N kept of every M, NVIDIA's order; default ``"2:4"``), ``include``, ``exclude``,
            ``pattern_overrides``, ``strict``: as in :class:`~callbacks._targeting.TargetingCallback`; the
            HardPruneCallback must target the same layers.
        decay: SR-STE's lambda_W, the decay of the dropped entries (default 2e-4, the paper's); 0: a plain
            straight-through estimator.

    Example::

        # SR-STE for the first 600 optimizer steps, then the mask fixed
        trainer = Trainer(callbacks=[SRSTECallback(pattern="2:4"), HardPruneCallback(pattern="2:4", at_step=600)])
    """

    def __init__(self, *, decay: float = DEFAULT_DECAY, **targets: Any) -> None:
        super().__init__(**targets)
        check_decay(decay)
        self.decay = decay
        self._projection: ProjectedForward | None = None
        self._prune: HardPruneCallback | None = None

    def _cut(self, trainer: pl.Trainer) -> HardPruneCallback:
        """The trainer's HardPruneCallback whose cut ends SR-STE; one ValueError for each setup that has none."""
        if any(isinstance(cb, NxMSparsifyCallback) for cb in trainer.callbacks):
            raise ValueError("SRSTECallback and NxMSparsifyCallback both choose the N:M mask during training: use one of them.")
        prunes = [cb for cb in trainer.callbacks if isinstance(cb, HardPruneCallback)]
        if len(prunes) != 1 or prunes[0].spec != self.spec:
            raise ValueError(
                f"SRSTECallback trains until a HardPruneCallback cuts the weights, and needs exactly one with its targets "
                f"({self.spec}); the trainer has {len(prunes)}"
                + (" with other targets" if len(prunes) == 1 else "")
                + ". Add HardPruneCallback with the same pattern/include/exclude and at_step or at_epoch."
            )
        prune = prunes[0]
        if prune.at_step is None and prune.at_epoch is None:
            raise ValueError(
                "SRSTECallback: the HardPruneCallback has neither at_step nor at_epoch, so it cuts at fit start and "
                "SR-STE would never run. Set at_step or at_epoch on it (where the mask stops moving)."
            )
        return prune

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_sharded_strategy(trainer, type(self).__name__)
        self._prune = self._cut(trainer)
        targets = self.spec.select(pl_module)
        refuse_fp16_weights(trainer, targets, type(self).__name__)
        # Resumed after the cut, the first training batch switches the projection off (on_train_batch_start): the
        # HardPruneCallback restores its masks in its own on_fit_start, which may run after this one.
        self._projection = ProjectedForward(targets, self.decay)
        rank_zero_info(
            f"SRSTECallback: {len(targets)} layers train through their N:M projection (decay {self.decay:g}) until "
            "the HardPruneCallback's cut."
        )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # The cut may have happened in HardPruneCallback's hook of this batch, before or after this one: the projection
        # of N:M weights is the weights themselves, so the order does not matter; switching off saves the work.
        if self._projection is not None and self._prune is not None and self._prune.pruned:
            self._projection.active = False

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._projection is not None:
            self._projection.remove()
            self._projection = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)  # a module left with a replaced forward would surprise whoever uses it next
