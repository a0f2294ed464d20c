"""RNGStateCallback: random-number-generator states in the checkpoint, so that a resumed run repeats exactly."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RNGStateCallback(Callback):
    """Save the Python, NumPy, torch (and CUDA) RNG states with each checkpoint and restore them on resume.

    Lightning's checkpoints hold no RNG state, so after a resume dropout masks and the shuffling order differ from the
    uninterrupted run. With this callback, a run killed at any point and resumed from an epoch-end ``last.ckpt``
    ends with the same weights as a run never stopped (``cli.py`` always adds it). States are stored as tensors and
    plain Python values, so checkpoints still load with ``weights_only=True``.

    Example::

        trainer = Trainer(callbacks=[RNGStateCallback(), ModelCheckpoint(save_last=True)])
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        version, state, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = np.random.get_state()
        states: dict[str, Any] = {
            "python": [version, list(state), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Restored here, the last point before the training loop draws its first random number (the sampler's seed).
        if self._pending is None:
            return
        version, state, gauss = self._pending["python"]
        random.setstate((version, tuple(state), gauss))
        kind, keys, position, has_gauss, cached = self._pending["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(self._pending["torch"])
        if "cuda" in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        self._pending = None
