"""The targeting arguments, defined once for both callbacks that act on a selection of Linear layers."""

from __future__ import annotations

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
