"""Sparse backends (selection and fallback on CPU, equality with masked), export and verify."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_verify, verify_line
from safetensors.torch import load_file, save_file
from tiny_models import export_pruned, tiny_model
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig

import nxm_lightning.sparsity.export as export_module
from nxm_lightning.sparsity.export import export_pretrained, save_pretrained_atomic
from nxm_lightning.sparsity.export_format import VerifyError
from nxm_lightning.sparsity.model_card import CARD, card_facts, render_model_card
from nxm_lightning.sparsity.nxm import NxMPattern, nxm_project
from nxm_lightning.sparsity.sparse_linear import (
    NxMLinear,
    pack_nxm,
    reroute_to_backend,
    route_to_backend,
    select_backend,
    semi_structured_unavailable_reason,
    unpack_nxm,
)
from nxm_lightning.sparsity.targets import select_targets
from nxm_lightning.sparsity.verify import verify

REPO = Path(__file__).resolve().parents[1]
P24 = NxMPattern(2, 4)


def pruned_linear(in_features: int = 64, out_features: int = 32, pattern: NxMPattern = P24, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(nxm_project(linear.weight, pattern.n, pattern.m))
    return linear


@pytest.mark.parametrize("pattern", [NxMPattern(2, 4), NxMPattern(1, 4), NxMPattern(4, 8), NxMPattern(1, 2), NxMPattern(3, 16)])
def test_pack_unpack_roundtrip(pattern: NxMPattern) -> None:
    linear = pruned_linear(pattern=pattern)
    values, positions = pack_nxm(linear.weight, pattern)
    assert values.shape == (32, 64 * pattern.n // pattern.m)
    assert torch.equal(unpack_nxm(values, positions, pattern, 64), linear.weight.detach())


def test_packed_bytes_for_2_4() -> None:
    linear = pruned_linear(384, 384)
    values, positions = pack_nxm(linear.weight, P24)
    ratio = (values.numel() * values.element_size() + positions.numel()) / (linear.weight.numel() * 4)
    assert ratio == pytest.approx(0.5 + 2 / 8 / 2 / 4)  # half the fp32 values + 2 bits per kept value = 0.53125


@pytest.mark.parametrize("backend", ["masked", "packed", "auto"])
def test_backends_match_masked(backend: str) -> None:
    linear = pruned_linear()
    x = torch.randn(3, 5, 64)
    reference = nn.functional.linear(x, linear.weight, linear.bias)
    sparse = NxMLinear.from_linear(linear, P24, backend)
    assert torch.allclose(sparse(x), reference, atol=1e-5)
    assert torch.equal(sparse.dense_weight(), linear.weight.detach())


def test_auto_on_cpu_is_masked_and_semi_structured_falls_back() -> None:
    linear = pruned_linear()
    assert NxMLinear.from_linear(linear, P24, "auto").backend == "masked"
    with pytest.warns(UserWarning, match="unavailable: the weight is on cpu"):
        assert NxMLinear.from_linear(linear, P24, "semi_structured").backend == "masked"
    with pytest.raises(RuntimeError, match="unavailable: the weight is on cpu"):
        NxMLinear.from_linear(linear, P24, "semi_structured", strict=True)


@pytest.mark.parametrize(
    ("capability", "dtype", "shape", "pattern", "reason"),
    [
        ((8, 0), torch.float16, (64, 64), NxMPattern(1, 4), "only 2:4"),
        ((7, 5), torch.float16, (64, 64), P24, "compute capability 7.5"),
        ((8, 0), torch.float32, (64, 64), P24, "not one of fp16/bf16/int8"),
        ((8, 6), torch.float16, (40, 64), P24, "not a multiple"),
        ((9, 0), torch.bfloat16, (64, 128), P24, None),
    ],
)
def test_semi_structured_decision(capability, dtype, shape, pattern, reason) -> None:  # noqa: ANN001
    weight = torch.zeros(shape, dtype=dtype)
    found = semi_structured_unavailable_reason(weight, pattern, cuda_capability=capability)
    if reason is None:
        assert found is None
        assert select_backend("auto", weight, pattern, cuda_capability=capability) == "semi_structured"
    else:
        assert reason in found
        assert select_backend("auto", weight, pattern, cuda_capability=capability) == "masked"


def test_unknown_backend_and_non_nxm_weight() -> None:
    with pytest.raises(ValueError, match=r"backend='turbo' is not one of .*Valid values: auto, masked"):
        NxMLinear.from_linear(pruned_linear(), P24, "turbo")
    with pytest.raises(ValueError, match="not 2:4"):
        NxMLinear.from_linear(nn.Linear(8, 4), P24, "masked")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("backend", ["masked", "packed"])
def test_a_routed_model_saves_and_loads_as_the_plain_pruned_model(tmp_path: Path, arch: str, backend: str) -> None:
    model = tiny_model(arch).eval()
    targets = select_targets(model)
    with torch.no_grad():
        for t in targets:
            t.weight.copy_(nxm_project(t.weight, 2, 4))
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    route_to_backend(model, targets, backend)
    assert all(isinstance(model.get_submodule(t.name), NxMLinear) for t in targets)
    routed = model.state_dict()
    assert routed.keys() == plain.keys() and all(torch.equal(routed[k], v) for k, v in plain.items())  # GPT-2: [in, out]
    tokens = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        logits = model(tokens).logits
        model.save_pretrained(tmp_path / "resaved")
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "resaved").eval()
        torch.testing.assert_close(reloaded(tokens).logits, logits)
    # Into a routed model: packed again for its backend; a weight that is not 2:4 is refused, naming the layer.
    other = tiny_model(arch).eval()
    other_targets = select_targets(other)
    with torch.no_grad():
        for t in other_targets:
            t.weight.copy_(nxm_project(t.weight.flip(0), 2, 4))
    route_to_backend(other, other_targets, backend)
    other.load_state_dict(plain)
    with torch.no_grad():
        torch.testing.assert_close(other(tokens).logits, logits)
    wrong = dict(plain) | {f"{targets[0].name}.weight": plain[f"{targets[0].name}.weight"][:, :4]}
    with pytest.raises(RuntimeError, match=rf"size mismatch for {targets[0].name}.weight"):
        other.load_state_dict(wrong)
    plain[f"{targets[0].name}.weight"] += 1.0
    with pytest.raises(RuntimeError, match=rf"{targets[0].name}.weight into an NxMLinear \({backend}\): Weight is not 2:4"):
        other.load_state_dict(plain)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_matches_masked_on_gpu(dtype: torch.dtype) -> None:
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("no sparse tensor cores")
    linear = pruned_linear(256, 128).to("cuda", dtype)
    x = torch.randn(64, 256, device="cuda", dtype=dtype)
    sparse = NxMLinear.from_linear(linear, P24, "semi_structured", strict=True)
    assert sparse.backend == "semi_structured"
    assert torch.allclose(sparse(x), nn.functional.linear(x, linear.weight, linear.bias), atol=2e-2, rtol=2e-2)


def test_reroute_serves_routed_layers_as_their_device_now_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU fit comes back on the CPU (masked); on a GPU again the layers go semi-structured, and back to masked.

    No GPU here: ``on_gpu`` stands for where the weights are, and the semi-structured tensor is a dense subclass, so
    what is checked is the bookkeeping (which layers change, backends, dtypes, outputs).
    """
    import nxm_lightning.sparsity.sparse_linear as sparse_linear

    class FakeSemiStructured(torch.Tensor):
        @staticmethod
        def from_dense(weight: torch.Tensor) -> torch.Tensor:
            return weight.clone().as_subclass(FakeSemiStructured)

    on_gpu = False

    def select_on_fake_device(requested: str, weight: torch.Tensor, *args: object, **kwargs: object) -> str:
        return requested if requested in ("masked", "packed") else "semi_structured" if on_gpu else "masked"

    monkeypatch.setattr(sparse_linear, "select_backend", select_on_fake_device)
    monkeypatch.setattr(sparse_linear, "_semi_structured_class", lambda: FakeSemiStructured)
    linear, x = pruned_linear(), torch.randn(5, 64)
    model = nn.Sequential(NxMLinear.from_linear(linear, P24, "auto"), nn.Identity())
    packed = nn.Sequential(NxMLinear.from_linear(linear, P24, "packed"))
    assert reroute_to_backend(model, "auto", dtype=torch.bfloat16) == set() and model[0].backend == "masked"
    on_gpu = True
    assert reroute_to_backend(packed, "packed", dtype=torch.bfloat16) == set()
    assert reroute_to_backend(model, "auto", dtype=torch.bfloat16) == {"semi_structured"}
    layer = model[0]
    assert layer.backend == "semi_structured" and layer.weight.dtype == layer.bias.dtype == torch.bfloat16
    expected = nn.functional.linear(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16()).float()
    assert torch.equal(model(x), expected)
    assert reroute_to_backend(model, "auto", dtype=torch.bfloat16) == set() and model[0] is layer  # already sparse
    # Off the GPU, torch makes a semi-structured weight dense (in its bf16): served masked, in the input's dtype.
    layer.weight = nn.Parameter(layer.weight.as_subclass(torch.Tensor), requires_grad=False)
    on_gpu = False
    assert reroute_to_backend(model, "auto", dtype=torch.bfloat16) == {"masked"}
    rounded = nn.functional.linear(x, linear.weight.bfloat16().float(), linear.bias.bfloat16().float())
    assert model[0].backend == "masked" and torch.equal(model(x), rounded)


