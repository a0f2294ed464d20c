"""The score command: an export folder scores what evaluate_score scores, its ONNX file the same within the engines'
arithmetic, the task comes from the model card, and bad input is one line with exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_bert, write_stsb
from tiny_models import export_pruned
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nxm_lightning.sparsity.export_format import MANIFEST
from nxm_lightning.sparsity.model_card import CARD, CardFacts, render_model_card
from nxm_lightning.sparsity.onnx_export import export_onnx, load_export
from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.module import SequenceClassificationModule
from nxm_lightning.tasks.score import main, score_export

REPO = Path(__file__).resolve().parents[1]
CARD_SCORES = {"before the cut": 12.5, "after the cut": 11.25}


def export_with_card(model_dir: Path, export_dir: Path, task: str | None) -> Path:
    """``model_dir`` cut to 2:4 and exported with its tokenizer, its card recording ``task`` (as a fit's would)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    export = export_pruned(model, export_dir, AutoTokenizer.from_pretrained(model_dir))
    facts = CardFacts(task=f"GLUE STS-B ({task})" if task else None, scores=CARD_SCORES if task else {})
    (export / CARD).write_text(render_model_card(facts, json.loads((export / MANIFEST).read_text())))
    return export


@pytest.fixture(scope="module")
def stsb_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The export folder, ``<folder>.onnx`` beside it (the README's layout), and a GLUE folder of 13 STS-B dev rows.

    Its weights are drawn 10x wider than BERT's default: with the default, the predictions differ by about 2e-5 from
    one sentence to the next, so the engines' last-bit differences move a correlation by 1e-4 (the test compared
    rounding, not scoring); here they differ by about 0.3 and the two engines' correlations agree to 1e-6.
    """
    root = tmp_path_factory.mktemp("score")
    export = export_with_card(save_tiny_bert(root / "tiny_bert", initializer_range=0.2), root / "glue_nxm", "stsb")
    model, layers, inputs = load_export(export)
    onnx_path = export_onnx(model, layers, root / "glue_nxm.onnx", inputs)
    return export, onnx_path, write_stsb(root / "glue", ["1.0"] * 4, dev_size=13)


def test_folder_scores_as_evaluate_score_and_its_onnx_file_agrees(stsb_export: tuple[Path, Path, Path]) -> None:
    export, onnx_path, glue = stsb_export
    folder = score_export(export, data_dir=str(glue), batch_size=4)  # 4 batches, the last one short
    data = GLUEDataModule("stsb", str(export), data_dir=str(glue), eval_batch_size=4)
    data.setup("validate")
    expected = SequenceClassificationModule(str(export), "stsb").evaluate_score(data.val_dataloader())
    assert folder["score"] == pytest.approx(expected, abs=1e-9)
    assert (folder["kind"], folder["precision"], folder["task"], folder["examples"]) == ("folder", "fp32", "stsb", 13)
    assert set(folder["metrics"]) == {"pearson", "spearman"} and folder["card_scores"] == CARD_SCORES

    onnx = score_export(onnx_path, data_dir=str(glue), batch_size=4)  # tokenizer and task from the folder beside it
    assert (onnx["kind"], onnx["precision"], onnx["task"], onnx["card_scores"]) == ("onnx", "fp32", "stsb", CARD_SCORES)
    assert onnx["score"] == pytest.approx(folder["score"], abs=1e-3)
    assert onnx["metrics"] == pytest.approx(folder["metrics"], abs=1e-5)


def test_command_line_scores_an_onnx_file_as_json(stsb_export: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """As a user types it: an ONNX file elsewhere, its tokenizer named, the first 8 examples, JSON out."""
    export, onnx_path, glue = stsb_export
    moved = shutil.copy(onnx_path, tmp_path / "model.onnx")
    command = [sys.executable, "-m", "nxm_lightning.tasks.score", str(moved), "--tokenizer", str(export),
               "--data-dir", str(glue), "--max-samples", "8", "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    scored = json.loads(result.stdout)
    assert (scored["task"], scored["examples"], scored["path"]) == ("stsb", 8, str(moved))
    assert scored["score"] == pytest.approx(score_export(export, data_dir=str(glue), max_samples=8)["score"], abs=1e-3)


def test_one_line_names_score_metrics_artifact_and_card(
    stsb_export: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export, _, glue = stsb_export
    capsys.readouterr()
    assert main([str(export), "--data-dir", str(glue), "--task", "sts-b"]) == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert len(captured.out.splitlines()) == 1 and captured.err == ""
    assert line.startswith("stsb dev score ") and "(mean of pearson " in line and ", spearman " in line
    assert f"13 examples, max_seq_length 128) of folder fp32 {export}; model card: before the cut 12.50" in line


def error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()  # what the fixtures printed
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


def test_bad_input_is_one_line_with_exit_status_2(
    stsb_export: tuple[Path, Path, Path], tiny_bert_2labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, onnx_path, glue = stsb_export
    data = ["--data-dir", str(glue)]
    assert "no such file or folder" in error_line([str(tmp_path / "nope"), *data], capsys)
    assert "is not an export: it holds no readable config.json" in error_line([str(tmp_path), *data], capsys)
    assert "Unknown GLUE task 'imdb'" in error_line([str(export), "--task", "imdb", *data], capsys)
    assert "has 1 output, and task 'rte' needs 2" in error_line([str(export), "--task", "rte", *data], capsys)
    assert "--max-samples 0 must be a positive" in error_line([str(export), "--max-samples", "0", *data], capsys)
    assert "looked for the folder" in error_line([str(export), "--data-dir", str(tmp_path)], capsys)

    alone = tmp_path / "alone"
    alone.mkdir()
    lonely = shutil.copy(onnx_path, alone / "model.onnx")
    assert "no tokenizer found beside it" in error_line([str(lonely), *data], capsys)
    junk = alone / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    assert "is not an ONNX model ONNX Runtime can load" in error_line([str(junk), "--tokenizer", str(export), *data], capsys)

    # Two outputs fit five GLUE tasks: without a task in the card, it must be given.
    two_labels = export_with_card(tiny_bert_2labels, tmp_path / "two", task=None)
    message = error_line([str(two_labels), *data], capsys)
    assert "its model card records no GLUE task (2 outputs fit cola, sst2, mrpc, qqp, qnli, rte, wnli); pass --task" in message

    result = subprocess.run([sys.executable, "-m", "nxm_lightning.tasks.score", str(tmp_path / "nope")],
                            capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_one_output_without_a_recorded_task_is_stsb(tiny_bert: Path, tmp_path: Path) -> None:
    """STS-B is the only GLUE task with one output: an export whose card records no task is still scored on it."""
    export = export_with_card(tiny_bert, tmp_path / "export", task=None)
    scored = score_export(export, data_dir=str(write_stsb(tmp_path / "glue", ["1.0"], dev_size=5)))
    assert (scored["task"], scored["examples"], scored["card_scores"]) == ("stsb", 5, {})
