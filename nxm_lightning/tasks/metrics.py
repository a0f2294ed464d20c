"""GLUE metrics with torchmetrics, and the task's GLUE score (mean of its metrics, in points 0-100)."""

from __future__ import annotations

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
