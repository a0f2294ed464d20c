"""The export format: what an nxm-lightning export folder's ``sparsity.json`` and an ONNX file's sparsity record hold,
and how a reader checks weights against them. The writers (:mod:`.export`, :mod:`.onnx_export`) and the readers
(:mod:`.verify`, :mod:`.onnx_format`, the score command, the study) all take it from here; it imports torch, the
standard library and :mod:`.nxm` only, so it sits at the bottom of the core.

``sparsity.json`` (:data:`MANIFEST`, format :data:`MANIFEST_FORMAT`)::

    {"format": "nxm-lightning/1", "pattern_order": ..., "overall_density": 0.5,
     "layers": {"<state-dict key>": {"pattern": "2:4", "layout": "out_in", "shape": [out, in],
                                     "nonzeros": ..., "numel": ..., "density": ...}}}

Each entry's ``layout`` is one of :data:`LAYOUTS`: ``out_in`` (``nn.Linear``, stored ``[out, in]``; the default, for
manifests written before it existed) or ``in_out`` (GPT-2's ``Conv1D``, stored ``[in, out]``); either way the N:M
groups run along the input features. An ONNX file carries the same ``layers`` (with ``initializer``: which
initializer holds the weight, in which layout) as JSON in its metadata entry :data:`METADATA_KEY`, format
:data:`RECORD_FORMAT`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

import torch

from nxm_lightning.sparsity.nxm import NxMPattern, first_violation

MANIFEST = "sparsity.json"
MANIFEST_FORMAT = "nxm-lightning/1"
# Every version of the manifest's format, past and future: how an export folder of any version is recognised.
MANIFEST_FORMATS = re.compile(r"nxm-lightning/\d+")
PATTERN_ORDER = "N:M = N kept of every M consecutive input features"
LAYOUTS = ("out_in", "in_out")
# The ONNX file's metadata entry holding the sparsity record, and the record's format.
METADATA_KEY = "nxm_lightning.sparsity"
RECORD_FORMAT = "nxm-lightning-onnx/1"


class VerifyError(Exception):
    """The folder cannot be verified (missing, unreadable or malformed files)."""


def reason(err: BaseException) -> str:
    """``Type: first line of the message``: a library's error as part of a one-line VerifyError."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def layout_of(transposed: bool) -> str:
    """The manifest layout of a weight stored ``[in, out]`` (``transposed``) or ``[out, in]``."""
    return "in_out" if transposed else "out_in"


def as_out_in(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """``weight`` as ``[out, in]`` (the layout the N:M math works on) from its stored ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown weight layout {layout!r}: expected one of {LAYOUTS}.")
    return weight.t() if layout == "in_out" else weight


def describe_violation(name: str, pattern: NxMPattern, violation: tuple[int, int, int], layout: str = "out_in") -> str:
    """A violation found by ``first_violation`` on the ``[out, in]`` view, in words (and in stored indices if transposed)."""
    row, col, count = violation
    stored = f" (stored [in, out]: rows {col}..{col + pattern.m - 1} of column {row})" if layout == "in_out" else ""
    return (
        f"layer {name!r} is not {pattern}: its first bad group is row {row}, input columns {col}..{col + pattern.m - 1}"
        f"{stored}, with {count} non-zeros (at most {pattern.n} allowed)"
    )


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
        layout = layout_of(name in transposed)
        weight = as_out_in(weights[name], layout)
        violation = first_violation(weight, pattern.n, pattern.m)
        if violation is not None:
            raise ValueError(f"Refusing to export: {describe_violation(name, pattern, violation, layout)}")
        nonzeros, numel = int((weight != 0).sum()), weight.numel()
        layers[name] = {"pattern": str(pattern), "layout": layout, "shape": list(weights[name].shape),
                        "nonzeros": nonzeros, "numel": numel, "density": nonzeros / numel}  # fmt: skip
    kept = sum(v["nonzeros"] for v in layers.values())
    total = sum(v["numel"] for v in layers.values())
    return {"format": MANIFEST_FORMAT, "pattern_order": PATTERN_ORDER, "layers": layers,
            "overall_density": kept / max(total, 1)}  # fmt: skip


def read_layers(text: str | bytes, where: str, keys: tuple[str, ...] = ("pattern",)) -> dict[str, dict]:
    """The ``layers`` of a manifest (``sparsity.json``, or an ONNX file's sparsity record), every entry checked.

    A hand-edited or damaged manifest is a VerifyError (could not check) naming the file and the entry, rather than
    a traceback from deep inside the check.

    Args:
        text: the manifest's JSON.
        where: the manifest's name in messages.
        keys: the string fields each entry must have (``pattern``; the ONNX record's ``initializer`` too).
    """
    expected = "an object {layer name: {'pattern': 'N:M', 'layout': 'out_in' or 'in_out'}}"
    try:
        manifest = json.loads(text)
    except ValueError as err:  # bad JSON, or bytes that are no text
        raise VerifyError(f"{where} is not valid JSON ({reason(err)}).") from None
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, dict):
        found = "missing" if layers is None else f"a {type(layers).__name__}"
        raise VerifyError(f"{where} is not a valid manifest: 'layers' is {found}, expected {expected}.")
    for name, entry in layers.items():
        problem = None
        if not isinstance(entry, dict):
            problem = f"is a {type(entry).__name__}, expected {{'pattern': 'N:M', ...}}"
        elif absent := [key for key in keys if key not in entry]:
            problem = f"has no {absent[0]!r}"
        elif wrong := [key for key in keys if not isinstance(entry[key], str)]:
            problem = f"has {wrong[0]!r} {entry[wrong[0]]!r}, expected a string"
        elif entry.get("layout", "out_in") not in LAYOUTS:
            problem = f"has layout {entry['layout']!r}, expected one of {LAYOUTS}"
        else:
            try:
                NxMPattern.parse(entry["pattern"])
            except ValueError as err:
                problem = f"has an invalid pattern: {err}"
        if problem:
            raise VerifyError(f"{where} is not a valid manifest: layer {name!r} {problem}.")
    return layers


def layer_violations(layers: dict[str, dict], weights: dict[str, torch.Tensor]) -> list[str]:
    """The violations of ``weights`` against manifest entries ``{name: {"pattern", "layout"}}`` (names present only).

    ``layout`` is ``out_in`` (the default, for manifests written before it existed) or ``in_out`` (stored transposed).
    A listed weight that cannot hold the pattern at all (not 2-D, or a width not a multiple of M) is a violation too.
    """
    problems = []
    for name, entry in layers.items():
        if name not in weights:
            continue
        pattern = NxMPattern.parse(entry["pattern"])
        layout = entry.get("layout", "out_in")
        try:
            violation = first_violation(as_out_in(weights[name], layout), pattern.n, pattern.m)
        except ValueError as err:
            problems.append(f"layer {name!r} cannot be {pattern}: {err}")
            continue
        if violation is not None:
            problems.append(describe_violation(name, pattern, violation, layout))
    return problems