@pytest.mark.cuda
def test_an_auto_layer_routed_on_the_cpu_serves_semi_structured_on_the_gpu() -> None:
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("no sparse tensor cores")
    linear, x = pruned_linear(256, 128), torch.randn(64, 256)
    model = nn.Sequential(NxMLinear.from_linear(linear, P24, "auto", compute_dtype=torch.bfloat16))  # as fit end does
    assert model[0].backend == "masked"
    model.cuda()
    assert reroute_to_backend(model, "auto", dtype=torch.bfloat16) == {"semi_structured"}
    expected = nn.functional.linear(x, linear.weight, linear.bias)
    assert model[0].weight.dtype == torch.bfloat16
    assert torch.allclose(model(x.cuda()).float().cpu(), expected, atol=5e-2, rtol=5e-2)
    assert torch.equal(model.state_dict()["0.weight"].cpu(), linear.weight.detach().bfloat16())  # saved dense
    model.cpu()  # as Lightning's teardown does
    assert reroute_to_backend(model, "auto", dtype=torch.bfloat16) == {"masked"}
    assert torch.allclose(model(x), expected, atol=5e-2, rtol=5e-2)


def _pruned_hf(tiny_bert: Path) -> tuple[nn.Module, dict[str, NxMPattern]]:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    targets = select_targets(model)
    with torch.no_grad():
        for t in targets:
            t.module.weight.copy_(nxm_project(t.module.weight, 2, 4))
    return model, {f"{t.name}.weight": t.pattern for t in targets}


