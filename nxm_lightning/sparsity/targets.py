"""Which Linear layers to sparsify, and with which N:M pattern. Pure PyTorch: no Lightning here.

A target is an ``nn.Linear`` (weight stored ``[out, in]``) or a ``transformers`` ``Conv1D`` (GPT-2; weight stored
``[in, out]``). :attr:`Target.weight` always shows the weight as ``[out, in]``, so the N:M groups run along the input
features whichever way the module stores it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from nxm_lightning.sparsity.nxm import NxMPattern, nxm_mask

try:  # GPT-2's Conv1D; without transformers installed, no module can be one
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - the torch-only core (tests/test_layers.py)

    class Conv1D(nn.Module):  # type: ignore[no-redef]
        """Stands for transformers' Conv1D when transformers is not installed (nothing is an instance of it)."""


# Every Linear inside a transformer block: BERT/RoBERTa/ELECTRA/DeBERTa's query/key/value/attention output/
# intermediate/output (encoder.layer.N), DistilBERT's transformer.layer.N, GPT-2's h.N, Llama-style layers.N, blocks.N,
# and ALBERT's albert_layers.N (one module shared by every layer of its group, so one target per shared weight).
DEFAULT_INCLUDE = (r"(^|\.)(layer|layers|h|blocks|block|albert_layers)\.\d+\.",)
# Task heads and the distillation teacher are never sparsified, whatever include says.
ALWAYS_EXCLUDE = (r"(^|\.)teacher(\.|$)", r"(^|\.)(classifier|pooler|lm_head|qa_outputs|score)(\.|$)")
# The module types a target can be: both compute x W^T + b, Conv1D with W stored transposed.
TARGET_TYPES = (nn.Linear, Conv1D)


