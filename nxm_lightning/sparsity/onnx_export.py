"""Export an N:M export folder to ONNX, check ONNX Runtime against PyTorch, and verify the pattern in the ONNX file.

``python -m nxm_lightning.sparsity.onnx_export EXPORT_DIR model.onnx`` writes ``model.onnx`` with dynamic batch and sequence
axes and the logits as output, checks that every layer listed in ``sparsity.json`` is still N:M in the file's
initializers, and compares ONNX Runtime's logits on CPU with PyTorch's (:data:`PARITY_ATOL`). GPU users then build a
TensorRT engine that runs the 2:4 layers on sparse tensor cores::

    trtexec --onnx=model.onnx --sparsity=enable --fp16

With ``--int8`` it also writes ``model.int8.onnx`` for CPUs (:func:`quantize_int8`): ONNX Runtime's own dynamic
quantization, int8 weights quantized symmetrically so that the zeros stay zeros and the N:M pattern survives in the
int8 initializers (``verify`` checks them), uint8 activations quantized at run time; ``--int8-fp32`` keeps chosen
layers fp32. Each int8 layer's output is compared with the fp32 file's (:data:`INT8_LAYER_RTOL`), and the logits'
difference from PyTorch's is printed; the dev score (``nxm_lightning.tasks.score``) measures its accuracy. That file
is for ONNX Runtime: its ``MatMulInteger`` operators are not in TensorRT's ONNX parser, which takes the fp32 file
(``--int8`` with its own calibration).

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): it runs offline with ``onnx`` alone, where the
``torch.export``-based default also needs ``onnxscript``. It renames most Linear weights and stores them transposed
(``[in, out]`` MatMul initializers named ``onnx::MatMul_N``), so each layer is located by value after the export and
the file records, in its metadata, which initializer holds it and in which layout: ``verify`` reads that record.

Needs the ``onnx`` extra: ``pip install 'nxm-lightning[onnx]'`` (``onnx`` and ``onnxruntime``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nxm_lightning.sparsity.export import pretrained_class
from nxm_lightning.sparsity.export_format import MANIFEST, RECORD_FORMAT, as_out_in
from nxm_lightning.sparsity.onnx_format import optional_import, record_entry, verify_onnx

OPSET = 17  # the first opset with LayerNormalization; TensorRT 8.6+ and ONNX Runtime take it
# ONNX Runtime (CPU, fp32) against PyTorch: the largest absolute logit difference accepted. Both run fp32 but fuse and
# order the sums differently; measured differences on the tested models are around 1e-6.
PARITY_ATOL = 1e-4
# An INT8 file against the fp32 file it came from: the largest accepted relative error (Frobenius norm) of a quantized
# layer's output on the same inputs. Per layer, because a trained model's logits on random tokens do not tell a sound
# file from a broken one: the main job's CoLA and SST-2 exports moved by 31% and 27% of their largest logit while their
# dev scores moved by 0.8 and 0.5 points, and one layer's scales doubled moved them by 30-97%. Layer outputs do: sound,
# the error grows through the layers to at most 26% (CoLA, 6 layers); a doubled scale puts its layer at 95-101%.
INT8_LAYER_RTOL = 0.5
# BERT-style feed-forward output Linears (``...layer.N.output.dense``, not ``attention.output.dense``), for ``--int8-fp32``.
FFN_OUTPUT_LAYERS = r"layer\.\d+\.output\.dense"
# The model inputs the export can take, in this order: the ones a tokenizer produces for these models.
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
    numpy_helper = optional_import("onnx.numpy_helper")
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


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Trace ``model`` with transformers' plain ("eager") attention, then give it back its own.

    PyTorch's fused attention (``sdpa``, transformers' default) traces into a masked fill guarded by ``IsNaN`` and
    ``Where`` over every score tensor: 17% of the INT8 file's time on a 2:4 MiniLM-L6 at batch 32; the eager graph has
    neither (INT8 250 against 318 ms, same logits to 5e-8 in fp32; AMD EPYC, 2 threads, 2026-12-06).
    """
    config = getattr(model, "config", None)
    own = getattr(config, "_attn_implementation", None)
    if own in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(own)


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
    onnx = optional_import("onnx")
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
    with torch.no_grad(), warnings.catch_warnings(), _eager_attention(model):
        # The TorchScript-based exporter is chosen on purpose (see the module docstring): its deprecation notice is noise.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(
            wrapper, tuple(dummy.values()), str(output), input_names=list(input_names),
            output_names=["logits"], dynamic_axes=dynamic, opset_version=opset, dynamo=False,
        )  # fmt: skip
    onnx_model = onnx.load(str(output))
    record = locate_layers(onnx_model, model.state_dict(), layers)
    record_entry(onnx_model).value = json.dumps({"format": RECORD_FORMAT, "layers": record})
    onnx.save(onnx_model, str(output))
    onnx.checker.check_model(str(output))
    return output