def test_export_loads_in_plain_transformers_and_verifies(tmp_path: Path, tiny_bert: Path) -> None:
    model, patterns = _pruned_hf(tiny_bert)
    out = export_pretrained(model, None, patterns, tmp_path / "export")
    manifest = json.loads((out / "sparsity.json").read_text())
    assert manifest["overall_density"] == pytest.approx(0.5)
    assert verify(out) == []
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    ids = torch.randint(0, 1000, (2, 7))
    model.eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    assert not list(tmp_path.glob(".export.partial-*"))  # staging folder gone


def test_verify_names_layer_and_first_bad_group(tmp_path: Path, tiny_bert: Path) -> None:
    model, patterns = _pruned_hf(tiny_bert)
    out = export_pretrained(model, None, patterns, tmp_path / "export")
    weights = load_file(str(out / "model.safetensors"))
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    weights[name][3, 4:8] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    problems = verify(out)
    assert len(problems) == 1 and name in problems[0] and "row 3, input columns 4..7" in problems[0]
    result = run_verify(out)
    assert result.returncode == 1 and "row 3, input columns 4..7" in result.stderr
    result = run_verify(tmp_path)
    assert result.returncode == 2 and "sparsity.json" in result.stderr


def test_export_refuses_violation_and_keeps_previous(tmp_path: Path, tiny_bert: Path) -> None:
    model, patterns = _pruned_hf(tiny_bert)
    out = export_pretrained(model, None, patterns, tmp_path / "export")
    before = (out / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.fill_(1.0)
    with pytest.raises(ValueError, match="Refusing to export: layer 'bert.encoder.layer.0.attention.self.query.weight'"):
        export_pretrained(model, None, patterns, out)
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "holds",
    [
        {"notes.txt": "my notes"},
        {"README.md": "# My model\n", "config.json": "{}"},  # someone else's Hugging Face folder
        {"sparsity.json": '{"format": "another-tool/2"}'},
        {"nxm-lightning-export.json": "not the marker"},
    ],
)
def test_export_refuses_a_folder_it_did_not_write(tmp_path: Path, tiny_bert: Path, holds: dict[str, str]) -> None:
    """A folder (or file) of the user's given as export_dir is refused, and kept as it was: the export would delete it."""
    model, patterns = _pruned_hf(tiny_bert)
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, text in holds.items():
        (mine / name).write_text(text)
    (tmp_path / "a_file").write_text("mine too")
    for target, what in ((mine, "already exists and is not an export of nxm-lightning"), (tmp_path / "a_file", "is a file")):
        with pytest.raises(ValueError, match=f"export_dir {re.escape(str(target))} {what}.*remove it yourself"):
            export_pretrained(model, None, patterns, target)
    assert {p.name: p.read_text() for p in mine.iterdir()} == holds and (tmp_path / "a_file").read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mine"]  # nothing staged or moved aside is left


