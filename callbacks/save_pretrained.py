"""SavePretrainedCallback: write the fine-tuned model as a Hugging Face folder at the end of fit."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from callbacks._common import check_export_dir_at_fit_start
from nxm_lightning.sparsity.export import save_pretrained_atomic
from nxm_lightning.sparsity.model_card import CARD, card_facts, render_model_card


class SavePretrainedCallback(Callback):
    """Save ``pl_module.model`` (and the data module's tokenizer) with ``save_pretrained`` when fit ends, with a
    README.md model card (base model, task, labels, the saved weights' validation score, the command).

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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_export_dir_at_fit_start(trainer, stage, self.export_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        if model is None or not hasattr(model, "save_pretrained"):
            raise TypeError(
                f"SavePretrainedCallback needs pl_module.model to be a transformers model; {type(pl_module).__name__} has none."
            )
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.use_best else ""
        if best:
            checkpoint = torch.load(best, map_location=pl_module.device, weights_only=True)
            pl_module.on_load_checkpoint(checkpoint)  # e.g. DistillationModule puts its teacher's weights back
            pl_module.load_state_dict(checkpoint["state_dict"])
        if not trainer.is_global_zero:
            return
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        card = render_model_card(card_facts(model, pl_module, self._scores(trainer, bool(best))))
        path = save_pretrained_atomic(model, tokenizer, self.export_dir, extra_files={CARD: card})
        rank_zero_info(f"SavePretrainedCallback: saved {'the best checkpoint' if best else 'the final weights'} to {path}")

    @staticmethod
    def _scores(trainer: pl.Trainer, best: bool) -> dict[str, float]:
        """The validation score of the weights saved, for the model card, when known.

        The best checkpoint's score when it was chosen on ``val/score``; the last validation's when the final weights
        are saved (or the "best" checkpoint is merely the latest, with no monitor); nothing for another monitor.
        """
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        if best and monitor == "val/score" and checkpoint.best_model_score is not None:
            return {"best checkpoint": float(checkpoint.best_model_score)}
        last = trainer.callback_metrics.get("val/score")
        if last is None or (best and monitor is not None):
            return {}
        return {"last validation of the fit": float(last)}
