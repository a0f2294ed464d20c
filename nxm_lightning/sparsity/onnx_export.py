"""Export an N:M export folder to ONNX, check ONNX Runtime against PyTorch, and verify the pattern in the ONNX file.

``python -m nxm_lightning.sparsity.onnx_export EXPORT_DIR model.onnx`` writes ``model.onnx`` with dynamic batch and sequence
axes and the logits as output, checks that every layer listed in ``sparsity.json`` is still N:M in the file's
initializers, and compares ONNX Runtime's logits on CPU with PyTorch's (:data:`PARITY_ATOL`). GPU users then build a
TensorRT engine that runs the 2:4 layers on sparse tensor cores::

    trtexec --onnx=model.onnx --sparsity=enable --fp16

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): it runs offline with ``onnx`` alone, where the
``torch.export``-based default also needs ``onnxscript``. It renames most Linear weights and stores them transposed
(``[in, out]`` MatMul initializers named ``onnx::MatMul_N``), so each layer is located by value after the export and
the file records, in its metadata, which initializer holds it and in which layout: ``verify`` reads that record.

Needs the ``onnx`` extra: ``pip install 'nxm-lightning[onnx]'`` (``onnx`` and ``onnxruntime``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nxm_lightning.sparsity.export import MANIFEST, as_out_in, pretrained_class
from nxm_lightning.sparsity.verify import VerifyError, layer_violations, read_layers, reason

METADATA_KEY = "nxm_lightning.sparsity"
RECORD_FORMAT = "nxm-lightning-onnx/1"
OPSET = 17  # the first opset with LayerNormalization; TensorRT 8.6+ and ONNX Runtime take it
# ONNX Runtime (CPU, fp32) against PyTorch: the largest absolute logit difference accepted. Both run fp32 but fuse and
# order the sums differently; measured differences on the tested models are around 1e-6.
PARITY_ATOL = 1e-4
# The model inputs the export can take, in this order: the ones a tokenizer produces for these models.
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
INSTALL_HINT = "Install the onnx extra: pip install 'nxm-lightning[onnx]' (onnx and onnxruntime)."


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"ONNX export and verification need the {name.split('.')[0]!r} package. {INSTALL_HINT}") from None


def model_input_names(model: nn.Module, tokenizer_inputs: Sequence[str] | None = None) -> list[str]:
    """The inputs to export: the tokenizer's (when known) that the model's forward accepts, in :data:`KNOWN_INPUTS` order.

    Without a tokenizer: ``input_ids``, ``attention_mask``, and ``token_type_ids`` only for models with more than one
    token type (BERT-style pairs; GPT-2's forward accepts them but its tokenizer never makes them).
    """
    accepted = set(inspect.signature(model.forward).parameters)
    if tokenizer_inputs is None:
        tokenizer_inputs = ["input_ids", "attention_mask"]
        if getattr(model.config, "type_vocab_size", 0) > 1:
            tokenizer_inputs.append("token_type_ids")
    return [name for name in KNOWN_INPUTS if name in accepted and name in tokenizer_inputs]


def sample_inputs(
    config: Any, input_names: Sequence[str], batch: int = 2, seq: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids (never the pad token) with the last row padded to about half its length.

    The padding matters when tracing: some attention code skips the mask when it holds no padding, and the trace
    would keep that shortcut for every input.
    """
    generator = torch.Generator().manual_seed(seed)
    pad = getattr(config, "pad_token_id", None)
    low = 0 if pad is None else pad + 1
    ids = torch.randint(low, max(low + 1, config.vocab_size), (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, max(1, seq // 2) :] = 0
    if pad is not None:
        ids[mask == 0] = pad
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    if "token_type_ids" in input_names and seq > 2:
        tensors["token_type_ids"][:, seq // 2 :] = 1  # a sentence pair, so that token types are exercised
    return {name: tensors[name] for name in input_names}


class _Logits(nn.Module):
    """The model called with named inputs, returning only the logits: the graph's one output."""

    def __init__(self, model: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


def _value_key(array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array)
    return array.shape, array.dtype.str, hashlib.sha1(array.tobytes()).hexdigest()


def locate_layers(onnx_model: Any, weights: dict[str, torch.Tensor], layers: dict[str, dict]) -> dict[str, dict]:
    """Find each N:M layer's weight among the ONNX initializers, by value, as stored or transposed.

    Args:
        onnx_model: an ``onnx.ModelProto``.
        weights: the PyTorch state dict (stored layouts).
        layers: the manifest's ``layers`` (``pattern`` and ``layout`` per state-dict key).

    Returns:
        ``{key: {"pattern", "initializer", "layout"}}``: ``layout`` is that of the initializer (``in_out`` for the
        exporter's MatMul weights).

    Raises:
        ValueError: a layer's weight is in no initializer (the exporter folded something into it), so its pattern could
            not be checked in the file.
    """
    numpy_helper = _import("onnx.numpy_helper")
    index: dict[tuple, tuple[str, str]] = {}
    for initializer in onnx_model.graph.initializer:
        if len(initializer.dims) != 2:
            continue
        array = numpy_helper.to_array(initializer)
        index.setdefault(_value_key(array), (initializer.name, "out_in"))
        index.setdefault(_value_key(array.T), (initializer.name, "in_out"))
    record, lost = {}, []
    for key, entry in layers.items():
        out_in = as_out_in(weights[key], entry.get("layout", "out_in")).detach().cpu().numpy()
        found = index.get(_value_key(out_in))
        if found is None:
            lost.append(key)
            continue
        record[key] = {"pattern": entry["pattern"], "initializer": found[0], "layout": found[1]}
    if lost:
        raise ValueError(
            f"{len(lost)} N:M layers (e.g. {lost[0]!r}) are in no initializer of the ONNX graph: the exporter changed "
            "their weights (e.g. folded a constant into them), so their pattern cannot be checked in the file. Export "
            "without constant folding, or report the architecture."
        )
    return record


def export_onnx(
    model: nn.Module, layers: dict[str, dict], output: str | Path, input_names: Sequence[str], opset: int = OPSET
) -> Path:
    """Export a transformers model's logits to ONNX with dynamic batch and sequence axes and a sparsity record.

    Args:
        model: a ``PreTrainedModel`` with a head that returns ``logits`` (switched to eval mode, fp32).
        layers: the ``layers`` of its ``sparsity.json`` manifest (:func:`nxm_lightning.sparsity.export.sparsity_manifest`).
        output: the ``.onnx`` file to write.
        input_names: the inputs, see :func:`model_input_names`.
        opset: the ONNX opset.

    Returns:
        The written path. The file's metadata (``nxm_lightning.sparsity``) says which initializer holds each layer.
    """
    onnx = _import("onnx")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # a decoder's key/value cache is no output of this graph
    dummy = sample_inputs(model.config, input_names)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in input_names} | {"logits": {0: "batch"}}
    # In eval mode: the exporter puts the module back in its mode afterwards, and a wrapper left in training mode
    # would switch the model's dropout on for whoever uses it next.
    wrapper = _Logits(model, input_names).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is chosen on purpose (see the module docstring): its deprecation notice is noise.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(
            wrapper, tuple(dummy.values()), str(output), input_names=list(input_names),
            output_names=["logits"], dynamic_axes=dynamic, opset_version=opset, dynamo=False,
        )  # fmt: skip
    onnx_model = onnx.load(str(output))
    record = locate_layers(onnx_model, model.state_dict(), layers)
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({"format": RECORD_FORMAT, "layers": record})
    onnx.save(onnx_model, str(output))
    onnx.checker.check_model(str(output))
    return output


def load_export(export_dir: str | Path) -> tuple[nn.Module, dict[str, dict], list[str]]:
    """The model (fp32, eval), the manifest's layers and the input names of an nxm-lightning export folder."""
    import transformers

    export_dir = Path(export_dir)
    manifest_path = export_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} not found: pass a folder written by HardPruneCallback's export (save_pretrained output "
            "plus sparsity.json)."
        )
    layers = json.loads(manifest_path.read_text())["layers"]
    _, model_class = pretrained_class(export_dir)
    model = model_class.from_pretrained(export_dir).float().eval()
    try:
        tokenizer_inputs = list(transformers.AutoTokenizer.from_pretrained(export_dir).model_input_names)
    except (OSError, ValueError):  # no tokenizer saved in the folder
        tokenizer_inputs = None
    return model, layers, model_input_names(model, tokenizer_inputs)


def onnx_logits(onnx_path: str | Path, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The logits ONNX Runtime computes on CPU for ``inputs``."""
    ort = _import("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {name: value.numpy() for name, value in inputs.items()})[0]


def max_logit_difference(model: nn.Module, onnx_path: str | Path, inputs: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between PyTorch's and ONNX Runtime's logits on ``inputs``."""
    with torch.no_grad():
        expected = model(**inputs).logits.float().numpy()
    return float(np.abs(onnx_logits(onnx_path, inputs) - expected).max())


def verify_onnx(path: str | Path) -> list[str]:
    """The N:M violations in an ONNX file from :func:`export_onnx` (empty when compliant).

    Raises:
        VerifyError: the file cannot be read, holds no sparsity record, or the onnx package is missing.
    """
    try:
        onnx = _import("onnx")
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
    problems, weights = [], {}
    for name, entry in layers.items():
        initializer = initializers.get(entry["initializer"])
        if initializer is None:
            problems.append(f"layer {name!r}: its initializer {entry['initializer']!r} is missing from the ONNX graph")
            continue
        try:
            weights[name] = torch.from_numpy(onnx.numpy_helper.to_array(initializer).copy())
        except ValueError as err:  # raw data that does not fill the initializer's shape
            raise VerifyError(f"{path}: initializer {initializer.name!r} (layer {name!r}) is corrupt ({reason(err)}).") from None
    return problems + layer_violations(layers, weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nxm_lightning.sparsity.onnx_export", description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", help="a folder written by HardPruneCallback (save_pretrained + sparsity.json)")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = parser.parse_args(argv)
    try:
        model, layers, input_names = load_export(args.export_dir)
        path = export_onnx(model, layers, args.output, input_names, args.opset)
    except (ImportError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = verify_onnx(path)
    for problem in problems:
        print(f"VIOLATION: {problem}", file=sys.stderr)
    # Two shapes other than the traced one, with padding: the dynamic axes must hold.
    difference = max(max_logit_difference(model, path, sample_inputs(model.config, input_names, b, s, seed=1))
                     for b, s in ((1, 5), (3, 17)))  # fmt: skip
    print(f"Wrote {path} (inputs {', '.join(input_names)}; {len(layers)} N:M layers verified in its initializers).")
    print(f"ONNX Runtime vs PyTorch on CPU: max |logit difference| {difference:.2e} (tolerance {PARITY_ATOL:g}).")
    if difference > PARITY_ATOL:
        print(f"error: ONNX Runtime's logits differ from PyTorch's by more than {PARITY_ATOL:g}.", file=sys.stderr)
        return 1
    if problems:
        return 1
    print("GPU: trtexec --onnx=" + str(path) + " --sparsity=enable --fp16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
