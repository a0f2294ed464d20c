"""Score an exported model on its GLUE dev set: the export folder (PyTorch) or an ONNX file made from it (fp32 or INT8,
run by ONNX Runtime on CPU), so that the number on the model card can be checked on the artifact that is deployed.

::

    python -m nxm_lightning.tasks.score exports/glue_nxm                 # the folder; the task from its model card
    python -m nxm_lightning.tasks.score exports/glue_nxm.onnx --data-dir ../shared/data/glue --json
    python -m nxm_lightning.tasks.score model.onnx --tokenizer exports/glue_nxm --task stsb --max-samples 200

The batches are :class:`~nxm_lightning.tasks.data.GLUEDataModule`'s validation batches and the metrics are computed by
:func:`~nxm_lightning.tasks.metrics.glue_metric_values`, the loop behind ``evaluate_score``: a folder scores, in fp32
on the CPU, what ``validate`` scores in fp32 with the same ``max_seq_length`` (and ``max_eval_samples``), and an ONNX
file differs from its folder only by the engine's arithmetic (INT8: by the quantization). An ONNX file takes its
tokenizer (and model card) from the export folder it was made from, found beside it (``X/`` for ``X.onnx`` or
``X.int8.onnx``) or holding it, or from ``--tokenizer``.

Without ``--task``, the task is the one the model card records, else the only GLUE task with the model's number of
outputs (1: stsb, 3: mnli). Bad input is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers

from nxm_lightning.sparsity.model_card import CARD, recorded_scores
from nxm_lightning.sparsity.onnx_format import optional_import
from nxm_lightning.tasks.card import recorded_task
from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.glue import GLUE_TASKS, GlueTask, get_task
from nxm_lightning.tasks.metrics import glue_metric_values, glue_score
from nxm_lightning.tasks.module import SequenceClassificationModule, position_limit

TOKENIZER_FILE = "tokenizer_config.json"
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# Element types of ONNX initializers that only a quantized graph holds (TensorProto.UINT8, TensorProto.INT8).
QUANTIZED_TYPES = (2, 3)


class ScoreError(Exception):
    """Bad input, said in one line: the path, what is wrong with it and what to pass instead."""


@dataclass
class Artifact:
    """What is scored and where its companions are.

    Args:
        path: the folder or the ``.onnx`` file given.
        kind: ``folder`` or ``onnx``.
        folder: the export folder whose model card (and config) tell the task; for ONNX, the tokenizer's folder.
        tokenizer: the name or folder the tokenizer is loaded from.
        num_labels: the model's number of outputs, when known.
        session: the ONNX Runtime session (ONNX only).
    """

    path: Path
    kind: str
    folder: Path | None
    tokenizer: str
    num_labels: int | None
    session: Any = None


def companion_folder(onnx_path: Path) -> Path | None:
    """The export folder an ONNX file was made from, if it holds a tokenizer: ``X/`` beside ``X.onnx`` (the README's
    layout) or ``X.int8.onnx``, else the folder that holds the file."""
    candidates = (onnx_path.with_suffix(""), onnx_path.parent / onnx_path.name.split(".")[0], onnx_path.parent)
    return next((folder for folder in candidates if (folder / TOKENIZER_FILE).is_file()), None)


def open_artifact(path: Path, tokenizer: str | None) -> Artifact:
    """Check ``path`` is an export folder or an ONNX file and find its tokenizer and number of outputs.

    Raises:
        ScoreError: no such path, a folder without ``config.json``, a file ONNX Runtime cannot load, or an ONNX file
            with no tokenizer beside it and no ``--tokenizer``.
    """
    if not path.exists():
        raise ScoreError(f"{path}: no such file or folder. Pass an export folder or an .onnx file made from one.")
    if path.is_dir():
        try:
            config = transformers.AutoConfig.from_pretrained(path)
        except (OSError, ValueError):
            raise ScoreError(
                f"{path} is not an export: it holds no readable config.json. Pass a folder written by the export "
                "(HardPruneCallback's or SavePretrainedCallback's export_dir) or an .onnx file."
            ) from None
        if tokenizer is None and not (path / TOKENIZER_FILE).is_file():
            raise ScoreError(f"{path} holds no tokenizer ({TOKENIZER_FILE}): pass --tokenizer, the model it was trained from.")
        return Artifact(path, "folder", path, tokenizer or str(path), config.num_labels)
    ort = optional_import("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime's own exception types, one per way a file can be unreadable
        raise ScoreError(f"{path} is not an ONNX model ONNX Runtime can load ({str(err).splitlines()[0]}).") from None
    folder = companion_folder(path)
    if tokenizer is None and folder is None:
        raise ScoreError(
            f"{path}: no tokenizer found beside it (looked for {TOKENIZER_FILE} in {path.with_suffix('')} and "
            f"{path.parent}). Pass --tokenizer EXPORT_DIR, the export folder the ONNX file was made from."
        )
    if tokenizer is not None and Path(tokenizer).is_dir():
        folder = Path(tokenizer)
    outputs = session.get_outputs()[0].shape
    num_labels = outputs[-1] if outputs and isinstance(outputs[-1], int) else None
    return Artifact(path, "onnx", folder, tokenizer or str(folder), num_labels, session)


def choose_task(given: str | None, artifact: Artifact) -> GlueTask:
    """``--task``, else the task the model card records, else the only GLUE task with the model's number of outputs;
    checked against that number (a head of another size would be re-initialised, and the score mean nothing)."""
    if given is not None:
        try:
            task = get_task(given)
        except ValueError as err:
            raise ScoreError(str(err)) from None
    else:
        card = artifact.folder / CARD if artifact.folder is not None else None
        name = recorded_task(card.read_text(errors="replace")) if card is not None and card.is_file() else None
        fitting = [t for t in GLUE_TASKS.values() if t.num_labels == artifact.num_labels]
        if name is None and len(fitting) != 1:
            candidates = f" ({artifact.num_labels} outputs fit {', '.join(t.name for t in fitting)})" if fitting else ""
            raise ScoreError(
                f"{artifact.path}: its model card records no GLUE task{candidates}; pass --task (one of {', '.join(GLUE_TASKS)})."
            )
        task = get_task(name) if name is not None else fitting[0]
    if artifact.num_labels is not None and artifact.num_labels != task.num_labels:
        raise ScoreError(
            f"{artifact.path} has {artifact.num_labels} output{'s' * (artifact.num_labels != 1)}, and task {task.name!r} "
            f"needs {task.num_labels}: pass the task the model was trained for."
        )
    return task


def onnx_logits_of(session: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """A batch's logits from ONNX Runtime, fed the graph's inputs from the tokenized batch."""
    names = [i.name for i in session.get_inputs()]
    output = session.get_outputs()[0].name

    def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [name for name in names if name not in batch]
        if missing:
            raise ScoreError(f"the ONNX graph needs inputs {missing} that the tokenizer does not make: pass its --tokenizer.")
        return torch.from_numpy(session.run([output], {name: batch[name].numpy() for name in names})[0])

    return logits_of


def onnx_precision(path: Path) -> str:
    """``int8`` for a quantized graph (it holds 8-bit initializers), else ``fp32``."""
    graph = optional_import("onnx").load(str(path), load_external_data=False).graph
    return "int8" if any(init.data_type in QUANTIZED_TYPES for init in graph.initializer) else "fp32"


def score_export(
    path: str | Path,
    task: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 128,
    max_samples: int | None = None,
    max_seq_length: int = 128,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Score an export folder or ONNX file on its task's dev set(s).

    Returns:
        ``path``, ``kind`` (folder / onnx), ``precision``, ``task``, ``metrics`` (fractions, named as ``val/<metric>``),
        ``score`` (points, as ``val/score``), ``examples``, ``max_seq_length`` and ``card_scores`` (what the model card
        records, ``{when: score}``).

    Raises:
        ScoreError: bad input (see :func:`open_artifact`, :func:`choose_task`), or GLUE data that cannot be read.
    """
    if max_samples is not None and max_samples < 1:
        raise ScoreError(f"--max-samples {max_samples} must be a positive number of examples.")
    artifact = open_artifact(Path(path), tokenizer)
    glue_task = choose_task(task, artifact)
    try:
        data = GLUEDataModule(
            glue_task.name, artifact.tokenizer, data_dir=data_dir, max_seq_length=max_seq_length,
            eval_batch_size=batch_size, max_eval_samples=max_samples,
        )  # fmt: skip
        data.setup("validate")
    except (OSError, ValueError, RuntimeError) as err:  # the data module's messages name the file and the fix
        raise ScoreError(str(err)) from None
    loaders = data.val_dataloader()
    loaders = loaders if isinstance(loaders, list) else [loaders]
    if artifact.kind == "folder":
        module = SequenceClassificationModule(str(artifact.path), glue_task.name)
        limit = position_limit(module.model)
        if limit is not None and max_seq_length > limit:
            raise ScoreError(f"--max-seq-length {max_seq_length} is more than the {limit} positions {artifact.path} embeds.")
        dtype = next(module.model.parameters()).dtype
        precision = DTYPE_NAMES.get(dtype, str(dtype))
        metrics = module.evaluate_metrics(loaders)
    else:
        precision = onnx_precision(artifact.path)
        metrics = glue_metric_values(glue_task, loaders, onnx_logits_of(artifact.session))
    card = artifact.folder / CARD if artifact.folder is not None else None
    return {
        "path": str(artifact.path), "kind": artifact.kind, "precision": precision, "task": glue_task.name,
        "metrics": metrics, "score": glue_score(metrics), "examples": sum(len(loader.dataset) for loader in loaders),
        "max_seq_length": max_seq_length,
        "card_scores": recorded_scores(card.read_text(errors="replace")) if card is not None and card.is_file() else {},
    }  # fmt: skip