def quantize_int8(onnx_path: str | Path, output: str | Path, fp32_layers: str | None = None) -> Path:
    """Quantize a file from :func:`export_onnx` to INT8 with ONNX Runtime's ``quantize_dynamic``; the record follows.

    The options, and why:

    * weights int8 and symmetric (``WeightSymmetric``: zero point 0), so that a zero weight is stored as 0: the N:M
      pattern survives in the int8 initializers, where sparse INT8 kernels can use it;
    * one scale per output feature (``per_channel``): on the 2:4 MiniLM-L6 of RTE it halved the largest logit
      difference against one scale per matrix (0.12 against 0.23; same speed);
    * only ``MatMul``: that is where the time goes; quantizing the embedding tables (``Gather``) too shrank the file
      from 59 to 23 MB but moved the logits more (0.34) and flipped more predictions (6 of 64 RTE pairs, against 3);
    * activations uint8, quantized per tensor at run time (dynamic: no calibration set). Static quantization
      (activation scales calibrated once on training batches) lost more on the 2:4 MiniLM-L6 of STS-B: 2.2 points
      with min/max calibration, 1.5 with percentiles, against dynamic's 0.5 (docs/RESULTS.md).

    ``fp32_layers`` keeps some layers' MatMuls in fp32 (ONNX Runtime's ``nodes_to_exclude``), the usual way to buy
    accuracy back: on that model :data:`FFN_OUTPUT_LAYERS` (the six feed-forward output Linears, whose input is the
    GELU output with its outliers) cut the loss to 0.2 points. Their weights stay fp32 and N:M in the file.

    Args:
        onnx_path: an fp32 file written by :func:`export_onnx` (it holds the sparsity record).
        output: the INT8 ``.onnx`` file to write.
        fp32_layers: a regular expression; the layers of the record whose name it matches (``re.search``, e.g.
            ``bert.encoder.layer.0.output.dense``) stay fp32.

    Returns:
        The written path. Its sparsity record names each layer's int8 initializer.

    Raises:
        ValueError: ``fp32_layers`` is not a valid expression or matches no layer, or a layer's weight was not
            quantized (its initializer does not feed a MatMul), so the file would run that layer in fp32 unasked and
            its record would point at nothing.
    """
    onnx = optional_import("onnx")
    quantization = optional_import("onnxruntime.quantization")
    output = Path(output)
    fp32_model = onnx.load(str(onnx_path))
    record = json.loads(record_entry(fp32_model).value)
    kept = _matching_layers(record["layers"], fp32_layers)
    kept_weights = {record["layers"][name]["initializer"] for name in kept}
    excluded = [node.name for node in fp32_model.graph.node if node.op_type == "MatMul" and kept_weights & set(node.input)]
    output.parent.mkdir(parents=True, exist_ok=True)
    with _without_preprocessing_advice():
        quantization.quantize_dynamic(
            str(onnx_path), str(output), op_types_to_quantize=["MatMul"], per_channel=True, nodes_to_exclude=excluded,
            weight_type=quantization.QuantType.QInt8, extra_options={"WeightSymmetric": True},
        )  # fmt: skip
    model = onnx.load(str(output))
    quantized = {init.name for init in model.graph.initializer}
    suffix = optional_import("onnxruntime.quantization.quant_utils").TENSOR_NAME_QUANT_SUFFIX
    for name, entry in record["layers"].items():
        if name in kept:
            continue
        if entry["initializer"] + suffix not in quantized:
            raise ValueError(
                f"Layer {name!r} was not quantized (its initializer {entry['initializer']!r} feeds no MatMul), so the "
                "INT8 file would run it in fp32. Report the architecture."
            )
        entry["initializer"] += suffix
    record["quantization"] = {
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "onnxruntime": optional_import("onnxruntime").__version__,
        "weights": "int8, symmetric, per output feature",
        "activations": "uint8, per tensor, at run time",
        "op_types": ["MatMul"],
        "fp32_layers": sorted(kept),
    }
    record_entry(model).value = json.dumps(record)
    onnx.save(model, str(output))
    onnx.checker.check_model(str(output))
    return output


