"""Which Linear layers to sparsify, and with which N:M pattern. Pure PyTorch: no Lightning here."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from torch import nn

from nxm_lightning.nxm import NxMPattern

# Every nn.Linear inside a transformer block: BERT's query/key/value/attention output/intermediate/output,
# GPT-2/OPT/Llama-style blocks (h.N / layers.N / blocks.N) and DistilBERT's transformer.layer.N.
DEFAULT_INCLUDE = (r"(^|\.)(layer|layers|h|blocks|block)\.\d+\.",)
# Task heads and the distillation teacher are never sparsified, whatever include says.
ALWAYS_EXCLUDE = (r"(^|\.)teacher(\.|$)", r"(^|\.)(classifier|pooler|lm_head|qa_outputs|score)(\.|$)")


@dataclass(frozen=True)
class Target:
    """One Linear layer chosen for N:M sparsity."""

    name: str
    module: nn.Linear
    pattern: NxMPattern

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.module.weight.shape)  # type: ignore[return-value]


def _compile(patterns: list[str] | tuple[str, ...], what: str) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"Invalid regular expression {pattern!r} in {what}: {err}.") from None
    return compiled


def select_targets(
    model: nn.Module,
    pattern: str | NxMPattern = "2:4",
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    pattern_overrides: dict[str, str] | None = None,
    strict: bool = False,
) -> list[Target]:
    """Choose the ``nn.Linear`` layers of ``model`` to sparsify.

    Args:
        model: any module; names are those of ``model.named_modules()``.
        pattern: default N:M pattern (N kept of every M, NVIDIA's order), e.g. ``"2:4"``.
        include: regexes (``re.search``) over module names; default: every Linear inside a transformer block.
        exclude: regexes removing layers from the selection. Heads (classifier, pooler, lm_head) and anything under a
            submodule named ``teacher`` are always excluded.
        pattern_overrides: ``{regex: "N:M"}``; the first regex that matches a layer's name sets its pattern,
            e.g. ``{"attention": "2:4", "intermediate|output.dense": "1:4"}``.
        strict: a layer whose ``in_features`` is not a multiple of M is an error instead of a skipped layer.

    Raises:
        ValueError: a bad pattern or regex, or no layer matched (the message lists the candidate Linear names).
    """
    default = NxMPattern.parse(pattern)
    overrides = [(re.compile(rx), NxMPattern.parse(p)) for rx, p in (pattern_overrides or {}).items()]
    include_rx = _compile(include or DEFAULT_INCLUDE, "include")
    exclude_rx = _compile(list(exclude or []) + list(ALWAYS_EXCLUDE), "exclude")

    candidates = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    targets: list[Target] = []
    for name, module in candidates:
        if not any(rx.search(name) for rx in include_rx) or any(rx.search(name) for rx in exclude_rx):
            continue
        layer_pattern = next((p for rx, p in overrides if rx.search(name)), default)
        if module.in_features % layer_pattern.m:
            message = (
                f"Layer {name!r} has in_features={module.in_features}, not a multiple of M={layer_pattern.m} "
                f"for pattern {layer_pattern}"
            )
            if strict:
                raise ValueError(message + ". Exclude it or use a pattern whose M divides in_features.")
            warnings.warn(message + "; skipping it.", stacklevel=2)
            continue
        targets.append(Target(name, module, layer_pattern))

    if not targets:
        names = ", ".join(name for name, _ in candidates) or "(the model has no nn.Linear at all)"
        raise ValueError(
            f"No Linear layer matched include={list(include or DEFAULT_INCLUDE)} exclude={list(exclude or [])}. "
            f"Candidate nn.Linear names: {names}"
        )
    return targets


@dataclass(frozen=True)
class TargetSpec:
    """A target selection as a config states it (see :func:`select_targets`), validated when built.

    Bad patterns and regexes fail here, at config time, before any model is loaded.
    """

    pattern: str = "2:4"
    include: list[str] | None = None
    exclude: list[str] | None = None
    pattern_overrides: dict[str, str] | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        NxMPattern.parse(self.pattern)
        for override in (self.pattern_overrides or {}).values():
            NxMPattern.parse(override)
        _compile(list(self.include or []), "include")
        _compile(list(self.exclude or []) + list(self.pattern_overrides or {}), "exclude / pattern_overrides")

    def select(self, model: nn.Module) -> list[Target]:
        return select_targets(model, self.pattern, self.include, self.exclude, self.pattern_overrides, self.strict)


def describe_targets(model: nn.Module, targets: list[Target]) -> str:
    """A table of the targets (layer, shape, pattern) and the share of all parameters they cover."""
    total = sum(p.numel() for p in model.parameters())
    covered = sum(t.module.weight.numel() for t in targets)
    width = max(len(t.name) for t in targets)
    lines = [f"{'layer':<{width}}  {'shape':>12}  pattern"]
    lines += [f"{t.name:<{width}}  {'x'.join(map(str, t.shape)):>12}  {t.pattern}" for t in targets]
    lines.append(f"{len(targets)} layers, {covered:,} weights = {100 * covered / max(total, 1):.1f}% of all {total:,} parameters")
    return "\n".join(lines)