def score_line(result: dict[str, Any]) -> str:
    """The result in one line: task, score, each metric, how many examples, the artifact, and the card's scores."""
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
    artifact = f"{'ONNX' if result['kind'] == 'onnx' else 'folder'} {result['precision']} {result['path']}"
    card = ", ".join(f"{when} {value:.2f}" for when, value in result["card_scores"].items())
    return (
        f"{result['task']} dev score {result['score']:.2f} (mean of {metrics}; {result['examples']} examples, "
        f"max_seq_length {result['max_seq_length']}) of {artifact}" + (f"; model card: {card}" if card else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nxm_lightning.tasks.score", description=__doc__.splitlines()[0])
    parser.add_argument("export", help="an export folder, or an .onnx file made from one (fp32 or INT8)")
    parser.add_argument("--task", help="the GLUE task (default: the one the model card records)")
    parser.add_argument("--data-dir", help="GLUE files in the glue_data layout (default: GLUE_DIR, else the Hub)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per batch (default 128)")
    parser.add_argument("--max-samples", type=int, help="score only the first N dev examples (default: all)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="truncate inputs as training did (default 128)")
    parser.add_argument("--tokenizer", help="for an ONNX file: the export folder (or model) whose tokenizer to use")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    # One line of output: no progress bars, no load reports, no notice that Spearman keeps its inputs (it must).
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save all targets")
    try:
        result = score_export(
            args.export, args.task, args.data_dir, args.batch_size, args.max_samples, args.max_seq_length, args.tokenizer
        )
    except (ScoreError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else score_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
