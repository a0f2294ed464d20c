"""GLUE metrics with torchmetrics, and the task's GLUE score (mean of its metrics, in points 0-100)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryF1Score, MatthewsCorrCoef, MulticlassAccuracy
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from nxm_lightning.tasks.glue import GlueTask


def glue_metrics(task: GlueTask) -> MetricCollection:
    """The GLUE convention: CoLA Matthews; STS-B Pearson+Spearman; MRPC/QQP F1+accuracy; the rest accuracy."""
    factories: dict[str, Metric] = {}
    for name in task.metrics:
        if name == "matthews_corrcoef":
            factories[name] = MatthewsCorrCoef(task="binary")
        elif name == "accuracy":
            factories[name] = MulticlassAccuracy(num_classes=task.num_labels, average="micro")
        elif name == "f1":
            factories[name] = BinaryF1Score()
        elif name == "pearson":
            factories[name] = PearsonCorrCoef()
        elif name == "spearman":
            factories[name] = SpearmanCorrCoef()
        else:
            raise ValueError(f"No metric named {name!r}")
    return MetricCollection(factories)


def glue_score(values: dict[str, float]) -> float:
    """Mean of the task's metrics, in points (x100)."""
    return 100.0 * sum(values.values()) / len(values)


def validation_suffixes(task: GlueTask) -> list[str]:
    """The suffix of each validation set's metric names: MNLI's matched and mismatched sets, else one unnamed set."""
    return ["_matched", "_mismatched"] if len(task.validation_files) == 2 else [""]


def task_predictions(task: GlueTask, logits: torch.Tensor) -> torch.Tensor:
    """What the metrics compare with the labels: the score of a regression head, else the arg-max class."""
    return logits.squeeze(-1) if task.is_regression else logits.argmax(-1)


def glue_metric_values(
    task: GlueTask,
    loaders: Sequence[Iterable[dict[str, torch.Tensor]]],
    logits_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The task's metrics (fractions, named as validation logs them) on labelled batches, one loader per validation set.

    ``logits_of`` computes a batch's logits: a PyTorch model for the LightningModule, ONNX Runtime for the score
    command; both are then scored by this one loop, so that a number from an ONNX file compares with ``val/score``.
    """
    values: dict[str, float] = {}
    for suffix, loader in zip(validation_suffixes(task), loaders):
        metrics = glue_metrics(task).to(device)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            metrics.update(task_predictions(task, logits_of(batch)), batch["labels"])
        values.update({f"{name}{suffix}": float(value) for name, value in metrics.compute().items()})
    return values
