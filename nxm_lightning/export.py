"""Export a pruned Hugging Face model as a plain ``save_pretrained`` folder plus a ``sparsity.json`` manifest.

Written to a temporary folder beside the target and moved into place only when complete, so that a crash never
leaves a half-written model (and an existing export is replaced only by a finished one).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from nxm_lightning.nxm import NxMPattern, first_violation

MANIFEST = "sparsity.json"


def sparsity_manifest(weights: dict[str, torch.Tensor], patterns: dict[str, NxMPattern]) -> dict[str, Any]:
    """Pattern and verified counts per layer; raises if any weight violates its pattern."""
    layers = {}
    for name, pattern in patterns.items():
        weight = weights[name]
        violation = first_violation(weight, pattern.n, pattern.m)
        if violation is not None:
            raise ValueError(f"Refusing to export: {describe_violation(name, pattern, violation)}")
        nonzeros = int((weight != 0).sum())
        layers[name] = {"pattern": str(pattern), "shape": list(weight.shape), "nonzeros": nonzeros,
                        "numel": weight.numel(), "density": nonzeros / weight.numel()}  # fmt: skip
    kept = sum(v["nonzeros"] for v in layers.values())
    total = sum(v["numel"] for v in layers.values())
    return {"format": "nxm-lightning/1", "pattern_order": "N:M = N kept of every M consecutive input features",
            "layers": layers, "overall_density": kept / max(total, 1)}  # fmt: skip


def describe_violation(name: str, pattern: NxMPattern, violation: tuple[int, int, int]) -> str:
    row, col, count = violation
    return (
        f"layer {name!r} is not {pattern}: its first bad group is row {row}, input columns {col}..{col + pattern.m - 1}, "
        f"with {count} non-zeros (at most {pattern.n} allowed)"
    )


def export_pretrained(model: Any, tokenizer: Any, patterns: dict[str, NxMPattern], export_dir: str | os.PathLike) -> Path:
    """Write ``model`` (a transformers PreTrainedModel), ``tokenizer`` and ``sparsity.json`` to ``export_dir``.

    ``patterns`` maps state-dict keys of ``model`` (e.g. ``bert.encoder.layer.0.attention.self.query.weight``) to
    their N:M pattern.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    unknown = sorted(set(patterns) - set(state))
    if unknown:
        raise ValueError(f"Cannot export: pruned layers {unknown[:3]} are not in the model's state dict.")
    manifest = sparsity_manifest(state, patterns)
    return save_pretrained_atomic(model, tokenizer, export_dir, extra_files={MANIFEST: json.dumps(manifest, indent=2) + "\n"})


def save_pretrained_atomic(
    model: Any, tokenizer: Any, export_dir: str | os.PathLike, extra_files: dict[str, str] | None = None
) -> Path:
    """``save_pretrained`` of model and tokenizer into a staging folder, moved into place only once complete."""
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