def test_export_never_replaces_the_working_directory_home_or_checkout(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not even when the folder looks like an export: a replace would delete all that is under it."""
    assert export_module.CHECKOUT == REPO
    checkout, home, work = tmp_path / "checkout", tmp_path / "home", tmp_path / "work"
    monkeypatch.setattr(export_module, "CHECKOUT", checkout)  # first: code without the guard fails here, harmlessly
    monkeypatch.setenv("HOME", str(home))
    for folder in (checkout, home, work):
        folder.mkdir()
    model, patterns = _pruned_hf(tiny_bert)
    export_pretrained(model, None, patterns, work / "export")
    for folder in (checkout, home, work):
        for name in ("sparsity.json", "nxm-lightning-export.json"):
            (folder / name).write_text((work / "export" / name).read_text())
    monkeypatch.chdir(work)
    cases = [(".", "the working directory"), (tmp_path, "the working directory"), ("~", "the home directory"),
             (checkout, "the nxm-lightning checkout")]  # fmt: skip
    for target, what in cases:
        with pytest.raises(ValueError, match=f"is {what} .* or holds it; .*Choose another export_dir"):
            export_pretrained(model, None, patterns, target)
    assert sorted(p.name for p in work.iterdir()) == ["export", "nxm-lightning-export.json", "sparsity.json"]
    assert (checkout / "sparsity.json").is_file() and (home / "sparsity.json").is_file()


def test_export_replaces_an_empty_folder_and_its_own_exports_old_and_new(tmp_path: Path, tiny_bert: Path) -> None:
    """Exports written before the marker are recognised by their sparsity.json, or (dense) by their model card."""
    model, patterns = _pruned_hf(tiny_bert)
    out, dense = tmp_path / "export", tmp_path / "dense"
    out.mkdir()
    export_pretrained(model, None, patterns, out)
    marker = json.loads((out / export_module.MARKER).read_text())
    assert marker["format"] == "nxm-lightning-export/1" and "replaces the whole folder" in marker["note"]
    (out / "left_by_the_last_run.txt").write_text("")
    export_pretrained(model, None, patterns, out)
    assert not (out / "left_by_the_last_run.txt").exists() and verify(out) == []
    card = {CARD: render_model_card(card_facts(model))}
    save_pretrained_atomic(model, None, dense, extra_files=card)
    for previous in (out, dense):
        (previous / export_module.MARKER).unlink()  # as written before the marker existed
        (previous / "left_by_the_last_run.txt").write_text("")
    export_pretrained(model, None, patterns, out)
    save_pretrained_atomic(model, None, dense, extra_files=card)
    for replaced in (out, dense):
        assert (replaced / export_module.MARKER).is_file() and not (replaced / "left_by_the_last_run.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "export"]


def test_a_folder_that_appears_while_the_export_is_written_is_kept(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target is checked again just before the swap, not only when the export starts."""
    model, patterns = _pruned_hf(tiny_bert)
    out = tmp_path / "export"
    save = model.save_pretrained

    def save_while_the_user_writes(folder: Path, **kwargs: object) -> None:
        save(folder, **kwargs)
        out.mkdir()
        (out / "notes.txt").write_text("my notes")

    monkeypatch.setattr(model, "save_pretrained", save_while_the_user_writes)
    with pytest.raises(ValueError, match="already exists and is not an export"):
        export_pretrained(model, None, patterns, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and [p.name for p in tmp_path.iterdir()] == ["export"]


def test_verify_refuses_non_export(tmp_path: Path) -> None:
    with pytest.raises(VerifyError, match="not a directory"):
        verify(tmp_path / "missing")


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    model, patterns = _pruned_hf(tiny_bert)
    return export_pretrained(model, None, patterns, tmp_path_factory.mktemp("bert_export") / "export")


def edit_manifest(folder: Path, edit: Callable[[dict], object]) -> None:
    manifest = json.loads((folder / "sparsity.json").read_text())
    edit(manifest)
    (folder / "sparsity.json").write_text(json.dumps(manifest))


def test_verify_checks_the_default_targets_the_manifest_leaves_out(bert_export: Path, tmp_path: Path) -> None:
    """The weights decide, not the manifest's word: every default target of the model must be listed, and is checked."""
    emptied = shutil.copytree(bert_export, tmp_path / "emptied")
    edit_manifest(emptied, lambda manifest: manifest["layers"].clear())
    problems = verify(emptied)
    # Listed nowhere, though still 2:4: the manifest and the model card misstate the export, so it fails all the same.
    assert problems == [
        "sparsity.json does not list 12 of the model's 12 default target layers (0 of them not 2:4 in the weights): "
        "'bert.encoder.layer.0.attention.self.query.weight', 'bert.encoder.layer.0.attention.self.key.weight', "
        "'bert.encoder.layer.0.attention.self.value.weight' and 9 more. Every Linear inside the transformer blocks must "
        "be listed and N:M; export again with HardPruneCallback"
    ]
    assert verify_line(emptied, 1) == f"VIOLATION: {problems[0]}"

    changed = shutil.copytree(bert_export, tmp_path / "changed")
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    weights = load_file(str(changed / "model.safetensors"))
    weights[name][3, 4:8] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    save_file(weights, str(changed / "model.safetensors"), metadata={"format": "pt"})
    edit_manifest(changed, lambda manifest: manifest["layers"].pop(name))
    line = verify_line(changed, 1)
    assert f"does not list 1 of the model's 12 default target layers (1 of them not 2:4 in the weights): {name!r}." in line


def test_verify_does_not_require_layers_too_narrow_for_the_pattern(tmp_path: Path) -> None:
    """4:8 on a BERT of width 36: the selection skips the layers that read 36 features, so the export rightly omits them."""
    config = BertConfig(vocab_size=100, hidden_size=36, num_hidden_layers=1, num_attention_heads=2, intermediate_size=72)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="not a multiple of M=8"):
        export = export_pruned(AutoModelForSequenceClassification.from_config(config), tmp_path / "export", pattern="4:8")
    assert list(json.loads((export / "sparsity.json").read_text())["layers"]) == ["bert.encoder.layer.0.output.dense.weight"]
    assert verify(export) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["layers"]["bert.encoder.layer.0.attention.self.query.weight"].pop("pattern"),
         "layer 'bert.encoder.layer.0.attention.self.query.weight' has no 'pattern'."),
        (lambda m: m["layers"]["bert.encoder.layer.0.attention.self.key.weight"].update(pattern=24),
         "layer 'bert.encoder.layer.0.attention.self.key.weight' has 'pattern' 24, expected a string."),
        (lambda m: m["layers"]["bert.encoder.layer.0.output.dense.weight"].update(pattern="4:2"),
         "layer 'bert.encoder.layer.0.output.dense.weight' has an invalid pattern: Invalid N:M pattern '4:2'"),
        (lambda m: m["layers"]["bert.encoder.layer.0.output.dense.weight"].update(layout="rows"),
         "has layout 'rows', expected one of ('out_in', 'in_out')."),
        (lambda m: m["layers"].update({"bert.encoder.layer.0.output.dense.weight": "2:4"}),
         "layer 'bert.encoder.layer.0.output.dense.weight' is a str, expected {'pattern': 'N:M', ...}."),
        (lambda m: m.update(layers=[]), "'layers' is a list, expected an object {layer name: {'pattern': 'N:M',"),
        (lambda m: m.pop("layers"), "'layers' is missing, expected an object"),
    ],
    ids=["no pattern", "pattern not a string", "reversed pattern", "unknown layout", "entry not an object",
         "layers a list", "no layers"],
)  # fmt: skip
def test_verify_malformed_manifest_is_one_line_exit_2(
    bert_export: Path, tmp_path: Path, edit: Callable[[dict], object], message: str
) -> None:
    folder = shutil.copytree(bert_export, tmp_path / "export")
    edit_manifest(folder, edit)
    with pytest.raises(VerifyError, match="is not a valid manifest"):
        verify(folder)
    line = verify_line(folder, 2)
    assert line.startswith(f"error: {folder / 'sparsity.json'} is not a valid manifest: ") and message in line


