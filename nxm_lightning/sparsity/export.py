"""Export a pruned Hugging Face model as a plain ``save_pretrained`` folder plus a ``sparsity.json`` manifest and a
``README.md`` model card.

Each manifest entry records the weight's ``layout``: ``out_in`` (``nn.Linear``, stored ``[out, in]``) or ``in_out``
(GPT-2's ``Conv1D``, stored ``[in, out]``); either way the N:M groups run along the input features.

Written to a temporary folder beside the target and moved into place only when complete, so that a crash never
leaves a half-written model (and an existing export is replaced only by a finished one).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from nxm_lightning.sparsity.finite import describe_non_finite, non_finite_names
from nxm_lightning.sparsity.model_card import CARD, CardFacts, card_facts, render_model_card
from nxm_lightning.sparsity.nxm import NxMPattern, first_violation

MANIFEST = "sparsity.json"
LAYOUTS = ("out_in", "in_out")


def as_out_in(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """``weight`` as ``[out, in]`` (the layout the N:M math works on) from its stored ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown weight layout {layout!r}: expected one of {LAYOUTS}.")
    return weight.t() if layout == "in_out" else weight


def sparsity_manifest(
    weights: dict[str, torch.Tensor], patterns: dict[str, NxMPattern], transposed: Collection[str] = ()
) -> dict[str, Any]:
    """Pattern, layout and verified counts per layer; raises if any weight violates its pattern.

    Args:
        weights: state-dict tensors as stored.
        patterns: ``{state-dict key: pattern}`` of the N:M layers.
        transposed: the keys whose weight is stored ``[in, out]`` (GPT-2's ``Conv1D``).
    """
    layers = {}
    for name, pattern in patterns.items():
        layout = "in_out" if name in transposed else "out_in"
        weight = as_out_in(weights[name], layout)
        violation = first_violation(weight, pattern.n, pattern.m)
        if violation is not None:
            raise ValueError(f"Refusing to export: {describe_violation(name, pattern, violation, layout)}")
        nonzeros = int((weight != 0).sum())
        layers[name] = {"pattern": str(pattern), "layout": layout, "shape": list(weights[name].shape),
                        "nonzeros": nonzeros, "numel": weight.numel(), "density": nonzeros / weight.numel()}  # fmt: skip
    kept = sum(v["nonzeros"] for v in layers.values())
    total = sum(v["numel"] for v in layers.values())
    return {"format": "nxm-lightning/1", "pattern_order": "N:M = N kept of every M consecutive input features",
            "layers": layers, "overall_density": kept / max(total, 1)}  # fmt: skip


def describe_violation(name: str, pattern: NxMPattern, violation: tuple[int, int, int], layout: str = "out_in") -> str:
    """A violation found by ``first_violation`` on the ``[out, in]`` view, in words (and in stored indices if transposed)."""
    row, col, count = violation
    stored = f" (stored [in, out]: rows {col}..{col + pattern.m - 1} of column {row})" if layout == "in_out" else ""
    return (
        f"layer {name!r} is not {pattern}: its first bad group is row {row}, input columns {col}..{col + pattern.m - 1}"
        f"{stored}, with {count} non-zeros (at most {pattern.n} allowed)"
    )


def export_pretrained(
    model: Any,
    tokenizer: Any,
    patterns: dict[str, NxMPattern],
    export_dir: str | os.PathLike,
    transposed: Collection[str] = (),
    card: CardFacts | None = None,
) -> Path:
    """Write ``model`` (a transformers PreTrainedModel), ``tokenizer``, ``sparsity.json`` and README.md to ``export_dir``.

    Args:
        model: the pruned model.
        tokenizer: saved beside it when not None.
        patterns: ``{state-dict key: pattern}``, e.g. ``{"bert.encoder.layer.0.attention.self.query.weight": 2:4}``.
        export_dir: the folder to write (replaced only once the new copy is complete).
        transposed: the keys whose weight is stored ``[in, out]`` (GPT-2's ``Conv1D``).
        card: the model card's facts; default: what the model itself tells (:func:`card_facts`).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    unknown = sorted(set(patterns) - set(state))
    if unknown:
        raise ValueError(f"Cannot export: pruned layers {unknown[:3]} are not in the model's state dict.")
    manifest = sparsity_manifest(state, patterns, transposed)
    readme = render_model_card(card or card_facts(model), manifest)
    files = {MANIFEST: json.dumps(manifest, indent=2) + "\n", CARD: readme}
    return save_pretrained_atomic(model, tokenizer, export_dir, extra_files=files)


def save_pretrained_atomic(
    model: Any, tokenizer: Any, export_dir: str | os.PathLike, extra_files: dict[str, str] | None = None
) -> Path:
    """``save_pretrained`` of model and tokenizer into a staging folder, moved into place only once complete."""
    refuse_non_finite(model, export_dir)
    target = Path(export_dir).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "export")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def refuse_non_finite(model: Any, export_dir: str | os.PathLike) -> None:
    """Refuse to export weights holding NaN or Inf: a diverged model must not replace a good export (or be served)."""
    state = model.state_dict()
    bad = non_finite_names(state)
    if bad:
        raise FloatingPointError(
            f"Refusing to export to {export_dir}: NaN/Inf in {describe_non_finite(bad, len(state))} of the model: "
            "training diverged. Lower the learning rate (or rho) and train again; the previous export is kept."
        )
