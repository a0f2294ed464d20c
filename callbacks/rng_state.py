"""RNGStateCallback: random-number-generator states in the checkpoint, so that a resumed run repeats exactly."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


class RNGStateCallback(Callback):
    """Save the Python, NumPy, torch (and CUDA) RNG states with each checkpoint and restore them on resume.

    Lightning's checkpoints hold no RNG state, so after a resume dropout masks and the shuffling order differ from the
    uninterrupted run. With this callback a resumed run ends with the same weights as a run never stopped (``cli.py``
    always adds it):

    - from a checkpoint taken at the end of an epoch, with a shuffled ``torch.utils.data.DataLoader``: the states are
      restored as the checkpoint loads, before Lightning draws the next epoch's order (it creates the loader's
      iterator before ``on_train_start``), and again at ``on_train_start`` where Lightning will create another;
    - from a checkpoint taken mid-epoch, with a loader that Lightning can checkpoint (``state_dict`` /
      ``load_state_dict``, e.g. ``torchdata.stateful_dataloader.StatefulDataLoader``, a drop-in for ``DataLoader``):
      the loader resumes its position and the states are restored at ``on_train_start``. A plain ``DataLoader``
      restarts the epoch's order from its beginning there; the callback warns.

    Not exact, and warned about: a loader whose sampler draws its order from its own ``torch.Generator`` (a
    ``StatefulDataLoader`` with ``shuffle=True``, or any ``DataLoader(..., generator=g)``) resumed from an epoch-end
    checkpoint. Lightning keeps the loader's state only for a mid-epoch resume (measured: Lightning 2.6, torchdata
    0.11), so that generator starts again as the loader was built and the next epochs repeat earlier orders. (A
    sampler that reseeds its generator in ``set_epoch`` is exact there, and warned about all the same.)

    States are stored as tensors and plain Python values, so checkpoints still load with ``weights_only=True``.

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
        if self._pending is not None:
            # Restored now, before the fit loop creates the loader's iterator (and draws its order): right when
            # Lightning goes on with that iterator, i.e. a checkpoint from the end of an epoch without validation.
            self._restore()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Otherwise Lightning discards that iterator and creates the next one after this hook (a checkpoint taken at
        # validation end), or a stateful loader has resumed its position: restored again, before the first step.
        if self._pending is None:
            return
        loader = trainer.train_dataloader
        loaders = list(loader.values()) if isinstance(loader, dict) else loader if isinstance(loader, list | tuple) else [loader]
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        mid_epoch = 0 < progress.ready < trainer.num_training_batches
        # Measured inexact from the end of an epoch whether the checkpoint was written there or after validation.
        if not mid_epoch and any(_sampler_generator(item) is not None for item in loaders):
            rank_zero_warn(
                "RNGStateCallback: resuming from an epoch-end checkpoint with a train loader whose sampler shuffles with "
                "its own torch.Generator (a torchdata StatefulDataLoader, or a DataLoader given generator=...): Lightning "
                "does not restore it there, so the next epochs see the examples in another order than the uninterrupted "
                "run. For an exact resume, let a plain DataLoader shuffle with the global RNG (no generator argument)."
            )
        if not trainer.fit_loop.resumed_on_epoch_end:
            stateful = all(hasattr(item, "state_dict") and hasattr(item, "load_state_dict") for item in loaders)
            if mid_epoch and not stateful:
                rank_zero_warn(
                    "RNGStateCallback: resuming mid-epoch with a train DataLoader that Lightning cannot checkpoint: the "
                    "rest of this epoch sees the examples in another order than the uninterrupted run. For an exact "
                    "resume, resume from an epoch-end checkpoint or use torchdata.stateful_dataloader.StatefulDataLoader."
                )
            self._restore()
        self._pending = None

    def _restore(self) -> None:
        assert self._pending is not None
        version, state, gauss = self._pending["python"]
        random.setstate((version, tuple(state), gauss))
        kind, keys, position, has_gauss, cached = self._pending["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(self._pending["torch"])
        if "cuda" in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])


def _sampler_generator(loader: object) -> torch.Generator | None:
    """The generator the loader's sampler shuffles with when it has its own (None: the global RNG, or no shuffling)."""
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for candidate in (sampler, getattr(batch_sampler, "sampler", None)):
        if isinstance(getattr(candidate, "generator", None), torch.Generator):
            return candidate.generator
    return None
