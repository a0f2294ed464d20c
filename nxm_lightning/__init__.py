"""nxm-lightning: N:M sparse fine-tuning of pretrained transformers with ADMM (NxMTransformer) in PyTorch Lightning.

Two layers (docs/ARCHITECTURE.md):

- :mod:`nxm_lightning.sparsity`: the sparsity core, plain PyTorch (the N:M math, target selection, the ADMM state,
  schedules, sparse backends, export, verify, ONNX, model cards); it imports with torch alone.
- :mod:`nxm_lightning.tasks`: the GLUE task code on Lightning, transformers, datasets and torchmetrics (the data
  module, the classification and distillation modules, metrics).

The Lightning callbacks live in the top-level ``callbacks`` package. The names below are imported on first use, so
``import nxm_lightning.sparsity`` does not pull in the task layer's packages.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "DistillationModule": "nxm_lightning.tasks.distill",
    "GLUEDataModule": "nxm_lightning.tasks.data",
    "SequenceClassificationModule": "nxm_lightning.tasks.module",
    "NxMPattern": "nxm_lightning.sparsity.nxm",
    "is_nxm": "nxm_lightning.sparsity.nxm",
    "nxm_mask": "nxm_lightning.sparsity.nxm",
    "nxm_project": "nxm_lightning.sparsity.nxm",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'nxm_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
