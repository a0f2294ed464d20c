"""NxMSparsifyCallback: ADMM-induced N:M sparsity (NxMTransformer, NeurIPS 2021) for any LightningModule."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks._common import (
    OptimizerStepGate,
    log_now,
    non_finite_error,
    raise_if_non_finite,
    refuse_sharded_strategy,
    step_loss,
)
from callbacks._precision import pending_grad_scale, refuse_fp16_weights
from callbacks._targeting import TargetingCallback
from callbacks.protocols import ADMMEndListener, ScoredModule
from nxm_lightning.sparsity.admm import ADMMState, PenaltyMode, ZStepStats, check_admm_args
from nxm_lightning.sparsity.saliency import Saliency
from nxm_lightning.sparsity.schedule import PhasePlan, check_phase_points, check_rho_schedule, plan_phase, single_point
from nxm_lightning.sparsity.targets import Target, describe_targets, project_targets, restore_weights


class NxMSparsifyCallback(TargetingCallback):
    r"""Pull the targeted Linear weights towards N:M sparsity during fine-tuning with ADMM.

    Adds rho/2 ||W - Z + U||^2 to the objective of every targeted weight W, and every ``update_every`` optimizer
    steps (default: each epoch end) sets Z = Proj_NxM(W + U) and U += W - Z. The ADMM phase runs from the start point
    (``start_epoch`` / ``start_step`` / ``start_fraction``; default: the first step, so that training before it is a
    dense phase) to the end point (``end_epoch`` / ``end_step`` / ``end_fraction``; default: the end of fit). Then a
    :class:`HardPruneCallback` in the same trainer cuts the weights to exactly N:M and fine-tunes with the mask fixed:
    the end listeners (:meth:`add_end_listener`) are called with the masks when the phase ends.
    Without one, the weights are only *near* N:M when fit ends, and a warning says so.

    Convergence: every Z-step logs the primal residual, the dual residual, the mask flip rate, rho and the share of
    the way the W-step went towards Z - U (``admm/w_step_progress``); at the end of the phase one line says whether it
    converged (last flip rate <= ``converged_flip_rate`` and primal residual <= ``converged_residual``) or what to
    change. ``rho_factor: auto`` grows rho geometrically from ``rho`` to ``rho_max`` at the phase's last Z-step, so that
    the mask is free to move early and W sits on N:M at the end.

    Args:
        **targets: ``pattern`` (N:M, N kept of every M, NVIDIA's order; default ``"2:4"``), ``include``, ``exclude``,
            ``pattern_overrides``, ``strict``: which layers, as in :class:`~callbacks._targeting.TargetingCallback`.
        rho: penalty weight (the first one when it grows). ``penalty="decoupled"``: the fraction of (W - Z + U)
            removed after each optimizer step (default 0.01); ``"gradient"``: 1e-3..1e-2 as in the paper.
        rho_factor / rho_max: multiply rho by ``rho_factor`` at each Z-step up to ``rho_max`` (1.0: constant);
            ``"auto"`` (default): the factor that takes rho to ``rho_max`` (default 0.5) at the last Z-step of the
            phase. A factor too small to reach ``rho_max`` inside the phase is refused before training starts.
        penalty: ``"decoupled"`` (default) applies W -= rho (W - Z + U) after the optimizer step, outside Adam's
            per-coordinate normalisation; ``"gradient"`` adds rho (W - Z + U) to W.grad before it (the paper's way).
        saliency: what the Z-step (and the hard prune that follows) keeps in each group: ``"magnitude"`` of W + U
            (the paper's) or ``"fisher"``, the running mean of squared gradients times (W + U)^2.
        update_every: Z/U update every this many optimizer steps (default 20); None: once per epoch (the paper).
            The defaults are those of ``configs/glue.yaml``, measured to converge (docs/RESULTS.md); the paper's
            recipe is ``penalty="gradient", rho=1e-3, rho_factor=1.0, rho_max=None, update_every=None``.
        start_epoch / start_step / start_fraction: when the ADMM phase starts (at most one; none: at the first step).
        end_epoch / end_step / end_fraction: when it ends (at most one; none: at the end of fit). With
            ``update_every: null`` the phase ends at the first epoch end at or after the end point.
        converged_flip_rate / converged_residual: the thresholds of the convergence verdict.
        end_when_converged: end the phase at the first Z-step that meets both thresholds (more steps are left for
            fine-tuning with the mask fixed).
        eval_pruned: at each validation also score the model with every target projected to N:M (the cost of a hard
            prune at that moment), logged as ``val_pruned/score``; needs the module's ``evaluate_score``
            (:class:`~callbacks.protocols.ScoredModule`).
        log_per_layer: also log each layer's primal residual under ``admm_layers/``.

    Example::

        # dense for the first quarter of training, ADMM until 60% (rho 0.01 -> 0.5), then prune and fine-tune
        sparsify = NxMSparsifyCallback(pattern="2:4", penalty="decoupled", rho=0.01, rho_factor="auto", rho_max=0.5,
                                       update_every=20, start_fraction=0.25, end_fraction=0.6)
        trainer = Trainer(callbacks=[sparsify, HardPruneCallback()])
    """

    def __init__(
        self,
        *,
        rho: float = 0.01,
        rho_factor: float | Literal["auto"] = "auto",
        rho_max: float | None = 0.5,
        penalty: PenaltyMode = "decoupled",
        saliency: Saliency = "magnitude",
        update_every: int | None = 20,
        start_epoch: int | None = None,
        start_step: int | None = None,
        start_fraction: float | None = None,
        end_epoch: int | None = None,
        end_step: int | None = None,
        end_fraction: float | None = None,
        converged_flip_rate: float = 0.005,
        converged_residual: float = 1e-3,
        end_when_converged: bool = False,
        eval_pruned: bool = False,
        log_per_layer: bool = True,
        **targets: Any,
    ) -> None:
        super().__init__(**targets)
        if update_every is not None and update_every < 1:
            raise ValueError(f"update_every={update_every} must be >= 1 (optimizer steps), or null for once per epoch.")
        self.start = single_point("start", start_epoch, start_step, start_fraction)
        self.end = single_point("end", end_epoch, end_step, end_fraction)
        check_phase_points(self.start, self.end)
        check_rho_schedule(rho, rho_factor, rho_max)
        # Validated now, so that a bad config fails before any model is loaded (TargetSpec checks the patterns); an
        # auto factor is resolved by the phase plan at train start, and checked here as the constant schedule.
        check_admm_args(rho, 1.0 if rho_factor == "auto" else rho_factor, rho_max, penalty, saliency)
        if not (0 <= converged_flip_rate <= 1 and converged_residual >= 0):
            raise ValueError(
                f"converged_flip_rate={converged_flip_rate} must be in [0, 1] and converged_residual={converged_residual} >= 0."
            )
        self.rho, self.rho_factor, self.rho_max = rho, rho_factor, rho_max
        self.penalty, self.saliency = penalty, saliency
        self.update_every = update_every
        self.converged_flip_rate, self.converged_residual = converged_flip_rate, converged_residual
        self.end_when_converged = end_when_converged
        self.eval_pruned = eval_pruned
        self.log_per_layer = log_per_layer
        self.targets: list[Target] = []
        self.admm: ADMMState | None = None
        self.finished = False
        self.last_stats: ZStepStats | None = None
        self.plan: PhasePlan | None = None  # at train start, once the length of training is known
        self._pending_state: dict[str, Any] | None = None
        self._end_listeners: list[ADMMEndListener] = []
        self._step_gate = OptimizerStepGate()

    def add_end_listener(self, listener: ADMMEndListener) -> None:
        """Call ``listener.on_admm_end(trainer, pl_module, masks)`` once when the ADMM phase ends, with the N:M masks
        a cut keeps under this callback's saliency (:class:`~callbacks.protocols.ADMMEndListener`).

        A :class:`HardPruneCallback` in the same trainer subscribes itself at fit start (see its ``after_admm``);
        subscribing it here first links the two explicitly. Subscribing a listener again does nothing.
        """
        if not isinstance(listener, ADMMEndListener):
            raise TypeError(
                f"add_end_listener takes an object with an on_admm_end(trainer, pl_module, masks) method "
                f"(callbacks.protocols.ADMMEndListener), such as a HardPruneCallback; got {listener!r}."
            )
        if not any(known is listener for known in self._end_listeners):
            self._end_listeners.append(listener)

    @property
    def end_listeners(self) -> tuple[ADMMEndListener, ...]:
        """The listeners :meth:`add_end_listener` subscribed, in order."""
        return tuple(self._end_listeners)

    # ---- setup ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded_strategy(trainer, type(self).__name__)
        self.targets = self.spec.select(pl_module)
        refuse_fp16_weights(trainer, self.targets, type(self).__name__)
        # The factor is the plan's (rho_factor: auto), set at train start before the phase can begin.
        self.admm = ADMMState(self.targets, rho=self.rho, rho_factor=1.0 if self.rho_factor == "auto" else self.rho_factor,
                              rho_max=self.rho_max, penalty=self.penalty, saliency=self.saliency)  # fmt: skip
        if self.eval_pruned and not isinstance(pl_module, ScoredModule):
            raise ValueError(
                f"eval_pruned: true needs the LightningModule to define evaluate_score(dataloaders) -> float; "
                f"{type(pl_module).__name__} does not. Set eval_pruned: false or add the method."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.admm is not None
        if self._pending_state is not None:
            self.finished = bool(self._pending_state["finished"])
            if "admm" in self._pending_state:
                self.admm.load_state_dict(self._pending_state["admm"])
            self._pending_state = None
        rank_zero_info(f"NxMSparsifyCallback targets ({self.admm.penalty} penalty, rho={self.admm.rho}):\n"
                       + describe_targets(pl_module, self.targets))  # fmt: skip
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                logger.experiment.add_custom_scalars(_CUSTOM_SCALARS)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.admm is not None
        self._plan_phase(trainer)
        self._step_gate.reset(trainer)
        self._maybe_start(trainer)

    def _plan_phase(self, trainer: pl.Trainer) -> None:
        """Plan the phase in optimizer steps (:func:`~nxm_lightning.sparsity.schedule.plan_phase`) before step one."""
        assert self.admm is not None
        total = int(trainer.estimated_stepping_batches)
        batches = trainer.num_training_batches  # inf for an iterable without a length
        per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches)) if math.isfinite(batches) else total
        self.plan = plan_phase(self.start, self.end, total, per_epoch, self.update_every, self.rho, self.rho_factor,
                               self.rho_max)  # fmt: skip
        self.admm.rho_factor = self.plan.rho_factor

    def _maybe_start(self, trainer: pl.Trainer) -> None:
        assert self.admm is not None
        assert self.plan is not None
        if self.admm.initialized or self.finished or trainer.global_step < self.plan.start_step:
            return
        self.admm.initialize()
        rank_zero_info(
            f"NxMSparsifyCallback: ADMM phase starts at step {trainer.global_step} (ends at step "
            f"{self.plan.end_step if self.plan.end_step is not None else 'the end of fit'}; "
            f"{self.plan.zsteps} Z-steps; rho {self.admm.rho:.3g} x{self.admm.rho_factor:.4g} per Z-step"
            + (f", up to {self.admm.rho_max:.3g})." if self.admm.rho_max is not None else ").")
        )

    # ---- the ADMM loop -------------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.admm is not None and self.admm.initialized and not self.finished

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.active:
            return
        assert self.admm is not None
        # Under 16-mixed the gradients are unscaled here, except with a fused optimizer (see pending_grad_scale).
        scale = pending_grad_scale(trainer, optimizer)
        self.admm.accumulate_fisher(scale)
        if self.admm.penalty == "gradient":
            self.admm.add_penalty_grad(scale)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._step_gate.stepped(trainer):
            return
        if not self.active:
            self._maybe_start(trainer)
            return
        assert self.admm is not None
        loss = step_loss(outputs)
        if loss is not None and not bool(torch.isfinite(loss).all()):
            layer = self.admm.non_finite_layer()
            raise non_finite_error("in the training loss" + (f" and in layer {layer!r}" if layer else ""), trainer, "ADMM")
        if self.admm.penalty == "decoupled":
            self.admm.apply_decoupled_pull()
        if self.update_every is None:
            return  # Z-steps and the end of the phase at epoch ends
        converged = False
        if trainer.global_step % self.update_every == 0:
            converged = self._z_step(trainer)
        if converged and self.end_when_converged:
            self._end(trainer, pl_module, f"step {trainer.global_step} (converged)")
        elif self._past_end(trainer):
            self._end(trainer, pl_module, f"step {trainer.global_step}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active or self.update_every is not None:
            return
        converged = self._z_step(trainer)
        if (converged and self.end_when_converged) or self._past_end(trainer):
            self._end(trainer, pl_module, f"the end of epoch {trainer.current_epoch}")

    def _past_end(self, trainer: pl.Trainer) -> bool:
        """The planned end of the phase is reached (never, without an end point: the phase lasts to fit end)."""
        assert self.plan is not None
        return self.plan.end_step is not None and trainer.global_step >= self.plan.end_step

    def _z_step(self, trainer: pl.Trainer) -> bool:
        """One Z/U update, logged; returns whether it met the convergence thresholds."""
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
        if math.isfinite(stats.w_step_progress):
            metrics["admm/w_step_progress"] = stats.w_step_progress
        if self.log_per_layer:
            metrics.update({f"admm_layers/{name}": value for name, value in stats.per_layer_primal.items()})
        log_now(trainer, metrics)
        return stats.converged(self.converged_flip_rate, self.converged_residual)

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str) -> None:
        assert self.admm is not None
        self.finished = True
        rank_zero_info(f"NxMSparsifyCallback: ADMM phase ended at {when} after {self.admm.zstep_count} Z-steps. "
                       + self.verdict())  # fmt: skip
        masks = self.admm.cut_masks()
        self.admm.release()
        for listener in self._end_listeners:
            listener.on_admm_end(trainer, pl_module, masks)

    def verdict(self) -> str:
        """One line: did the phase converge (mask settled, W on N:M), and if not, what to change."""
        stats = self.last_stats
        if stats is None:
            return (
                "NOT converged: no Z-step was taken. Lengthen the phase or Z-step more often (update_every), so that "
                "several Z/U updates fit in it."
            )
        measured = (
            f"last mask flip rate {stats.mask_flip_rate:.2%} (threshold {self.converged_flip_rate:.2%}), primal residual "
            f"{stats.primal_residual:.2g} (threshold {self.converged_residual:.2g}), rho {stats.rho:.3g}"
        )
        if stats.converged(self.converged_flip_rate, self.converged_residual):
            return f"Converged: {measured}."
        hint = (
            "the mask still moves: grow rho further (rho_max, or rho_factor: auto) or lengthen the phase"
            if stats.mask_flip_rate > self.converged_flip_rate
            else "W is not yet on N:M: raise rho_max (the pull at the end of the phase) or Z-step less often"
        )
        return f"NOT converged ({measured}): {hint}. The hard prune will cost accuracy."

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.finished and not self._end_listeners:
            rank_zero_warn(
                "NxMSparsifyCallback: fit ended during the ADMM phase and no HardPruneCallback is attached, so the "
                "weights are near N:M but NOT exactly N:M. Add HardPruneCallback to the trainer's callbacks to cut "
                "them to N:M (and fine-tune with the mask fixed), or project them yourself with nxm_lightning.nxm_project."
            )
        elif not self.finished and self.active:
            self._end(trainer, pl_module, "the end of fit")

    # ---- pruned evaluation ---------------------------------------------------------------------------------------

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.eval_pruned or trainer.sanity_checking or not self.active:
            return
        assert isinstance(pl_module, ScoredModule)  # checked at setup
        with restore_weights(self.targets):
            project_targets(self.targets)
            score = float(pl_module.evaluate_score(trainer.val_dataloaders))
        log_now(trainer, {"val_pruned/score": score})
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
        "rho and W-step progress": ["Multiline", ["admm/rho", "admm/w_step_progress"]],
        "per-layer primal residual": ["Multiline", ["admm_layers/.*"]],
        "pruned vs dense score": ["Multiline", ["val/score", "val_pruned/score"]],
    }
}
