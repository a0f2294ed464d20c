"""What reading an nxm-lightning ONNX file needs, shared by the writer (:mod:`.onnx_export`) and the checker
(:mod:`.verify`), so that neither imports the other: the optional ``onnx`` packages, the sparsity record's metadata
entry (:data:`~.export_format.METADATA_KEY`), the quantized operators' integer weights and their zero points, and
:func:`verify_onnx`.

Needs the ``onnx`` extra only when called: ``pip install 'nxm-lightning[onnx]'`` (``onnx`` and ``onnxruntime``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nxm_lightning.sparsity.export_format import METADATA_KEY, VerifyError, layer_violations, read_layers, reason

INSTALL_HINT = "Install the onnx extra: pip install 'nxm-lightning[onnx]' (onnx and onnxruntime)."


def optional_import(name: str) -> Any:
    """The module ``name`` of an optional package (onnx, onnxruntime); an ImportError that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"ONNX export and verification need the {name.split('.')[0]!r} package. {INSTALL_HINT}") from None


def record_entry(onnx_model: Any) -> Any:
    """The metadata entry that holds the sparsity record, added empty when the model has none yet."""
    entry = next((p for p in onnx_model.metadata_props if p.key == METADATA_KEY), None)
    if entry is None:
        entry = onnx_model.metadata_props.add()
        entry.key = METADATA_KEY
    return entry


# The quantized operators that can take an N:M layer's integer weight: the input index of the weight and of its zero
# point. quantize_dynamic writes MatMulInteger; ONNX Runtime's optimiser (a saved optimised model) fuses it into
# DynamicQuantizeMatMul or MatMulIntegerToFloat; static (QDQ) quantization writes DequantizeLinear.
QUANTIZED_WEIGHT_INPUTS = {
    "MatMulInteger": (1, 3),
    "DynamicQuantizeMatMul": (1, 3),
    "MatMulIntegerToFloat": (1, 5),
    "DequantizeLinear": (0, 2),
}


def zero_points(onnx_model: Any) -> dict[str, str]:
    """``{integer weight: its zero point}`` for the inputs of the graph's quantized operators (``""``: none, i.e. 0)."""
    found = {}
    for node in onnx_model.graph.node:
        if node.op_type in QUANTIZED_WEIGHT_INPUTS:
            weight, zero_point = QUANTIZED_WEIGHT_INPUTS[node.op_type]
            found[node.input[weight]] = node.input[zero_point] if len(node.input) > zero_point else ""
    return found


def integer_weight_problem(name: str, initializer: str, zero_point: str | None, initializers: dict[str, Any]) -> str | None:
    """Why an N:M layer's integer weight cannot be checked as stored (None: it can).

    The stored integers are checked for the pattern, which says the real weights are N:M only if the zero point is 0
    (a real zero is stored as the zero point); sparse INT8 kernels need the zeros stored as zeros too.
    """
    if zero_point == "":
        return None
    if zero_point not in initializers:  # None: no quantized operator takes it as its weight
        return (
            f"layer {name!r}: the zero point of its integer initializer {initializer!r} is unknown (it is the weight of "
            f"no {', '.join(QUANTIZED_WEIGHT_INPUTS)} node, or its zero point is computed)"
        )
    if np.any(optional_import("onnx.numpy_helper").to_array(initializers[zero_point]) != 0):
        return (
            f"layer {name!r}: its int8 weight {initializer!r} has non-zero zero points (asymmetric quantization), so its "
            "zeros are not stored as zeros; quantize the weights symmetrically (quantize_int8, or WeightSymmetric=True)"
        )
    return None


def verify_onnx(path: str | Path) -> list[str]:
    """The N:M violations in an ONNX file (empty when compliant): from :func:`.onnx_export.export_onnx` or its
    :func:`.onnx_export.quantize_int8`.

    An integer (INT8) weight is checked as stored, along the input features as for fp32, after its zero point (found
    through the quantized operator that takes it) is checked to be 0.

    Raises:
        VerifyError: the file cannot be read, holds no sparsity record, or the onnx package is missing.
    """
    try:
        onnx = optional_import("onnx")
    except ImportError as err:
        raise VerifyError(str(err)) from None
    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and others for a file that is not ONNX
        raise VerifyError(f"{path} is not a readable ONNX file ({reason(err)}).") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise VerifyError(
            f"{path} holds no nxm-lightning sparsity record (metadata {METADATA_KEY!r}): export it with "
            "python -m nxm_lightning.sparsity.onnx_export EXPORT_DIR OUT.onnx."
        )
    layers = read_layers(props[METADATA_KEY], f"{path}'s sparsity record ({METADATA_KEY})", ("pattern", "initializer"))
    initializers = {init.name: init for init in model.graph.initializer}
    zeros = zero_points(model)
    problems, weights = [], {}
    for name, entry in layers.items():
        initializer = initializers.get(entry["initializer"])
        if initializer is None:
            problems.append(f"layer {name!r}: its initializer {entry['initializer']!r} is missing from the ONNX graph")
            continue
        try:
            array = onnx.numpy_helper.to_array(initializer).copy()
        except ValueError as err:  # raw data that does not fill the initializer's shape
            raise VerifyError(f"{path}: initializer {initializer.name!r} (layer {name!r}) is corrupt ({reason(err)}).") from None
        if np.issubdtype(array.dtype, np.integer):  # an INT8 file (quantize_int8)
            problem = integer_weight_problem(name, initializer.name, zeros.get(initializer.name), initializers)
            if problem:
                problems.append(problem)
                continue
        weights[name] = torch.from_numpy(array)
    return problems + layer_violations(layers, weights)
