"""ProgressLogCallback: plain progress lines for logs, where Lightning's progress bar prints nothing until fit ends."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from callbacks._common import step_loss
from callbacks.finite_guard import training_phase
from nxm_lightning.sparsity.choices import check_choice

When = Literal["auto", "always", "never"]


class ProgressLogCallback(Callback):
    """One line every ``every_n_steps`` optimizer steps and at every epoch end: epoch, step, training loss, phase
    (dense / ADMM / masked), the last validation score and the time so far.

    The rich/tqdm progress bar redraws one line in place; written to a file (``nohup``, CI, a pipe) it shows nothing
    useful until fit ends, so a 15-minute run looks hung. ``cli.py`` always adds this callback with ``when: auto``:
    lines only when standard output is not a terminal.

    Args:
        every_n_steps: optimizer steps between two lines (>= 1).
        when: ``"auto"`` (when stdout is not a terminal), ``"always"`` or ``"never"``.

    Example::

        trainer = Trainer(callbacks=[ProgressLogCallback(every_n_steps=100, when="always")])
    """

    def __init__(self, every_n_steps: int = 50, when: When = "auto") -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1 (optimizer steps between two progress lines).")
        check_choice("when", when, When)
        self.every_n_steps = every_n_steps
        self.when = when
        self._started = time.monotonic()
        self._last_step = -1

    @property
    def enabled(self) -> bool:
        return self.when == "always" or (self.when == "auto" and not sys.stdout.isatty())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step != self._last_step and step % self.every_n_steps == 0:  # once per optimizer step (gradient accumulation)
            self._last_step = step
            self._report(trainer, outputs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, None, epoch_end=True)

    def progress_line(self, trainer: pl.Trainer, loss: float | None, epoch_end: bool = False) -> str:
        """The line for the trainer's state now."""
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        total = trainer.estimated_stepping_batches
        steps = f"/{int(total)}" if math.isfinite(total) else ""
        parts = [f"epoch {trainer.current_epoch}{epochs}", f"step {trainer.global_step}{steps}"]
        parts.append("end of epoch" if epoch_end else f"loss {loss:.4g}" if loss is not None else "loss -")
        parts.append(f"phase {training_phase(trainer)}")
        score = trainer.callback_metrics.get("val/score")
        parts.append(f"val/score {float(score):.2f}" if score is not None else "val/score -")
        parts.append(f"{(time.monotonic() - self._started) / 60:.1f} min")
        return "[progress] " + ", ".join(parts)

    def _report(self, trainer: pl.Trainer, outputs: Any, epoch_end: bool = False) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        loss = step_loss(outputs)
        print(self.progress_line(trainer, float(loss) if loss is not None else None, epoch_end), flush=True)