def test_verify_unreadable_files_are_one_line_exit_2(bert_export: Path, tmp_path: Path) -> None:
    """Could not check (exit 2), not a traceback: a manifest that is no JSON, truncated or corrupt weights, no config."""
    folder = shutil.copytree(bert_export, tmp_path / "export")
    (folder / "sparsity.json").write_bytes(b"\xff\xfe{ not json")
    assert verify_line(folder, 2).startswith(f"error: {folder / 'sparsity.json'} is not valid JSON (JSONDecodeError: ")

    truncated = shutil.copytree(bert_export, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(VerifyError, match="model.safetensors is truncated or corrupt"):
        verify(truncated)
    line = verify_line(truncated, 2)
    assert line.startswith(f"error: {truncated / 'model.safetensors'} is truncated or corrupt (SafetensorError: ")

    binary = shutil.copytree(bert_export, tmp_path / "binary")
    (binary / "model.safetensors").unlink()
    torch.save(load_file(str(bert_export / "model.safetensors")), binary / "pytorch_model.bin")
    assert verify(binary) == []
    data = (binary / "pytorch_model.bin").read_bytes()
    (binary / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    line = verify_line(binary, 2)
    assert line.startswith(f"error: {binary / 'pytorch_model.bin'} is truncated or corrupt (")

    no_config = shutil.copytree(bert_export, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    assert verify_line(no_config, 2).startswith(f"error: Cannot build the model of {no_config} to find its default targets (")


def test_verify_a_listed_weight_that_cannot_be_nxm_is_a_violation(bert_export: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(bert_export, tmp_path / "export")
    name = "bert.encoder.layer.0.output.LayerNorm.weight"
    edit_manifest(folder, lambda manifest: manifest["layers"].update({name: {"pattern": "2:4"}}))
    assert verify_line(folder, 1).startswith(
        f"VIOLATION: layer {name!r} cannot be 2:4: N:M sparsity applies to 2-D weights [out_features, in_features]; got a "
        "1-D tensor of shape (32,)."
    )
