"""Sparse backend benchmarks (issue 4, "Speed and size"): packed checkpoint size, CPU inference latency.

What is measured, on CPU with ``torch.set_num_threads(2)``:

1. ``size``: MiniLM-L6's 36 encoder Linear weights pruned to 2:4 by magnitude (``nxm_project``) and rebuilt as
   ``NxMLinear(backend="packed")``: bytes of ``values`` + ``positions`` against the dense fp32 weights of those layers
   (goal: at most 0.57x), the same for fp16 values, and the file size of ``torch.save(model.state_dict())`` of the
   packed model against the dense (pruned, fp32) model.
2. ``latency``: forward pass of the whole model (eval, ``torch.no_grad``) at seq 128 and batch 1, 8 and 32, with the
   36 pruned layers served by ``dense`` (plain ``nn.Linear`` holding the pruned weights), ``masked`` and ``packed``
   ``NxMLinear``. The backends are interleaved, the order rotating each round; reported: median latency per backend
   and the median over rounds of each round's ratio to ``dense``, and the process's CPU time per call (median; it leaves
   out the time other processes held the cores). Logits of every backend are checked against dense.

Run from the repository root (prints tables, writes ``benchmarks/results/bench_backends.json``)::

    python -m benchmarks.bench_backends                  # both parts, a few minutes
    python -m benchmarks.bench_backends --parts latency --rounds 8 --batches 1 8
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._results import finish_results, start_results
from nxm_lightning.sparsity.nxm import nxm_project
from nxm_lightning.sparsity.sparse_linear import NxMLinear, replace_module
from nxm_lightning.sparsity.targets import select_targets

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 2
SEQ = 128
BACKENDS = ("dense", "masked", "packed")


def load_pruned_minilm() -> tuple[nn.Module, list[str]]:
    """MiniLM-L6 (eval mode) with its encoder Linear weights projected to 2:4; also the pruned layers' names."""
    from transformers import AutoModelForSequenceClassification

    from nxm_lightning.tasks.hub import DEFAULT_MODEL, resolve_model_name

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_name(DEFAULT_MODEL), num_labels=1)
    model.eval()
    targets = select_targets(model, "2:4")
    with torch.no_grad():
        for t in targets:
            t.module.weight.copy_(nxm_project(t.module.weight, 2, 4))
    return model, [t.name for t in targets]


def with_backend(model: nn.Module, names: list[str], backend: str) -> nn.Module:
    """A copy of ``model`` whose pruned layers are ``NxMLinear(backend)``; ``dense`` keeps the plain nn.Linear."""
    copied = copy.deepcopy(model)
    if backend != "dense":
        from nxm_lightning.sparsity.nxm import NxMPattern

        for name in names:
            replace_module(copied, name, NxMLinear.from_linear(copied.get_submodule(name), NxMPattern(2, 4), backend))
    return copied.eval()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ---- 1. size ---------------------------------------------------------------------------------------------------------


def bench_size(model: nn.Module, names: list[str]) -> dict[str, Any]:
    packed = with_backend(model, names, "packed")
    dense_bytes = sum(tensor_bytes(model.get_submodule(n).weight) for n in names)
    values_bytes = sum(tensor_bytes(packed.get_submodule(n).values) for n in names)
    positions_bytes = sum(tensor_bytes(packed.get_submodule(n).positions) for n in names)
    for name in names:  # the packed layers give back exactly the pruned weights
        assert torch.equal(packed.get_submodule(name).dense_weight(), model.get_submodule(name).weight)
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, m in (("dense", model), ("packed", packed)):
            path = os.path.join(tmp, f"{label}.pt")
            torch.save(m.state_dict(), path)
            files[label] = os.path.getsize(path)
    return {
        "layers": len(names),
        "dense_fp32_weight_bytes": dense_bytes,
        "packed_values_bytes": values_bytes,
        "packed_positions_bytes": positions_bytes,
        "packed_ratio_fp32": (values_bytes + positions_bytes) / dense_bytes,
        "packed_ratio_fp16": (values_bytes / 2 + positions_bytes) / (dense_bytes / 2),
        "state_dict_file_bytes": files,
        "state_dict_file_ratio": files["packed"] / files["dense"],
    }


def print_size(r: dict[str, Any]) -> None:
    mib = 2**20
    print(f"\nPacked 2:4 storage of MiniLM's {r['layers']} encoder Linear weights")
    print(f"{'':<34} {'bytes':>14} {'MiB':>8} {'vs dense':>9}")
    dense = r["dense_fp32_weight_bytes"]
    packed = r["packed_values_bytes"] + r["packed_positions_bytes"]
    rows = [
        ("dense fp32 weights", dense, 1.0),
        ("packed values (fp32)", r["packed_values_bytes"], r["packed_values_bytes"] / dense),
        ("packed positions (2 bits each)", r["packed_positions_bytes"], r["packed_positions_bytes"] / dense),
        ("packed values + positions", packed, r["packed_ratio_fp32"]),
    ]
    for label, size, ratio in rows:
        print(f"{label:<34} {size:>14,} {size / mib:>8.2f} {ratio:>8.4f}x")
    print(f"{'same with fp16 values, vs fp16':<34} {'':>14} {'':>8} {r['packed_ratio_fp16']:>8.4f}x")
    files = r["state_dict_file_bytes"]
    print(f"{'torch.save state_dict: dense':<34} {files['dense']:>14,} {files['dense'] / mib:>8.2f} {1.0:>8.4f}x")
    print(f"{'torch.save state_dict: packed':<34} {files['packed']:>14,} {files['packed'] / mib:>8.2f} "
          f"{r['state_dict_file_ratio']:>8.4f}x")  # fmt: skip


