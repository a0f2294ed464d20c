"""ONNX export of a 2:4 export folder: dynamic axes, ONNX Runtime parity with PyTorch, the pattern in the initializers.

And its INT8 file (``quantize_int8``, ``--int8``): the pattern in the int8 initializers, parity within the relative
tolerance, violations and asymmetric zero points named by layer, the fused and QDQ forms ONNX Runtime writes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run_verify, verify_line
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from tiny_models import export_pruned, tiny_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nxm_lightning.sparsity.export_format import METADATA_KEY, VerifyError
from nxm_lightning.sparsity.nxm import is_nxm
from nxm_lightning.sparsity.onnx_export import (
    FFN_OUTPUT_LAYERS,
    INT8_LAYER_RTOL,
    PARITY_ATOL,
    export_onnx,
    int8_layer_errors,
    load_export,
    locate_layers,
    max_logit_difference,
    quantize_int8,
    sample_inputs,
)
from nxm_lightning.sparsity.onnx_format import verify_onnx
from nxm_lightning.sparsity.verify import verify

REPO = Path(__file__).resolve().parents[1]
# Weights 10x the default spread (0.02) for the INT8 tests: with the default, the tiny random models' logits hardly depend
# on the encoder (zeroing a whole layer moved them by 2%), so a quantization error there would go unseen.
WIDE_INIT = 0.2
# The INT8 files' logits against PyTorch's on these tiny models, relative to the largest logit: measured at most 2.5%.
TINY_INT8_RTOL = 0.15


def record(path: Path) -> dict[str, dict]:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props[METADATA_KEY])["layers"]


def initializer(path: Path, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.name == name)


def with_initializer(path: Path, name: str, array: np.ndarray, out: Path) -> Path:
    """A copy of the ONNX file ``path`` with initializer ``name`` replaced by ``array``, written to ``out``."""
    model = onnx.load(str(path))
    next(i for i in model.graph.initializer if i.name == name).CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(model, str(out))
    return out


def with_record(path: Path, layers: dict[str, dict], out: Path) -> Path:
    """A copy of the ONNX file ``path`` whose sparsity record lists ``layers``, written to ``out``."""
    model = onnx.load(str(path))
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    entry.value = json.dumps(json.loads(entry.value) | {"layers": layers})
    onnx.save(model, str(out))
    return out


def pruned_tiny_bert_export(tiny_bert: Path, folder: Path) -> Path:
    """The MiniLM-shaped tiny BERT, cut to 2:4 and exported with its tokenizer."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    return export_pruned(model, folder, AutoTokenizer.from_pretrained(tiny_bert))


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bert_onnx")
    model, layers, inputs = load_export(export_pruned(tiny_model("bert"), folder / "export"))
    return export_onnx(model, layers, folder / "model.onnx", inputs)


