"""A training job for the kill-and-resume tests: ``python resume_job.py OUT_DIR [--kill-at STEP] [--resume] [--distill TEACHER]``.

ADMM (decoupled, Z every 3 steps) until step 20, hard prune, masked fine-tuning until step 40, with dropout and a
shuffled loader (8 steps an epoch); ``last.ckpt`` at every epoch end, as the CLI writes it. With ``--kill-at`` the
process SIGKILLs itself after that optimizer step. ``--distill`` trains a tiny BERT student distilled from the BERT
folder TEACHER (a DistillationModule with the teacher-logit cache, which a resumed process refills) instead of the
toy model.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ToyModule, text_loader, toy_loader, toy_trainer  # noqa: E402

from callbacks import HardPruneCallback, NxMSparsifyCallback, RNGStateCallback  # noqa: E402
from nxm_lightning import DistillationModule  # noqa: E402


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--distill", type=Path, metavar="TEACHER")
    args = parser.parse_args()
    seed_everything(0)
    include = [r"^net\.[02]$"] if args.distill is None else None  # None: every Linear of the BERT encoder
    callbacks: list[Callback] = [
        NxMSparsifyCallback(pattern="2:4", include=include, rho=0.05, penalty="decoupled", update_every=3, end_step=20),
        HardPruneCallback(backend="masked"),
        RNGStateCallback(),
        ModelCheckpoint(dirpath=args.out / "ckpt", save_last=True),
    ]
    if args.kill_at is not None:
        callbacks.insert(0, KillAt(args.kill_at))
    trainer = toy_trainer(args.out, callbacks, max_steps=40, max_epochs=-1)
    ckpt_path = "last" if args.resume else None
    if args.distill is None:
        model = ToyModule(dropout=0.2)
        trainer.fit(model, toy_loader(shuffle=True), toy_loader(16, seed=1), ckpt_path=ckpt_path)
        weights = {name: model.get_submodule(name).dense_weight() for name in ("net.0", "net.2")}
        weights["net.4"] = model.net[4].weight.detach()
    else:
        teacher = str(args.distill)
        module = DistillationModule(teacher, teacher=teacher, learning_rate=1e-3, cache_teacher_logits=True)
        train, val = text_loader(args.distill, n=32, shuffle=True), text_loader(args.distill, n=8)
        trainer.fit(module, train, val, ckpt_path=ckpt_path)
        weights = {name: tensor.detach() for name, tensor in module.model.state_dict().items()}
    torch.save(weights, args.out / "final.pt")


if __name__ == "__main__":
    main()