@dataclass(frozen=True)
class Target:
    """One Linear layer chosen for N:M sparsity: an ``nn.Linear`` or a GPT-2 ``Conv1D``."""

    name: str
    module: nn.Module
    pattern: NxMPattern

    @property
    def transposed(self) -> bool:
        """True when the module stores its weight ``[in, out]`` (``Conv1D``)."""
        return isinstance(self.module, Conv1D)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as ``[out, in]``, the layout of the N:M math (groups along the input features).

        For ``Conv1D`` it is a transposed view: in-place changes (masking, the ADMM pull) reach the parameter itself.
        """
        weight = self.module.weight
        return weight.t() if self.transposed else weight

    @property
    def grad(self) -> torch.Tensor | None:
        """The gradient of :attr:`weight` (``[out, in]``, a view of the parameter's ``.grad``), or None."""
        grad = self.module.weight.grad
        return grad.t() if grad is not None and self.transposed else grad

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return tuple(self.weight.shape)  # type: ignore[return-value]


def as_linear(module: nn.Module) -> nn.Linear:
    """``module`` itself if it is an ``nn.Linear``; a ``Conv1D`` as the equivalent ``nn.Linear`` (weight transposed)."""
    if isinstance(module, nn.Linear):
        return module
    if not isinstance(module, Conv1D):
        raise TypeError(f"Expected an nn.Linear or a transformers Conv1D, got {type(module).__name__}.")
    weight = module.weight.detach()
    linear = nn.Linear(module.nx, module.nf, bias=module.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


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
    """Choose the Linear layers (``nn.Linear``, or GPT-2's ``Conv1D``) of ``model`` to sparsify.

    A weight shared by several layers (ALBERT repeats one layer's modules) is one target, named by its first path.

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
        ValueError: a bad pattern or regex; every matched layer too narrow for its pattern's M (the message lists
            them); or no layer matched (the message lists the candidate Linear names and the modules that matched
            ``include`` but are of a type that cannot be targeted).
    """
    default = NxMPattern.parse(pattern)
    overrides = [(re.compile(rx), NxMPattern.parse(p)) for rx, p in (pattern_overrides or {}).items()]
    include_rx = _compile(include or DEFAULT_INCLUDE, "include")
    exclude_rx = _compile(list(exclude or []) + list(ALWAYS_EXCLUDE), "exclude")

    def chosen(name: str) -> bool:
        return any(rx.search(name) for rx in include_rx) and not any(rx.search(name) for rx in exclude_rx)

    candidates = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, TARGET_TYPES)]
    targets: list[Target] = []
    too_narrow: list[str] = []  # chosen, but no multiple of M wide: skipped
    seen_weights: set[int] = set()
    for name, module in candidates:
        if not chosen(name) or id(module.weight) in seen_weights:
            continue
        seen_weights.add(id(module.weight))
        target = Target(name, module, next((p for rx, p in overrides if rx.search(name)), default))
        in_features = target.shape[1]
        if in_features % target.pattern.m:
            message = (
                f"Layer {name!r} has in_features={in_features}, not a multiple of M={target.pattern.m} "
                f"for pattern {target.pattern}"
            )
            if strict:
                raise ValueError(message + ". Exclude it or use a pattern whose M divides in_features.")
            warnings.warn(message + "; skipping it.", stacklevel=2)
            too_narrow.append(f"{name} (in_features={in_features}, {target.pattern})")
            continue
        targets.append(target)

    if not targets and too_narrow:
        raise ValueError(
            f"Every layer that include={list(include or DEFAULT_INCLUDE)} matched has an in_features that M does not "
            f"divide, so none can be N:M: {', '.join(too_narrow[:8])}{' ...' if len(too_narrow) > 8 else ''}. Use a "
            "pattern whose M divides the layers' widths (e.g. 2:4 for widths that are multiples of 4)."
        )
    if not targets:
        names = ", ".join(name + (" (Conv1D)" if isinstance(mod, Conv1D) else "") for name, mod in candidates)
        untargetable = [
            f"{name} ({type(mod).__name__}, weight {'x'.join(map(str, mod.weight.shape))})"
            for name, mod in model.named_modules()
            if chosen(name) and _has_matrix_weight(mod) and not isinstance(mod, (*TARGET_TYPES, nn.Embedding))
        ]
        found = (
            f" These modules match include but are neither nn.Linear nor transformers Conv1D, so they cannot be "
            f"targeted: {', '.join(untargetable[:8])}{' ...' if len(untargetable) > 8 else ''}. Make them nn.Linear "
            "(or add support for their type) to sparsify them."
            if untargetable
            else ""
        )
        raise ValueError(
            f"No Linear layer matched include={list(include or DEFAULT_INCLUDE)} exclude={list(exclude or [])}. "
            f"Candidate nn.Linear names: {names or '(the model has no nn.Linear or Conv1D at all)'}.{found}"
        )
    return targets


def _has_matrix_weight(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2


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
    covered = sum(t.weight.numel() for t in targets)
    width = max(len(t.name) for t in targets)
    lines = [f"{'layer':<{width}}  {'shape':>12}  pattern"]
    lines += [f"{t.name:<{width}}  {'x'.join(map(str, t.shape)):>12}  {t.pattern}" for t in targets]
    lines.append(f"{len(targets)} layers, {covered:,} weights = {100 * covered / max(total, 1):.1f}% of all {total:,} parameters")
    return "\n".join(lines)


@torch.no_grad()
def project_targets(targets: list[Target], masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Cut every target to its N:M pattern, with the given masks or else by magnitude; returns the masks."""
    chosen = {}
    for t in targets:
        mask = masks[t.name] if masks is not None else nxm_mask(t.weight, t.pattern.n, t.pattern.m)
        t.weight.mul_(mask)
        chosen[t.name] = mask
    return chosen


@contextmanager
def restore_weights(targets: list[Target]) -> Iterator[None]:
    """Run the block, then put the targets' weights back as they were (a temporary cut, e.g. to score it)."""
    saved = [t.weight.detach().clone() for t in targets]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, weight in zip(targets, saved):
                t.weight.copy_(weight)