# ---- 2. latency ------------------------------------------------------------------------------------------------------


def bench_latency(model: nn.Module, names: list[str], batches: list[int], rounds: int, budget_s: float) -> dict[str, Any]:
    models = {backend: with_backend(model, names, backend) for backend in BACKENDS}
    generator = torch.Generator().manual_seed(0)
    inputs = {
        b: {"input_ids": torch.randint(1000, model.config.vocab_size, (b, SEQ), generator=generator),
            "attention_mask": torch.ones(b, SEQ, dtype=torch.long)}
        for b in batches
    }  # fmt: skip
    result: dict[str, Any] = {"seq": SEQ, "rounds": rounds, "batches": {}}
    with torch.no_grad():
        for b in batches:
            reference = models["dense"](**inputs[b]).logits
            max_diff = {k: float((m(**inputs[b]).logits - reference).abs().max()) for k, m in models.items()}
            start = time.perf_counter()
            models["dense"](**inputs[b])
            calls = max(1, round(budget_s / max(time.perf_counter() - start, 1e-3)))  # calls per backend per round
            times: dict[str, list[float]] = {k: [] for k in BACKENDS}
            cpu_times: dict[str, list[float]] = {k: [] for k in BACKENDS}
            per_round = []
            for r in range(rounds):
                order = BACKENDS[r % len(BACKENDS) :] + BACKENDS[: r % len(BACKENDS)]
                this_round = {}
                for backend in order:
                    samples = []
                    for _ in range(calls):
                        t0, c0 = time.perf_counter(), time.process_time()
                        models[backend](**inputs[b])
                        samples.append(time.perf_counter() - t0)
                        cpu_times[backend].append(time.process_time() - c0)
                    times[backend].extend(samples)
                    this_round[backend] = median(samples)
                per_round.append(this_round)
            result["batches"][str(b)] = {
                "calls_per_round": calls,
                "median_s": {k: median(v) for k, v in times.items()},
                "min_s": {k: min(v) for k, v in times.items()},
                "ratio_to_dense_round_median": {k: median([r[k] / r["dense"] for r in per_round]) for k in BACKENDS},
                "cpu_median_s": {k: median(v) for k, v in cpu_times.items()},
                "cpu_ratio_of_medians": {k: median(cpu_times[k]) / median(cpu_times["dense"]) for k in BACKENDS},
                "max_abs_logit_diff_vs_dense": max_diff,
            }
            line = ", ".join(f"{k} {1000 * median(v):.1f} ms" for k, v in times.items())
            print(f"  batch {b}: {line}", flush=True)
    return result


def print_latency(r: dict[str, Any]) -> None:
    print(f"\nCPU inference latency, MiniLM-L6, seq {r['seq']}, eval + no_grad, {r['rounds']} interleaved rounds")
    print(f"{'batch':>5} {'backend':<8} {'median':>10} {'min':>10} {'vs dense':>9} {'CPU time':>10} {'vs dense':>9} "
          f"{'max |logit diff|':>17}")  # fmt: skip
    for b, e in r["batches"].items():
        for k in BACKENDS:
            print(f"{b:>5} {k:<8} {1000 * e['median_s'][k]:>7.1f} ms {1000 * e['min_s'][k]:>7.1f} ms "
                  f"{e['ratio_to_dense_round_median'][k]:>8.3f}x {1000 * e['cpu_median_s'][k]:>7.1f} ms "
                  f"{e['cpu_ratio_of_medians'][k]:>8.3f}x {e['max_abs_logit_diff_vs_dense'][k]:>17.2e}")  # fmt: skip


# ---- main ------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("size", "latency"), default=["size", "latency"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per batch size")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of dense calls per backend per round")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch.set_num_threads (default 2, the machine's cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_backends.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, names = load_pruned_minilm()
    results = start_results("benchmarks.bench_backends")
    if "size" in args.parts:
        results["size"] = bench_size(model, names)
    if "latency" in args.parts:
        print("Latency benchmark ...", flush=True)
        results["latency"] = bench_latency(model, names, args.batches, args.rounds, args.budget)
    if "size" in results:
        print_size(results["size"])
    if "latency" in results:
        print_latency(results["latency"])
    finish_results(results, args.out)


if __name__ == "__main__":
    main()