def _matching_layers(layers: dict[str, dict], pattern: str | None) -> set[str]:
    """The names in ``layers`` that ``pattern`` matches (``re.search``); none for no pattern."""
    if pattern is None:
        return set()
    try:
        expression = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"fp32 layers {pattern!r} is not a regular expression ({err}).") from None
    matched = {name for name in layers if expression.search(name)}
    if not matched:
        example = next(iter(layers), "none")
        raise ValueError(f"fp32 layers {pattern!r} matches none of the {len(layers)} N:M layers (e.g. {example!r}).")
    return matched


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """Drops ``quantize_dynamic``'s advice to run ``quant_pre_process`` first, a root-logger warning on every call.

    That pre-processing optimises the graph, which could fold or rename the weights the record names; ONNX Runtime
    applies the same optimisations when it loads the file anyway.
    """

    def keep(log: logging.LogRecord) -> bool:
        return not log.getMessage().startswith("Please consider to run pre-processing")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


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
    ort = optional_import("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {name: value.numpy() for name, value in inputs.items()})[0]


def int8_layer_errors(fp32_path: str | Path, int8_path: str | Path, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each int8 layer's output in ``int8_path`` against the same layer's in ``fp32_path``: ``|q - f| / |f|``.

    The output of a layer's MatMul keeps its tensor name through ``quantize_dynamic``, so both graphs expose it as an
    extra output. Layers the INT8 file keeps fp32 are left out (their error is only what earlier layers carried in).
    """
    onnx, ort = optional_import("onnx"), optional_import("onnxruntime")
    fp32_model, int8_model = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    fp32_layers = json.loads(record_entry(fp32_model).value)["layers"]
    int8_layers = json.loads(record_entry(int8_model).value)["layers"]
    outputs = {}
    for name, entry in fp32_layers.items():
        if int8_layers[name]["initializer"] != entry["initializer"]:  # quantized: its initializer was renamed
            outputs[name] = next(n.output[0] for n in fp32_model.graph.node if entry["initializer"] in n.input)
    feed = {name: value.numpy() for name, value in inputs.items()}

    def layer_outputs(model: Any) -> list[np.ndarray]:
        produced = {output for node in model.graph.node for output in node.output}
        for tensor in outputs.values():
            if tensor not in produced:
                raise ValueError(f"{int8_path} has no tensor {tensor!r} (a layer output of the fp32 file): re-quantize it.")
            model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(list(outputs.values()), feed)

    errors = zip(outputs, layer_outputs(fp32_model), layer_outputs(int8_model))
    return {name: float(np.linalg.norm(q - f) / np.linalg.norm(f)) for name, f, q in errors}


def max_logit_difference(
    model: nn.Module, onnx_path: str | Path, inputs: dict[str, torch.Tensor], relative: bool = False
) -> float:
    """The largest absolute difference between PyTorch's and ONNX Runtime's logits on ``inputs``.

    With ``relative``, divided by the largest absolute PyTorch logit: an INT8 file's error scales with the logits.
    """
    with torch.no_grad():
        expected = model(**inputs).logits.float().numpy()
    difference = float(np.abs(onnx_logits(onnx_path, inputs) - expected).max())
    return difference / float(np.abs(expected).max()) if relative else difference


def _check(model: nn.Module, path: Path, input_names: Sequence[str], layers: int, kind: str, fp32: Path) -> bool:
    """Verify the pattern in ``path``, compare ONNX Runtime's logits with PyTorch's and, for an INT8 file, its layers'
    outputs with those of ``fp32`` (the file it was quantized from); print the findings.

    ``kind`` names the file's weights: ``fp32``, ``int8``, or ``int8 and fp32`` (some layers kept fp32).
    """
    problems = verify_onnx(path)
    for problem in problems:
        print(f"VIOLATION: {problem}", file=sys.stderr)
    # Two shapes other than the traced one, with padding: the dynamic axes must hold.
    shapes = [sample_inputs(model.config, input_names, b, s, seed=1) for b, s in ((1, 5), (3, 17))]
    print(f"Wrote {path} (inputs {', '.join(input_names)}; {layers} N:M layers verified in its {kind} initializers).")
    if kind == "fp32":
        difference = max(max_logit_difference(model, path, inputs) for inputs in shapes)
        print(f"ONNX Runtime (fp32) vs PyTorch on CPU: max |logit difference| {difference:.2e} (tolerance {PARITY_ATOL:g}).")
        if difference > PARITY_ATOL:
            print(f"error: ONNX Runtime's logits differ from PyTorch's by more than {PARITY_ATOL:g}.", file=sys.stderr)
            return False
        return not problems
    difference = max(max_logit_difference(model, path, inputs, relative=True) for inputs in shapes)
    per_shape = [int8_layer_errors(fp32, path, inputs) for inputs in shapes]
    errors = {name: max(shape[name] for shape in per_shape) for name in per_shape[0]}
    worst = max(errors, key=errors.get)
    print(f"ONNX Runtime (int8) vs PyTorch on CPU: max |logit difference| {difference:.1%} of the largest |logit| on random "
          f"tokens; layer outputs vs the fp32 file: largest error {errors[worst]:.1%} ({worst}; tolerance "
          f"{INT8_LAYER_RTOL:.0%}). Its accuracy: python -m nxm_lightning.tasks.score {path} --tokenizer EXPORT_DIR")  # fmt: skip
    if errors[worst] > INT8_LAYER_RTOL:
        print(f"error: layer {worst!r} of {path} is {errors[worst]:.0%} off its fp32 output: the quantization is broken.",
              file=sys.stderr)  # fmt: skip
        return False
    return not problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nxm_lightning.sparsity.onnx_export", description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", help="a folder written by HardPruneCallback (save_pretrained + sparsity.json)")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write OUTPUT with the suffix .int8.onnx: dynamic INT8 (ONNX Runtime's quantize_dynamic, symmetric "
        "int8 weights that keep the N:M pattern) for ONNX Runtime on CPUs",
    )
    parser.add_argument(
        "--int8-fp32",
        metavar="REGEX",
        help="with --int8: the N:M layers whose name this matches stay fp32 (e.g. 'ffn-output' for "
        f"{FFN_OUTPUT_LAYERS!r}, the feed-forward outputs: less accuracy lost, less speed gained)",
    )
    args = parser.parse_args(argv)
    if args.int8_fp32 and not args.int8:
        parser.error("--int8-fp32 needs --int8")
    fp32_layers = FFN_OUTPUT_LAYERS if args.int8_fp32 == "ffn-output" else args.int8_fp32
    try:
        model, layers, input_names = load_export(args.export_dir)
        path = export_onnx(model, layers, args.output, input_names, args.opset)
        files = {path: "fp32"}
        if args.int8:
            files[quantize_int8(path, path.with_suffix(".int8.onnx"), fp32_layers)] = "int8 and fp32" if fp32_layers else "int8"
    except (ImportError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not all([_check(model, file, input_names, len(layers), kind, path) for file, kind in files.items()]):
        return 1
    print("GPU: trtexec --onnx=" + str(path) + " --sparsity=enable --fp16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
