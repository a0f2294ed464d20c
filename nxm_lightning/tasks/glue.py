"""The GLUE tasks: where their files are, which columns hold text and label, and how each is scored."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task, in the classic ``glue_data`` layout and as the Hub's ``nyu-mll/glue`` config."""

    name: str
    directory: str  # folder under GLUE_DIR
    text_columns: tuple[str, ...]  # Hub column names; local columns are renamed to these
    local_text_columns: tuple[str, ...]
    local_label_column: str
    label_names: tuple[str, ...]  # empty for regression; order = the Hub's label ids
    metrics: tuple[str, ...]  # GLUE score = mean of these, in points
    has_header: bool = True
    local_columns: tuple[str, ...] = ()  # column names for header-less files (CoLA)
    validation_files: tuple[str, ...] = ("dev.tsv",)
    hub_validation_splits: tuple[str, ...] = ("validation",)
    hub_test_split: str = "test"
    local_test_file: str = "test.tsv"
    label_range: tuple[float, float] = (-math.inf, math.inf)  # regression: the valid scores (finite either way)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def is_regression(self) -> bool:
        return not self.label_names


GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            "cola", "CoLA", ("sentence",), ("sentence",), "label", ("0", "1"), ("matthews_corrcoef",),
            has_header=False, local_columns=("source", "label", "original_label", "sentence"),
        ),
        GlueTask("sst2", "SST-2", ("sentence",), ("sentence",), "label", ("0", "1"), ("accuracy",)),
        GlueTask(
            "mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", ("0", "1"),
            ("f1", "accuracy"),
        ),
        GlueTask(
            "qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("0", "1"),
            ("f1", "accuracy"),
        ),
        GlueTask(
            "stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", (),
            ("pearson", "spearman"), label_range=(0.0, 5.0),
        ),
        GlueTask(
            "mnli", "MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
            ("entailment", "neutral", "contradiction"), ("accuracy",),
            validation_files=("dev_matched.tsv", "dev_mismatched.tsv"),
            hub_validation_splits=("validation_matched", "validation_mismatched"),
            hub_test_split="test_matched", local_test_file="test_matched.tsv",
        ),
        GlueTask(
            "qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label",
            ("entailment", "not_entailment"), ("accuracy",),
        ),
        GlueTask(
            "rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
            ("entailment", "not_entailment"), ("accuracy",),
        ),
        GlueTask(
            "wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("0", "1"),
            ("accuracy",),
        ),
    )
}  # fmt: skip


def get_task(name: str) -> GlueTask:
    """Look a task up by name (case-insensitive; ``sts-b``/``sst-2`` spellings accepted)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {name!r}. Valid task names: {', '.join(GLUE_TASKS)}.")
    return GLUE_TASKS[key]
