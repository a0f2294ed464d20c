"""What the callbacks expect of the LightningModule they are attached to, and of each other, as named protocols.

The sparsity callbacks work on any LightningModule whose Linear layers match ``include`` (tests/test_callbacks.py
trains a plain ``nn.Sequential``). A few features need more of the module, and each names what it needs here:

- :class:`ScoredModule` (``evaluate_score``): ``HardPruneCallback(score_at_prune=True)`` scores the cut with it,
  ``NxMSparsifyCallback(eval_pruned=True)`` requires it;
- :class:`HoldsPretrainedModel` (``hf_model_attribute``): where the Hugging Face model lives, ``"model"`` unless the
  module says otherwise; ``export_dir`` saves that model, under the targets' names relative to it.

:class:`ADMMEndListener` is the contract between the two sparsity callbacks: what
:class:`~callbacks.nxm_sparsify.NxMSparsifyCallback` calls when its ADMM phase ends, and what
:class:`~callbacks.hard_prune.HardPruneCallback` implements.

Why here: the callbacks consume these contracts, so they own them. The task layer's modules
(:mod:`nxm_lightning.tasks`) satisfy them structurally, without importing this module, so that the task layer and the
callbacks stay siblings above the torch-only core. The core (:mod:`nxm_lightning.sparsity`) is not the place either:
a module's dataloaders, its Hugging Face model and the trainer are the Lightning side's words, and nothing in the core
needs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

DEFAULT_HF_MODEL_ATTRIBUTE = "model"


@runtime_checkable
class ScoredModule(Protocol):
    """A LightningModule that scores itself on dataloaders (:class:`~nxm_lightning.tasks.module.SequenceClassificationModule`
    does: the GLUE score in points)."""

    def evaluate_score(self, dataloaders: DataLoader | Sequence[DataLoader]) -> float:
        """The task's score (higher is better) on ``dataloaders`` with the weights as they are now, outside
        Lightning's loops: nothing logged, the module left in the train/eval mode it was in. The callbacks pass the
        trainer's validation dataloaders."""
        ...


@runtime_checkable
class HoldsPretrainedModel(Protocol):
    """A LightningModule that says where its Hugging Face model (a ``PreTrainedModel``) lives.

    ``hf_model_attribute`` is the name of that submodule, dotted for a nested one (``"backbone.hf"``), as
    ``nn.Module.get_submodule`` reads it. A module without the attribute has its model at ``model``
    (:data:`DEFAULT_HF_MODEL_ATTRIBUTE`), as the task layer's modules do.
    """

    hf_model_attribute: str


@runtime_checkable
class ADMMEndListener(Protocol):
    """What :meth:`NxMSparsifyCallback.add_end_listener <callbacks.nxm_sparsify.NxMSparsifyCallback.add_end_listener>`
    takes: an object called once when the ADMM phase ends."""

    def on_admm_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, masks: dict[str, torch.Tensor]) -> None:
        """The phase has ended; ``masks`` are the N:M masks (by target name) a cut keeps under the sparsifier's
        saliency. Called from the sparsifier's hook (a training batch end, an epoch end or fit end), on every rank."""
        ...


def hf_model_attribute(pl_module: nn.Module) -> str:
    """Where ``pl_module``'s Hugging Face model lives (:class:`HoldsPretrainedModel`): its ``hf_model_attribute``,
    else ``"model"``."""
    if not isinstance(pl_module, HoldsPretrainedModel):
        return DEFAULT_HF_MODEL_ATTRIBUTE
    name = pl_module.hf_model_attribute
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"{type(pl_module).__name__}.hf_model_attribute must name the submodule holding the Hugging Face model "
            f"(e.g. 'model'); it is {name!r}."
        )
    return name


def pretrained_model(pl_module: nn.Module) -> nn.Module | None:
    """The submodule at :func:`hf_model_attribute`, or None when ``pl_module`` has none there."""
    try:
        return pl_module.get_submodule(hf_model_attribute(pl_module))
    except AttributeError:
        return None


def hf_weight_keys(pl_module: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """``{target name: the key of its weight in the Hugging Face model's state dict}``: each name relative to
    :func:`hf_model_attribute` (``model.bert.encoder.layer.0.output.dense`` -> ``bert.encoder.layer.0.output.dense.weight``).
    A name outside it is kept whole."""
    prefix = f"{hf_model_attribute(pl_module)}."
    return {name: f"{name.removeprefix(prefix)}.weight" for name in names}
