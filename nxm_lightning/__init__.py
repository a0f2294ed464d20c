"""nxm-lightning: N:M sparse fine-tuning of pretrained transformers with ADMM (NxMTransformer) in PyTorch Lightning.

The N:M math and the ADMM state (``nxm``, ``targets``, ``admm``, ``sparse_linear``) are plain PyTorch; the Lightning
modules live in ``data``, ``module`` and ``distill``; the callbacks in the top-level ``callbacks`` package.
"""

from nxm_lightning.data import GLUEDataModule
from nxm_lightning.distill import DistillationModule
from nxm_lightning.module import SequenceClassificationModule
from nxm_lightning.nxm import NxMPattern, is_nxm, nxm_mask, nxm_project

__all__ = [
    "DistillationModule",
    "GLUEDataModule",
    "NxMPattern",
    "SequenceClassificationModule",
    "is_nxm",
    "nxm_mask",
    "nxm_project",
]