@pytest.fixture(scope="module")
def bert_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.int8.onnx`` next to its fp32 ``model.onnx`` and its ``export`` folder (a :data:`WIDE_INIT` tiny BERT)."""
    folder = tmp_path_factory.mktemp("bert_int8")
    model, layers, inputs = load_export(export_pruned(tiny_model("bert", initializer_range=WIDE_INIT), folder / "export"))
    return quantize_int8(export_onnx(model, layers, folder / "model.onnx", inputs), folder / "model.int8.onnx")


# An encoder (MatMul weights), GPT-2 (Conv1D, stored [in, out]) and a Llama-style decoder (causal mask, GQA).
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_onnx_matches_pytorch_and_keeps_2to4(arch: str, tmp_path: Path) -> None:
    model, layers, inputs = load_export(export_pruned(tiny_model(arch), tmp_path / "export"))
    own_attention = model.config._attn_implementation
    path = export_onnx(model, layers, tmp_path / "model.onnx", inputs)
    assert not model.training  # the export leaves the model in eval mode (dropout off)
    # Traced with eager attention (sdpa's trace guards every score tensor with IsNaN/Where), then given back its own.
    assert own_attention == "sdpa" and model.config._attn_implementation == own_attention
    assert "IsNaN" not in {node.op_type for node in onnx.load(str(path)).graph.node}

    graph_inputs = onnx.load(str(path)).graph.input
    assert [i.name for i in graph_inputs] == inputs
    assert all([d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"] for i in graph_inputs)
    # shapes other than the traced (2, 8), the last row padded (but at length 1): the dynamic axes and the mask hold
    for batch, seq in ((1, 5), (3, 17), (4, 30), (2, 1)):
        assert max_logit_difference(model, path, sample_inputs(model.config, inputs, batch, seq, seed=3)) < PARITY_ATOL

    found = record(path)
    assert set(found) == set(layers)
    assert verify_onnx(path) == [] and verify(path) == []
    # The exporter stores the weights [in, out] (MatMul): read along the stored rows, the pattern is not 2:4; read
    # along the input features it is.
    assert {entry["layout"] for entry in found.values()} == {"in_out"}
    arrays = [initializer(path, entry["initializer"]) for entry in found.values()]
    assert all(is_nxm(torch.from_numpy(a.T.copy()), 2, 4) for a in arrays)
    assert not all(is_nxm(torch.from_numpy(a.copy()), 2, 4) for a in arrays)


def test_verify_onnx_names_the_layer_of_a_broken_group(bert_onnx: Path, tmp_path: Path) -> None:
    layer = "bert.encoder.layer.1.intermediate.dense.weight"
    name = record(bert_onnx)[layer]["initializer"]
    array = initializer(bert_onnx, name).copy()  # [in, out]
    array[4:8, 3] = [1.0, 2.0, 3.0, 4.0]  # output 3, input features 4..7: four non-zeros in one group
    broken = with_initializer(bert_onnx, name, array, tmp_path / "broken.onnx")
    problems = verify_onnx(broken)
    assert len(problems) == 1 and layer in problems[0] and "row 3, input columns 4..7" in problems[0]
    result = run_verify(broken)
    assert result.returncode == 1 and "row 3, input columns 4..7" in result.stderr


def test_verify_refuses_onnx_without_record(bert_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(bert_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(VerifyError, match="holds no nxm-lightning sparsity record"):
        verify(bare)
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"\x00\x01 not a protobuf")
    with pytest.raises(VerifyError, match="is not a readable ONNX file"):
        verify(not_onnx)


def test_verify_cli_refuses_non_project_or_corrupt_onnx_with_one_line(bert_onnx: Path, tmp_path: Path) -> None:
    """Exit 2 (could not check) and one ``error:`` line, as for a folder; the VerifyError used to escape as a traceback."""
    model = onnx.load(str(bert_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    assert verify_line(bare, 2).startswith(f"error: {bare} holds no nxm-lightning sparsity record")

    truncated = tmp_path / "truncated.onnx"
    data = bert_onnx.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert verify_line(truncated, 2).startswith(f"error: {truncated} is not a readable ONNX file (DecodeError: ")

    model = onnx.load(str(bert_onnx))
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    damaged = json.loads(entry.value)
    del damaged["layers"][layer]["initializer"]
    entry.value = json.dumps(damaged)
    no_initializer = tmp_path / "no_initializer.onnx"
    onnx.save(model, str(no_initializer))
    with pytest.raises(VerifyError, match=f"layer '{layer}' has no 'initializer'"):
        verify(no_initializer)
    assert verify_line(no_initializer, 2).startswith(f"error: {no_initializer}'s sparsity record ({METADATA_KEY}) is not a valid")

    model = onnx.load(str(bert_onnx))
    name = record(bert_onnx)[layer]["initializer"]
    init = next(i for i in model.graph.initializer if i.name == name)
    init.raw_data = init.raw_data[:16]  # fewer bytes than its shape needs
    corrupt = tmp_path / "corrupt.onnx"
    onnx.save(model, str(corrupt))
    assert verify_line(corrupt, 2).startswith(
        f"error: {corrupt}: initializer {name!r} (layer {layer!r}) is corrupt (ValueError: "
    )


def test_cli_exports_a_folder_with_its_tokenizer_inputs(tiny_bert: Path, tmp_path: Path) -> None:
    """The tokenizer saved in the folder decides the inputs: MiniLM's BERT tokenizer makes token_type_ids too."""
    export = pruned_tiny_bert_export(tiny_bert, tmp_path / "export")
    out = tmp_path / "onnx" / "model.onnx"
    command = [sys.executable, "-m", "nxm_lightning.sparsity.onnx_export", str(export), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "inputs input_ids, attention_mask, token_type_ids" in result.stdout
    assert "trtexec --onnx=" in result.stdout and "--sparsity=enable" in result.stdout
    assert verify(out) == []
    missing = subprocess.run([*command[:3], str(tmp_path), str(out)], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and "sparsity.json not found" in missing.stderr


def test_a_layer_in_no_initializer_is_an_error(bert_onnx: Path) -> None:
    model, layers, _ = load_export(bert_onnx.parent / "export")
    weights = dict(model.state_dict())
    key = "bert.encoder.layer.0.attention.self.query.weight"
    weights[key] = weights[key] * 2  # as if the exporter had folded a scale into that weight
    with pytest.raises(ValueError, match=r"1 N:M layers \(e.g. 'bert.encoder.layer.0.attention.self.query.weight'\) are in no"):
        locate_layers(onnx.load(str(bert_onnx)), weights, layers)


def zero_point_of(path: Path, weight: str) -> np.ndarray:
    """The zero point of ``weight`` as the graph's MatMulInteger that takes it reads it."""
    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulInteger" and n.input[1] == weight)
    return initializer(path, node.input[3])


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_int8_keeps_2to4_and_matches_pytorch(arch: str, tmp_path: Path) -> None:
    model, layers, inputs = load_export(export_pruned(tiny_model(arch, initializer_range=WIDE_INIT), tmp_path / "export"))
    path = quantize_int8(export_onnx(model, layers, tmp_path / "model.onnx", inputs), tmp_path / "model.int8.onnx")

    found = record(path)
    assert set(found) == set(layers)
    assert verify_onnx(path) == [] and verify(path) == []
    # Every layer runs in int8 (MatMulInteger), its weight stored int8 with zero point 0, the groups along the input
    # features ([in, out] initializers: down the rows) 2:4 in the stored integers.
    assert sum(n.op_type == "MatMulInteger" for n in onnx.load(str(path)).graph.node) >= len(layers)
    arrays = [initializer(path, entry["initializer"]) for entry in found.values()]
    assert {a.dtype for a in arrays} == {np.dtype(np.int8)} and {entry["layout"] for entry in found.values()} == {"in_out"}
    assert all(not zero_point_of(path, entry["initializer"]).any() for entry in found.values())
    assert all(is_nxm(torch.from_numpy(a.T.copy()), 2, 4) for a in arrays)
    assert not all(is_nxm(torch.from_numpy(a.copy()), 2, 4) for a in arrays)

    for batch, seq in ((1, 5), (3, 17), (4, 30)):
        x = sample_inputs(model.config, inputs, batch, seq, seed=3)
        assert max_logit_difference(model, path, x, relative=True) < TINY_INT8_RTOL
        assert max_logit_difference(model, path, x) > PARITY_ATOL  # quantized: not the fp32 graph's logits


def test_int8_layer_check_catches_a_wrong_scale(bert_int8: Path, tmp_path: Path) -> None:
    """One layer's scales doubled (as a quantizer bug would) puts that layer past :data:`INT8_LAYER_RTOL`; the sound
    file's layers stay well inside it, and the command line refuses the broken file."""
    layer = "bert.encoder.layer.1.intermediate.dense.weight"
    scale = record(bert_int8)[layer]["initializer"].replace("_quantized", "_scale")
    wrong = with_initializer(bert_int8, scale, 2 * initializer(bert_int8, scale), tmp_path / "wrong.onnx")
    model, _, inputs = load_export(bert_int8.parent / "export")
    x = sample_inputs(model.config, inputs, 4, 30, seed=3)
    sound = int8_layer_errors(bert_int8.parent / "model.onnx", bert_int8, x)
    broken = int8_layer_errors(bert_int8.parent / "model.onnx", wrong, x)
    assert set(sound) == set(record(bert_int8)) and 0 < max(sound.values()) < INT8_LAYER_RTOL / 2
    assert broken[layer] > 2 * INT8_LAYER_RTOL * 0.9 and all(broken[n] == sound[n] for n in sound if ".layer.0." in n)


def test_int8_layer_check_leaves_out_the_fp32_layers(bert_int8: Path, tmp_path: Path) -> None:
    partial = quantize_int8(bert_int8.parent / "model.onnx", tmp_path / "model.int8.onnx", FFN_OUTPUT_LAYERS)
    model, _, inputs = load_export(bert_int8.parent / "export")
    errors = int8_layer_errors(bert_int8.parent / "model.onnx", partial, sample_inputs(model.config, inputs, 2, 9, seed=3))
    assert set(errors) == {n for n in record(partial) if not (".output.dense" in n and ".attention." not in n)}


def test_verify_int8_names_the_layer_of_a_broken_group(bert_int8: Path, tmp_path: Path) -> None:
    layer = "bert.encoder.layer.1.intermediate.dense.weight"
    name = record(bert_int8)[layer]["initializer"]
    array = initializer(bert_int8, name).copy()  # int8 [in, out]
    array[4:8, 3] = [1, 2, 3, 4]  # output 3, input features 4..7: four non-zeros in one group
    broken = with_initializer(bert_int8, name, array, tmp_path / "broken.onnx")
    problems = verify_onnx(broken)
    assert len(problems) == 1 and layer in problems[0] and "row 3, input columns 4..7" in problems[0]
    result = run_verify(broken)
    assert result.returncode == 1 and f"VIOLATION: layer {layer!r} is not 2:4" in result.stderr


def test_verify_int8_refuses_asymmetric_or_unknown_zero_points(bert_int8: Path, tmp_path: Path) -> None:
    """Stored integers are N:M but the real weights not when the zero point is not 0; nor is an unknown one accepted."""
    layers = record(bert_int8)
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    zero_point = layers[layer]["initializer"].replace("_quantized", "_zero_point")
    asymmetric = with_initializer(bert_int8, zero_point, np.ones(32, np.int8), tmp_path / "asymmetric.onnx")
    problems = verify_onnx(asymmetric)
    assert len(problems) == 1 and problems[0].startswith(f"layer {layer!r}: its int8 weight ")
    assert "has non-zero zero points" in problems[0]
    result = run_verify(asymmetric)
    assert result.returncode == 1 and "(asymmetric quantization)" in result.stderr

    # The record pointing at an int8 initializer no quantized operator takes as its weight (here: the zero point).
    unknown = with_record(bert_int8, layers | {layer: layers[layer] | {"initializer": zero_point}}, tmp_path / "unknown.onnx")
    assert verify_onnx(unknown) == [
        f"layer {layer!r}: the zero point of its integer initializer {zero_point!r} is unknown (it is the weight of no "
        "MatMulInteger, DynamicQuantizeMatMul, MatMulIntegerToFloat, DequantizeLinear node, or its zero point is computed)"
    ]


def test_verify_int8_in_onnxruntime_fused_and_qdq_forms(bert_int8: Path, tmp_path: Path) -> None:
    """The INT8 file as ONNX Runtime's optimiser saves it (fused operators) and a static QDQ file verify too."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(bert_int8), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert "MatMulInteger" not in ops and {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"} <= ops
    assert verify(Path(options.optimized_model_filepath)) == []

    model, _, inputs = load_export(bert_int8.parent / "export")

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            samples = [sample_inputs(model.config, inputs, seed=seed) for seed in range(2)]
            self.batches = iter([{k: v.numpy() for k, v in sample.items()} for sample in samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(bert_int8.parent / "model.onnx"), str(qdq), Calibration(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8)  # fmt: skip
    layers = {name: entry | {"initializer": entry["initializer"] + "_quantized"} for name, entry in record(qdq).items()}
    qdq = with_record(qdq, layers, qdq)
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(qdq)).graph.node} and verify_onnx(qdq) == []


def test_int8_keeps_the_chosen_layers_fp32_and_still_2to4(bert_int8: Path, tmp_path: Path) -> None:
    """``fp32_layers``: the feed-forward outputs' MatMuls stay fp32 (fp32, 2:4 initializers), every other layer int8."""
    fp32 = bert_int8.parent / "model.onnx"
    path = quantize_int8(fp32, tmp_path / "model.int8.onnx", FFN_OUTPUT_LAYERS)
    layers = record(path)
    kept = {name for name in layers if ".output.dense" in name and ".attention." not in name}
    assert kept and len(kept) < len(layers)
    quantization = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY])["quantization"]
    assert quantization["fp32_layers"] == sorted(kept)
    for name, entry in layers.items():
        array = initializer(path, entry["initializer"])
        assert array.dtype == (np.float32 if name in kept else np.int8), name
        assert is_nxm(torch.from_numpy(array.T.copy()), 2, 4), name
    assert verify_onnx(path) == [] and verify(path) == []
    matmuls = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"]
    assert {entry["initializer"] for name, entry in layers.items() if name in kept} <= {i for n in matmuls for i in n.input}
    # Fewer layers quantized: the logits are nearer PyTorch's than the all-int8 file's, and still not fp32's.
    model, _, inputs = load_export(bert_int8.parent / "export")
    x = sample_inputs(model.config, inputs, 3, 17, seed=3)
    partial = max_logit_difference(model, path, x, relative=True)
    assert PARITY_ATOL < partial < max_logit_difference(model, bert_int8, x, relative=True)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("layer.(", "'layer.\\(' is not a regular expression"), ("decoder", "'decoder' matches none of the 12 N:M layers")],
)
def test_int8_fp32_layers_that_are_wrong_are_refused(bert_int8: Path, tmp_path: Path, pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantize_int8(bert_int8.parent / "model.onnx", tmp_path / "model.int8.onnx", pattern)
    assert not (tmp_path / "model.int8.onnx").exists()


def test_quantize_int8_refuses_a_layer_it_did_not_quantize(bert_int8: Path, tmp_path: Path) -> None:
    """A record entry whose initializer no MatMul takes (here: the word embeddings, a Gather's) is an error, not fp32."""
    layers = record(bert_int8.parent / "model.onnx")
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    layers[layer]["initializer"] = "model.bert.embeddings.word_embeddings.weight"
    fp32 = with_record(bert_int8.parent / "model.onnx", layers, tmp_path / "model.onnx")
    with pytest.raises(ValueError, match=f"Layer '{layer}' was not quantized .* feeds no MatMul"):
        quantize_int8(fp32, tmp_path / "model.int8.onnx")


def test_cli_int8_writes_and_checks_the_int8_file(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnx" / "model.onnx"
    export = pruned_tiny_bert_export(tiny_bert, tmp_path / "export")
    command = [sys.executable, "-m", "nxm_lightning.sparsity.onnx_export", str(export), str(out), "--int8"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    int8 = tmp_path / "onnx" / "model.int8.onnx"
    assert f"Wrote {int8} (inputs input_ids, attention_mask, token_type_ids; 12 N:M layers verified in its int8" in result.stdout
    assert re.search(rf"layer outputs vs the fp32 file: largest error [0-9.]+% \(bert\.\S+; tolerance {INT8_LAYER_RTOL:.0%}\)",
                     result.stdout)  # fmt: skip
    assert "Please consider to run pre-processing" not in result.stdout + result.stderr
    assert record(int8) and verify_line(int8, 0) == f"OK: every layer in {int8} satisfies its N:M pattern."


def test_cli_int8_fp32_ffn_output(tiny_bert: Path, tmp_path: Path) -> None:
    """``--int8-fp32 ffn-output`` writes and checks the partly quantized file; without ``--int8`` it is one error line."""
    out = tmp_path / "onnx" / "model.onnx"
    export = pruned_tiny_bert_export(tiny_bert, tmp_path / "export")
    command = [sys.executable, "-m", "nxm_lightning.sparsity.onnx_export", str(export), str(out)]
    result = subprocess.run([*command, "--int8", "--int8-fp32", "ffn-output"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    int8 = tmp_path / "onnx" / "model.int8.onnx"
    assert f"Wrote {int8} (inputs input_ids, attention_mask, token_type_ids; 12 N:M layers verified in its int8 and fp32" in (
        result.stdout
    )
    assert sum(entry["initializer"].endswith("_quantized") for entry in record(int8).values()) == 12 - 2  # 2 layers
    refused = subprocess.run([*command, "--int8-fp32", "ffn-output"], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].endswith("--int8-fp32 needs --int8")
