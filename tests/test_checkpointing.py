"""The one place that reaches into ModelCheckpoint's bookkeeping (callbacks/best_and_last_checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import ToyModule, toy_loader, toy_trainer

from callbacks import BestAndLastCheckpoint
from callbacks.best_and_last_checkpoint import forget_best_checkpoints


def test_after_forgetting_the_best_any_later_checkpoint_becomes_best(tmp_path: Path) -> None:
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max", save_top_k=1, save_last=True)
    trainer = toy_trainer(tmp_path, [checkpoint], max_epochs=2)
    trainer.fit(ToyModule(), toy_loader(), toy_loader(16, seed=1))
    assert checkpoint.best_model_path and checkpoint.best_model_score is not None
    much_worse = checkpoint.best_model_score - 1e6
    assert not checkpoint.check_monitor_top_k(trainer, much_worse)  # it would not enter the top 1
    forget_best_checkpoints(trainer)
    assert checkpoint.best_model_path == "" and checkpoint.best_k_models == {}
    assert checkpoint.check_monitor_top_k(trainer, much_worse)  # now the first of a new ranking
    assert Path(checkpoint.last_model_path).is_file()  # last.ckpt is untouched


def test_last_checkpoint_follows_every_epoch_even_without_a_new_best(tmp_path: Path) -> None:
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max", save_top_k=1, save_last=True)
    model = ToyModule(lr=0.0)  # no learning: the first epoch's score stays the best
    toy_trainer(tmp_path, [checkpoint], max_epochs=3).fit(model, toy_loader(), toy_loader(16, seed=1))
    last = torch.load(checkpoint.last_model_path, weights_only=True)
    best = torch.load(checkpoint.best_model_path, weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] == 0
