"""Lightning-side helpers the callbacks share: when an optimizer step happened, divergence errors, logging, the
strategy and export-folder checks. The tensor work they call lives in :mod:`nxm_lightning.sparsity`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from nxm_lightning.sparsity.export import check_export_target


class OptimizerStepGate:
    """Tells a callback's ``on_train_batch_end`` whether an optimizer step was taken since it last asked: with
    gradient accumulation most batches end without one, and what a callback does "after each step" must skip them."""

    def __init__(self) -> None:
        self._seen_step: int | None = None

    def reset(self, trainer: pl.Trainer) -> None:
        """Start counting from the current step (at train start: a resumed run has taken its steps already)."""
        self._seen_step = trainer.global_step

    def stepped(self, trainer: pl.Trainer) -> bool:
        """True once per optimizer step (``global_step`` advanced since the last call)."""
        stepped = trainer.global_step != self._seen_step
        self._seen_step = trainer.global_step
        return stepped


# What to change when training diverges, by phase: rho only exists in the ADMM phase.
DIVERGENCE_HINTS = {
    "dense": "Lower the learning rate or clip gradients (trainer.gradient_clip_val)",
    "ADMM": "Use a smaller rho or learning rate (or gradient clipping)",
    "masked": "Lower the learning rate or clip gradients (trainer.gradient_clip_val)",
}


def non_finite_error(what: str, trainer: pl.Trainer, phase: str) -> FloatingPointError:
    """The error that stops a diverged run: what went NaN/Inf, at which step and in which phase, and what to change.

    Raised from hooks that run before the checkpoint of that step is written, so none holds the bad values.
    """
    hint = DIVERGENCE_HINTS[phase]
    if trainer.precision == "16-true":
        hint = (
            "Train in '16-mixed' or 'bf16-mixed', not '16-true' (Adam's eps (1e-8) is 0 in fp16: a weight whose gradient "
            f"is zero turns NaN at its first step). Otherwise, {hint[0].lower()}{hint[1:]}"
        )
    return FloatingPointError(
        f"Non-finite values (NaN/Inf) {what} at global step {trainer.global_step}, in the {phase} phase: training "
        f"diverged. {hint}, then restart from the last good checkpoint. No checkpoint was written with these values."
    )


def step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss in ``on_train_batch_end``'s ``outputs`` (a dict with "loss" or the tensor itself), or None."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss if isinstance(loss, torch.Tensor) else None


def raise_if_non_finite(layer: str | None, trainer: pl.Trainer, when: str) -> None:
    """Stop the run (before any checkpoint is written with the bad weights) when ADMM state went NaN/Inf."""
    if layer is not None:
        raise non_finite_error(f"{when} in layer {layer!r}", trainer, "ADMM")


SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def refuse_sharded_strategy(trainer: pl.Trainer, who: str) -> None:
    """N:M groups, Z and U need each process to hold whole weights: refuse strategies that shard them."""
    name = type(trainer.strategy).__name__
    if name in SHARDED_STRATEGIES:
        raise ValueError(
            f"{who} does not support {name}: it shards the Linear weights, and the N:M groups, Z and U need whole "
            "weights on every process (a mask computed on shards could be silently wrong). Use strategy ddp (or a "
            "single device)."
        )


def log_now(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Log ``metrics`` at the current step to every logger and flush them, as Lightning does after its own logging: a
    run killed before the next flush (at a session's end, right after a checkpoint) keeps them."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()


def check_export_dir_at_fit_start(trainer: pl.Trainer, stage: str, export_dir: str | None) -> None:
    """Refuse an ``export_dir`` that the export at fit end would have to refuse (someone else's folder, a path that
    cannot be written) when the fit starts, before its first step, rather than after hours of training. Rank zero
    only: it alone writes the export, and other nodes may not see its file system."""
    if stage == "fit" and export_dir and trainer.is_global_zero:
        check_export_target(export_dir)
