"""A 2-process DDP (gloo, CPU) run for the multi-process test: ``python ddp_job.py OUT_DIR [--distill TEACHER]``.

Each rank writes what it holds (ADMM Z/U/masks mid-phase, hard-prune masks and final weights) to ``rank<R>.pt``.
``--distill`` trains a tiny BERT DistillationModule (teacher: the BERT folder TEACHER) instead of the toy model;
``--fisher`` has no ADMM: the hard prune cuts at step 4 by the Fisher it gathered over the steps before.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ToyModule, text_loader, toy_loader, toy_trainer  # noqa: E402

from callbacks import HardPruneCallback, NxMSparsifyCallback  # noqa: E402
from nxm_lightning import DistillationModule  # noqa: E402


class Snapshot(Callback):
    """Keep a copy of the ADMM state at step 6 (mid-phase) and write everything each rank holds at the end."""

    def __init__(self, out: Path, sparsify: NxMSparsifyCallback | None, prune: HardPruneCallback) -> None:
        self.out, self.sparsify, self.prune = out, sparsify, prune
        self.admm: dict = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == 6 and not self.admm and self.sparsify is not None:
            self.admm = self.sparsify.admm.state_dict()

    def on_fit_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        weights = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        masks = {k: v.cpu() for k, v in self.prune.masks.items()}
        torch.save({"admm": self.admm, "masks": masks, "weights": weights}, self.out / f"rank{trainer.global_rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--distill", type=Path, metavar="TEACHER")
    parser.add_argument("--fisher", action="store_true")
    args = parser.parse_args()
    seed_everything(0)
    include = [r"^net\.[02]$"] if args.distill is None else None  # None: every Linear of the BERT encoder
    if args.fisher:
        sparsify, prune = None, HardPruneCallback(include=include, at_step=4, saliency="fisher", backend="masked")
    else:
        sparsify = NxMSparsifyCallback(pattern="2:4", include=include, rho=0.05, penalty="decoupled", update_every=2, end_step=10)
        prune = HardPruneCallback(backend="masked")
    callbacks = [*([sparsify] if sparsify else []), prune, Snapshot(args.out, sparsify, prune),
                 ModelCheckpoint(dirpath=args.out / "ckpt", save_last=True)]  # fmt: skip
    trainer = toy_trainer(args.out, callbacks, max_epochs=5, devices=2, strategy="ddp")
    if args.distill is None:
        trainer.fit(ToyModule(), toy_loader(shuffle=True), toy_loader(16, seed=1))
    else:
        teacher = str(args.distill)
        module = DistillationModule(teacher, teacher=teacher, learning_rate=1e-3, cache_teacher_logits=True)
        trainer.fit(module, text_loader(args.distill, n=32, shuffle=True), text_loader(args.distill, n=8))


if __name__ == "__main__":
    main()
