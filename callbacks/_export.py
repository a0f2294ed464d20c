"""The one export of a fitted LightningModule's transformers model, which both exporting callbacks call
(:class:`~callbacks.hard_prune.HardPruneCallback` with its N:M layers, :class:`~callbacks.save_pretrained.SavePretrainedCallback`
dense, from its best checkpoint), and the record of the last validation that tells the exported weights' own score.

The order is the same for both: the model is checked on every process (so all fail alike), the best checkpoint is
loaded on every process (the module keeps being used after fit), then only rank zero writes, through the core's
:func:`~nxm_lightning.sparsity.export.export_pretrained` (``sparsity.json`` only when there are N:M layers).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from callbacks.protocols import hf_model_attribute, pretrained_model
from nxm_lightning.sparsity.export import export_pretrained
from nxm_lightning.sparsity.model_card import card_facts
from nxm_lightning.sparsity.nxm import NxMPattern


class LastValidation:
    """The last validation of the fit (global step, epoch, ``val/score``): the exported weights' own score when no
    optimizer step came after it. The callback calls :meth:`record` from ``on_validation_end``."""

    def __init__(self) -> None:
        self.seen: tuple[int, int, float] | None = None

    def record(self, trainer: pl.Trainer) -> None:
        score = trainer.callback_metrics.get("val/score")
        if score is not None and not trainer.sanity_checking:
            self.seen = (trainer.global_step, trainer.current_epoch, float(score))

    def score_at(self, step: int) -> tuple[int, float] | None:
        """``(epoch, score)`` of the validation at global step ``step``, or None when the last one was at another."""
        return (self.seen[1], self.seen[2]) if self.seen is not None and self.seen[0] == step else None


def transformers_model(who: str, pl_module: pl.LightningModule) -> Any:
    """The module's Hugging Face model (at its ``hf_model_attribute``, :class:`~callbacks.protocols.HoldsPretrainedModel`),
    once sure it is a transformers model (``save_pretrained``); else the one TypeError."""
    model = pretrained_model(pl_module)
    if model is None or not hasattr(model, "save_pretrained"):
        raise TypeError(
            f"{who}: export_dir needs pl_module.{hf_model_attribute(pl_module)} to be a transformers PreTrainedModel; "
            f"{type(pl_module).__name__} has none. Unset export_dir, or save the weights yourself."
        )
    return model


def load_best_checkpoint(pl_module: pl.LightningModule, path: str) -> dict[str, Any]:
    """Load the weights of the checkpoint at ``path`` into ``pl_module``; returns the checkpoint."""
    checkpoint = torch.load(path, map_location=pl_module.device, weights_only=True)
    pl_module.on_load_checkpoint(checkpoint)  # e.g. DistillationModule puts its teacher's weights back
    pl_module.load_state_dict(checkpoint["state_dict"])
    return checkpoint


def exported_score(trainer: pl.Trainer | None, checkpoint: dict[str, Any] | None, validation: LastValidation) -> dict[str, float]:
    """``{"exported model (epoch N, ...)": score}``: the dev score of exactly the weights exported, when known.

    The best checkpoint's: its ``val/score`` when the checkpoint callback chose it on ``val/score``, else the last
    validation's if it ran at the checkpoint's step; the final weights': the last validation's if no optimizer step
    followed it. Nothing otherwise (no validation of those weights).
    """
    if trainer is None:
        return {}
    if checkpoint is not None:
        callback = trainer.checkpoint_callback
        epoch = checkpoint.get("epoch")
        best = getattr(callback, "best_model_score", None)
        if getattr(callback, "monitor", None) == "val/score" and best is not None and epoch is not None:
            return {f"exported model (epoch {epoch}, the best checkpoint)": float(best)}
        seen = validation.score_at(checkpoint.get("global_step", -1))
        return {f"exported model (epoch {seen[0]}, the best checkpoint)": seen[1]} if seen else {}
    seen = validation.score_at(trainer.global_step)
    return {f"exported model (epoch {seen[0]}, its last validation)": seen[1]} if seen else {}


def export_model(
    who: str,
    pl_module: pl.LightningModule,
    trainer: pl.Trainer | None,
    export_dir: str,
    scores: dict[str, float],
    validation: LastValidation,
    patterns: dict[str, NxMPattern] | None = None,
    transposed: Collection[str] = (),
    best_checkpoint: str = "",
) -> Path | None:
    """Export ``pl_module.model`` (and the tokenizer) to ``export_dir`` with its model card; the written folder, or None
    on a process other than rank zero.

    Args:
        who: the callback, in messages.
        pl_module: the module whose ``model`` is exported.
        trainer: the trainer (None: called outside fit, as one process).
        export_dir: see :func:`~nxm_lightning.sparsity.export.export_pretrained`.
        scores: the card's scores besides the exported model's own (e.g. before and after the cut).
        validation: the callback's record of the last validation.
        patterns / transposed: the N:M layers by state-dict key (none: a dense export, without ``sparsity.json``).
        best_checkpoint: a checkpoint whose weights are exported instead of the current ones.
    """
    model = transformers_model(who, pl_module)
    checkpoint = load_best_checkpoint(pl_module, best_checkpoint) if best_checkpoint else None
    if trainer is not None and not trainer.is_global_zero:
        return None
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    tokenizer = getattr(datamodule, "tokenizer", None) or getattr(pl_module, "tokenizer", None)
    card = card_facts(model, pl_module, {**scores, **exported_score(trainer, checkpoint, validation)})
    path = export_pretrained(model, tokenizer, patterns or {}, export_dir, transposed, card)
    weights = "the best checkpoint" if checkpoint is not None else "the final weights"
    check = f" (check it: python -m nxm_lightning.sparsity.verify {path})" if patterns else ""
    rank_zero_info(f"{who}: exported {weights}{' (N:M)' if patterns else ''} to {path}{check}")
    return path
