"""SavePretrainedCallback: write the fine-tuned model as a Hugging Face folder at the end of fit."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from nxm_lightning.export import save_pretrained_atomic


class SavePretrainedCallback(Callback):
    """Save ``pl_module.model`` (and the data module's tokenizer) with ``save_pretrained`` when fit ends.

    The dense run's export is what ``configs/glue_asp.yaml`` prunes and ``configs/glue_kd.yaml`` uses as teacher.

    Args:
        export_dir: the folder to write (replaced only once the new copy is complete).
        use_best: save the weights of the ModelCheckpoint's best checkpoint rather than the last ones.

    Example::

        trainer = Trainer(callbacks=[SavePretrainedCallback("exports/glue_dense")])
    """

    def __init__(self, export_dir: str, use_best: bool = True) -> None:
        if not export_dir:
            raise ValueError("export_dir must be a folder path, e.g. exports/glue_dense.")
        self.export_dir = export_dir
        self.use_best = use_best

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
        path = save_pretrained_atomic(model, tokenizer, self.export_dir)
        rank_zero_info(f"SavePretrainedCallback: saved {'the best checkpoint' if best else 'the final weights'} to {path}")
