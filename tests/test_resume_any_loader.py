"""Exact resume for any LightningModule and its own shuffled loaders (not only the project's GLUE data module): a plain
module with dropout, both sparsity callbacks and RNGStateCallback, killed mid-ADMM and resumed from its checkpoint."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import ToyModule, toy_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from callbacks import HardPruneCallback, NxMSparsifyCallback, RNGStateCallback

INCLUDE = ["net.0", "net.2"]
EPOCHS = 6  # 8 steps an epoch; ADMM from step 0 to step 32 (mid-epoch 4), Z-step every 3 steps


class Stop(Exception):
    pass


class StopAtStep(Callback):
    """Ends the run without its fit-end hooks, as a kill would, once ``step`` optimizer steps have been taken."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step:
            raise Stop


def shuffled_loader(loader_class: type = DataLoader) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=generator)
    return loader_class(TensorDataset(x, x[:, :4].sum(-1)), batch_size=8, shuffle=True)


def run(root: Path, loader_class: type, stop_at: int | None = None, resume: bool = False) -> torch.Tensor:
    """Weights after the run: from the start (stopped at ``stop_at`` steps) or resumed from its last checkpoint."""
    torch.manual_seed(0)
    model = ToyModule(dropout=0.2)
    sparsify = NxMSparsifyCallback(pattern="2:4", include=INCLUDE, rho=0.05, rho_factor="auto", rho_max=0.4,
                                   penalty="decoupled", update_every=3, end_step=32)  # fmt: skip
    every = {"every_n_train_steps": 4} if stop_at is not None and stop_at % 8 else {"every_n_epochs": 1}
    callbacks = [sparsify, HardPruneCallback(backend="masked"), RNGStateCallback(),
                 ModelCheckpoint(dirpath=root, save_last=True, **every)]  # fmt: skip
    trainer = toy_trainer(root, callbacks + ([StopAtStep(stop_at)] if stop_at and not resume else []), max_epochs=EPOCHS)
    if stop_at is not None and not resume:
        with pytest.raises(Stop):
            trainer.fit(model, shuffled_loader(loader_class))
        return torch.empty(0)
    trainer.fit(model, shuffled_loader(loader_class), ckpt_path=root / "last.ckpt" if resume else None)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_plain_shuffled_dataloader_resumes_exactly_from_an_epoch_end_checkpoint(tmp_path: Path) -> None:
    straight = run(tmp_path / "a", DataLoader)
    run(tmp_path / "b", DataLoader, stop_at=24)  # killed at the start of epoch 3, mid-ADMM
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="RNGStateCallback")
        resumed = run(tmp_path / "b", DataLoader, stop_at=24, resume=True)
    assert torch.equal(straight, resumed)


def test_an_epoch_end_resume_with_a_sampler_of_its_own_generator_is_warned_about(tmp_path: Path) -> None:
    """Lightning drops a StatefulDataLoader's state at an epoch-end resume, and with it its sampler's generator."""
    stateful = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader
    run(tmp_path, stateful, stop_at=24)
    with pytest.warns(UserWarning, match="epoch-end checkpoint with a train loader whose sampler shuffles with its own"):
        run(tmp_path, stateful, stop_at=24, resume=True)


def test_a_stateful_loader_resumes_exactly_mid_epoch_and_a_plain_one_is_warned_about(tmp_path: Path) -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader
    straight = run(tmp_path / "a", stateful)
    run(tmp_path / "b", stateful, stop_at=20)  # checkpoint at step 20: mid-epoch 2, mid-ADMM
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="RNGStateCallback")
        assert torch.equal(straight, run(tmp_path / "b", stateful, stop_at=20, resume=True))
    run(tmp_path / "c", DataLoader, stop_at=20)
    with pytest.warns(UserWarning, match="resuming mid-epoch with a train DataLoader that Lightning cannot checkpoint"):
        run(tmp_path / "c", DataLoader, stop_at=20, resume=True)
