"""The targeting arguments, defined once for both callbacks that act on a selection of Linear layers."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from nxm_lightning.sparsity.targets import TargetSpec


class TargetingCallback(Callback):
    """Base of :class:`NxMSparsifyCallback` and :class:`HardPruneCallback`: which layers they act on.

    Not a callback to use alone (it does nothing). Subclasses take these arguments as ``**targets`` and pass them
    here, so LightningCLI lists them (with these defaults and this help) under each subclass, and the two callbacks
    cannot drift apart.

    Args:
        pattern: N:M, N kept of every M consecutive input features (NVIDIA's order; the paper writes "MxN"). ``"2:4"``.
        include: regexes over module names; default: every Linear of the transformer blocks. Heads (classifier,
            pooler, lm_head) and any submodule named ``teacher`` are never targeted.
        exclude: regexes removing layers from the selection.
        pattern_overrides: ``{regex: "N:M"}`` per-layer patterns, e.g. ``{"intermediate": "1:4"}``.
        strict: error instead of warning for a layer whose ``in_features`` is not a multiple of M.
    """

    def __init__(
        self,
        pattern: str = "2:4",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        pattern_overrides: dict[str, str] | None = None,
        strict: bool = False,
    ) -> None:
        # Validated here, so that a bad pattern or regex fails when the config is read, before any model is loaded.
        self.spec = TargetSpec(pattern, include, exclude, pattern_overrides, strict)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(pattern=self.spec.pattern, include=self.spec.include)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose state for this callback was saved under other targeting arguments.

        Lightning matches a callback's saved state by ``state_key`` (the class, pattern and include), and silently
        skips a state no callback claims: resuming with another ``pattern`` or ``include`` would drop the saved Z, U,
        rho and masks and restart the method from the resumed weights.
        """
        saved = {key for key in checkpoint.get("callbacks", {}) if key.startswith(f"{type(self).__qualname__}{{")}
        claimed = {callback.state_key for callback in trainer.callbacks}
        if saved and self.state_key not in saved and saved - claimed:
            raise ValueError(
                f"This checkpoint's {type(self).__name__} state was saved with other targeting arguments "
                f"({', '.join(sorted(saved - claimed))}) than this run's ({self.state_key}): its saved state would be "
                "dropped. Resume with the same pattern and include, or start a new run without --ckpt_path."
            )
