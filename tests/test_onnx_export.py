"""ONNX export of a 2:4 export folder: dynamic axes, ONNX Runtime parity with PyTorch, the pattern in the initializers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import run_verify, verify_line
from onnx import numpy_helper
from tiny_models import export_pruned, tiny_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nxm_lightning.sparsity.nxm import is_nxm
from nxm_lightning.sparsity.onnx_export import (
    METADATA_KEY,
    PARITY_ATOL,
    export_onnx,
    load_export,
    locate_layers,
    max_logit_difference,
    sample_inputs,
    verify_onnx,
)
from nxm_lightning.sparsity.verify import VerifyError, verify

REPO = Path(__file__).resolve().parents[1]


def record(path: Path) -> dict[str, dict]:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props[METADATA_KEY])["layers"]


def initializer(path: Path, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.name == name)


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bert_onnx")
    model, layers, inputs = load_export(export_pruned(tiny_model("bert"), folder / "export"))
    return export_onnx(model, layers, folder / "model.onnx", inputs)


# An encoder (MatMul weights), GPT-2 (Conv1D, stored [in, out]) and a Llama-style decoder (causal mask, GQA).
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_onnx_matches_pytorch_and_keeps_2to4(arch: str, tmp_path: Path) -> None:
    model, layers, inputs = load_export(export_pruned(tiny_model(arch), tmp_path / "export"))
    path = export_onnx(model, layers, tmp_path / "model.onnx", inputs)
    assert not model.training  # the export leaves the model in eval mode (dropout off)

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
    model = onnx.load(str(bert_onnx))
    layer = "bert.encoder.layer.1.intermediate.dense.weight"
    name = record(bert_onnx)[layer]["initializer"]
    init = next(i for i in model.graph.initializer if i.name == name)
    array = numpy_helper.to_array(init).copy()  # [in, out]
    array[4:8, 3] = [1.0, 2.0, 3.0, 4.0]  # output 3, input features 4..7: four non-zeros in one group
    init.CopyFrom(numpy_helper.from_array(array, name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
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
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    export = export_pruned(model, tmp_path / "export", AutoTokenizer.from_pretrained(tiny_bert))
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
