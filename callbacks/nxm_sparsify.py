"""NxMSparsifyCallback: ADMM-induced N:M sparsity (NxMTransformer, NeurIPS 2021) for any LightningModule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks._common import (
    optimizer_stepped,
    project_targets,
    raise_if_non_finite,
    refuse_sharded_strategy,
    restore_weights,
)
from nxm_lightning.admm import PENALTY_MODES, ADMMState, PenaltyMode, ZStepStats
from nxm_lightning.targets import Target, TargetSpec, describe_targets


class NxMSparsifyCallback(Callback):
    r"""Pull the targeted Linear weights towards N:M sparsity during fine-tuning with ADMM.

    Adds rho/2 ||W - Z + U||^2 to the objective of every targeted weight W, and every ``update_every`` optimizer
    steps (default: each epoch end) sets Z = Proj_NxM(W + U) and U += W - Z. The ADMM phase ends at ``end_epoch``,
    ``end_step`` or ``end_fraction`` of training (default: the end of fit); then a :class:`HardPruneCallback` in the
    same trainer cuts the weights to exactly N:M and fine-tunes with the mask fixed. Without one, the weights are
    only *near* N:M when fit ends, and a warning says so.

    Args:
        pattern: N:M, N kept of every M consecutive input features (NVIDIA's order; the paper writes "MxN"). ``"2:4"``.
        include / exclude: regexes over module names; default: every Linear of the transformer blocks. Heads and any
            submodule named ``teacher`` are never targeted.
        pattern_overrides: ``{regex: "N:M"}`` per-layer patterns, e.g. ``{"intermediate": "1:4"}``.
        strict: error instead of warning for a layer whose ``in_features`` is not a multiple of M.
        rho: penalty weight. ``penalty="gradient"``: 1e-3..1e-2 as in the paper; ``"decoupled"``: the fraction of
            (W - Z + U) removed after each optimizer step, e.g. 0.01.
        rho_factor / rho_max: multiply rho by ``rho_factor`` at each Z-step up to ``rho_max`` (1.0: constant).
        penalty: ``"gradient"`` adds rho (W - Z + U) to W.grad before the optimizer step (the paper's way);
            ``"decoupled"`` applies W -= rho (W - Z + U) after it, outside Adam's per-coordinate normalisation.
        update_every: Z/U update every this many optimizer steps; None: once per epoch (the paper).
        end_epoch / end_step / end_fraction: when the ADMM phase ends (at most one; none: at the end of fit).
        eval_pruned: at each validation also score the model with every target projected to N:M (the cost of a hard
            prune at that moment), logged as ``val_pruned/score``; needs the module's ``evaluate_score``.
        log_per_layer: also log each layer's primal residual under ``admm_layers/``.

    Example::

        trainer = Trainer(callbacks=[NxMSparsifyCallback("2:4", rho=0.01, penalty="decoupled", update_every=50,
                                                         end_fraction=0.5), HardPruneCallback()])
    """

    def __init__(
        self,
        pattern: str = "2:4",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        pattern_overrides: dict[str, str] | None = None,
        strict: bool = False,
        rho: float = 1e-3,
        rho_factor: float = 1.0,
        rho_max: float | None = None,
        penalty: PenaltyMode = "gradient",
        update_every: int | None = None,
        end_epoch: int | None = None,
        end_step: int | None = None,
        end_fraction: float | None = None,
        eval_pruned: bool = False,
        log_per_layer: bool = True,
    ) -> None:
        if penalty not in PENALTY_MODES:
            raise ValueError(f"penalty={penalty!r} is not valid; choose one of {list(PENALTY_MODES)}.")
        if update_every is not None and update_every < 1:
            raise ValueError(f"update_every={update_every} must be >= 1 (optimizer steps), or null for once per epoch.")
        ends = {
            k: v for k, v in (("end_epoch", end_epoch), ("end_step", end_step), ("end_fraction", end_fraction)) if v is not None
        }
        if len(ends) > 1:
            raise ValueError(f"Set at most one of end_epoch, end_step, end_fraction; got {ends}.")
        if end_fraction is not None and not 0 < end_fraction <= 1:
            raise ValueError(f"end_fraction={end_fraction} must be in (0, 1].")
        if (end_epoch is not None and end_epoch < 1) or (end_step is not None and end_step < 1):
            raise ValueError(f"end_epoch / end_step must be >= 1; got {ends}.")
        self.spec = TargetSpec(pattern, include, exclude, pattern_overrides, strict)
        self.admm_args = {"rho": rho, "rho_factor": rho_factor, "rho_max": rho_max, "penalty": penalty}
        # Validate rho now, so that a bad config fails before any model is loaded (TargetSpec checks the patterns).
        ADMMState([], **self.admm_args)
        self.update_every = update_every
        self.end_epoch, self.end_step, self.end_fraction = end_epoch, end_step, end_fraction
        self.eval_pruned = eval_pruned
        self.log_per_layer = log_per_layer
        self.targets: list[Target] = []
        self.admm: ADMMState | None = None
        self.finished = False
        self.last_stats: ZStepStats | None = None
        self._pending_state: dict[str, Any] | None = None
        self._end_listeners: list[Callable[[pl.Trainer, pl.LightningModule], None]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(pattern=self.spec.pattern, include=self.spec.include)

    def add_end_listener(self, listener: Callable[[pl.Trainer, pl.LightningModule], None]) -> None:
        """Call ``listener(trainer, pl_module)`` when the ADMM phase ends (HardPruneCallback registers itself)."""
        self._end_listeners.append(listener)

    # ---- setup ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded_strategy(trainer, type(self).__name__)
        self.targets = self.spec.select(pl_module)
        self.admm = ADMMState(self.targets, **self.admm_args)
        if self.eval_pruned and not callable(getattr(pl_module, "evaluate_score", None)):
            raise ValueError(
                f"eval_pruned: true needs the LightningModule to define evaluate_score(dataloaders) -> float; "
                f"{type(pl_module).__name__} does not. Set eval_pruned: false or add the method."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.admm is not None
        if self._pending_state is not None:
            self.finished = bool(self._pending_state["finished"])
            if not self.finished:
                self.admm.load_state_dict(self._pending_state["admm"])
            self._pending_state = None
        rank_zero_info(f"NxMSparsifyCallback targets ({self.admm.penalty} penalty, rho={self.admm.rho}):\n"
                       + describe_targets(pl_module, self.targets))  # fmt: skip
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                logger.experiment.add_custom_scalars(_CUSTOM_SCALARS)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.admm is not None
        if not self.admm.initialized and not self.finished:
            self.admm.initialize()
        self._seen_step = trainer.global_step

    # ---- the ADMM loop -------------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.admm is not None and self.admm.initialized and not self.finished

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.active and self.admm.penalty == "gradient":  # type: ignore[union-attr]
            self.admm.add_penalty_grad()  # type: ignore[union-attr]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active or not optimizer_stepped(self, trainer):
            return
        assert self.admm is not None
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            raise_if_non_finite(self.admm.non_finite_layer() or "(none of the weights: the loss)", trainer, "in the loss")
        if self.admm.penalty == "decoupled":
            self.admm.apply_decoupled_pull()
        if self.update_every is not None and trainer.global_step % self.update_every == 0:
            self._z_step(trainer)
        if (self.end_step is not None and trainer.global_step >= self.end_step) or (
            self.end_fraction is not None
            and trainer.global_step >= math.ceil(self.end_fraction * trainer.estimated_stepping_batches)
        ):
            self._end(trainer, pl_module, f"step {trainer.global_step}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        if self.update_every is None:
            self._z_step(trainer)
        if self.end_epoch is not None and trainer.current_epoch + 1 >= self.end_epoch:
            self._end(trainer, pl_module, f"the end of epoch {trainer.current_epoch}")

    def _z_step(self, trainer: pl.Trainer) -> None:
        assert self.admm is not None
        raise_if_non_finite(self.admm.non_finite_layer(), trainer, "before the Z-step")
        stats = self.admm.z_step()
        self.last_stats = stats
        metrics = {
            "admm/primal_residual": stats.primal_residual,
            "admm/dual_residual": stats.dual_residual,
            "admm/rho": stats.rho,
            "admm/mask_flip_rate": stats.mask_flip_rate,
        }
        if not all(math.isfinite(v) for v in metrics.values()):
            raise_if_non_finite(self.admm.non_finite_layer() or "(residual)", trainer, "in the ADMM residuals")
        if self.log_per_layer:
            metrics.update({f"admm_layers/{name}": value for name, value in stats.per_layer_primal.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str) -> None:
        assert self.admm is not None
        self.finished = True
        rank_zero_info(f"NxMSparsifyCallback: ADMM phase ended at {when} after {self.admm.zstep_count} Z-steps.")
        self.admm.release()
        for listener in self._end_listeners:
            listener(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.finished and not self._end_listeners:
            rank_zero_warn(
                "NxMSparsifyCallback: fit ended during the ADMM phase and no HardPruneCallback is attached, so the "
                "weights are near N:M but NOT exactly N:M. Add HardPruneCallback to the trainer's callbacks to cut "
                "them to N:M (and fine-tune with the mask fixed), or project them yourself with nxm_lightning.nxm_project."
            )
        elif not self.finished:
            self._end(trainer, pl_module, "the end of fit")

    # ---- pruned evaluation ---------------------------------------------------------------------------------------

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.eval_pruned or trainer.sanity_checking or not self.active:
            return
        with restore_weights(self.targets):
            project_targets(self.targets)
            score = float(pl_module.evaluate_score(trainer.val_dataloaders))
        for logger in trainer.loggers:
            logger.log_metrics({"val_pruned/score": score}, step=trainer.global_step)
        trainer.callback_metrics["val_pruned/score"] = torch.tensor(score)

    # ---- checkpointing -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.finished:
            return {"finished": True}  # Z and U are no longer needed: keep checkpoints small
        if self.admm is None or not self.admm.initialized:
            return {}
        return {"admm": self.admm.state_dict(), "finished": False}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict or None


_CUSTOM_SCALARS = {
    "ADMM": {
        "residuals": ["Multiline", ["admm/primal_residual", "admm/dual_residual"]],
        "mask flip rate": ["Multiline", ["admm/mask_flip_rate"]],
        "rho": ["Multiline", ["admm/rho"]],
        "per-layer primal residual": ["Multiline", ["admm_layers/.*"]],
        "pruned vs dense score": ["Multiline", ["val/score", "val_pruned/score"]],
    }
}
