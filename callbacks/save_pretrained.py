"""SavePretrainedCallback: write the fine-tuned model as a Hugging Face folder at the end of fit."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from callbacks._common import check_export_dir_at_fit_start
from callbacks._export import LastValidation, export_model


class SavePretrainedCallback(Callback):
    """Save ``pl_module.model`` (and the data module's or the module's tokenizer) with ``save_pretrained`` when fit
    ends, with a README.md model card (base model, task, labels, the saved weights' dev score and its epoch, the
    command): the export of :class:`~callbacks.hard_prune.HardPruneCallback` (:func:`callbacks._export.export_model`),
    for a dense model (no ``sparsity.json``).

    The dense run's export is what ``configs/glue_asp.yaml`` prunes and ``configs/glue_kd.yaml`` uses as teacher.

    Args:
        export_dir: the folder to write: new, empty, or a previous export of this project (which is replaced, only
            once the new copy is complete). Any other existing folder is refused when fit starts, so that nothing of
            the user's is deleted (see :func:`~nxm_lightning.sparsity.export.check_export_target`).
        use_best: save the weights of the ModelCheckpoint's best checkpoint rather than the last ones.

    Example::

        trainer = Trainer(callbacks=[SavePretrainedCallback("exports/glue_dense")])
    """

    def __init__(self, export_dir: str, use_best: bool = True) -> None:
        if not export_dir:
            raise ValueError("export_dir must be a folder path, e.g. exports/glue_dense.")
        self.export_dir = export_dir
        self.use_best = use_best
        self._validation = LastValidation()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_export_dir_at_fit_start(trainer, stage, self.export_dir)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation.record(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.use_best else ""
        export_model(type(self).__name__, pl_module, trainer, self.export_dir, {}, self._validation, best_checkpoint=best)
