"""Training throughput (issue 13, part 2): bf16-mixed against fp32, and our data pipeline against the reference recipe.

What is measured, on CPU with ``torch.set_num_threads(2)``, every comparison interleaved in one process (the order
alternates each round) and summarised by medians, because the machine is shared:

1. ``epoch``: one epoch of the main job's training steps in ``bf16-mixed`` and in fp32. The recipe is read from
   ``configs/glue.yaml`` (MiniLM-L6 on STS-B, batch 32, dynamic padding, length grouping, frozen token embeddings,
   AdamW at its learning rate and weight decay, gradient clipping). The epoch's batches, drawn once, are cut into
   rounds of ``--steps-per-round`` consecutive batches; each round trains on its batches once per precision, each
   precision on its own copy of the model and optimizer, so both see exactly the same batches. A step is forward,
   backward, clipping and the AdamW step; bf16 runs inside Lightning's own ``MixedPrecision("bf16-mixed", "cpu")``
   forward context (autocast, weight-cast cache off), as ``Trainer(precision="bf16-mixed")`` runs it. Reported: each
   precision's epoch time (the sum over all rounds, when all run), the median over rounds of the bf16/fp32 time ratio,
   and the same in CPU time of the process (which leaves out the time other processes held the cores).
2. ``pipeline``: our data pipeline (``GLUEDataModule``: dynamic padding, length grouping, batch 32, as
   ``configs/glue.yaml``) against the reference implementation's recipe (every sequence padded to 128, batch 16,
   shuffled) on STS-B and CoLA, in training examples per second of fp32 training steps on the same model. Each round
   trains ``--pipeline-examples`` examples with each variant (its own model copy and shuffled loader).
3. The ADMM step overhead and the Z-step time: ``benchmarks/bench_admm.py`` measures them (run it on an idle machine)::

       python -m benchmarks.bench_admm --parts step zstep

The record also holds the load average (at the start, the end and every round) and the CPU's bf16 flags
(``avx512_bf16`` / ``amx_bf16``): bf16 autocast is fast only with them.

Run from the repository root with the GLUE files (``--glue-dir``, default ``$GLUE_DIR`` or ``../shared/data/glue``);
prints tables, writes ``benchmarks/results/bench_precision.json``::

    python -m benchmarks.bench_precision                                  # both parts, full length
    python -m benchmarks.bench_precision --parts epoch --max-rounds 2 --steps-per-round 2      # a quick check
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from benchmarks._results import finish_results, start_results
from benchmarks.bench_admm import median, now, since
from nxm_lightning.sparsity.precision import FAST_BF16_CPU_FLAGS, cpu_flags, has_fast_bf16_cpu, recommended_precision
from nxm_lightning.tasks.data import GLUEDataModule
from nxm_lightning.tasks.module import SequenceClassificationModule

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 2
PRECISIONS = ("32-true", "bf16-mixed")
# The reference implementation's recipe (NxMTransformer's run_glue): every sequence padded to 128, batch 16.
REFERENCE_SEQ, REFERENCE_BATCH = 128, 16


def main_job_recipe(config: Path) -> dict[str, Any]:
    """What the timed steps take from the main job's config: model, data and optimizer settings.

    Args:
        config: ``configs/glue.yaml`` (LightningCLI format).
    """
    cfg = yaml.safe_load(config.read_text())
    model, data = cfg["model"]["init_args"], cfg["data"]
    return {
        "config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config),
        "model_name_or_path": model["model_name_or_path"],
        "learning_rate": model["learning_rate"],
        "weight_decay": model["weight_decay"],
        "freeze_embeddings": model.get("freeze_embeddings", False),
        "task_name": data["task_name"],
        "max_seq_length": data["max_seq_length"],
        "batch_size": data["batch_size"],
        "group_by_length": data.get("group_by_length", False),
        "length_group_batches": data.get("length_group_batches", 50),
        "gradient_clip_val": cfg["trainer"].get("gradient_clip_val"),
    }


class Trainee:
    """One model copy with its optimizer, trained step by step in one precision.

    Args:
        module: the model (each Trainee gets its own copy).
        precision: ``"32-true"`` or ``"bf16-mixed"``.
        recipe: :func:`main_job_recipe`'s optimizer settings.
    """

    def __init__(self, module: SequenceClassificationModule, precision: str, recipe: dict[str, Any]) -> None:
        self.module = copy.deepcopy(module).train()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        # One parameter group (the module puts biases and LayerNorm in a second one without decay): the same kernels.
        self.optimizer = torch.optim.AdamW(self.params, lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"])
        self.clip = recipe["gradient_clip_val"]
        self.plugin = MixedPrecision("bf16-mixed", "cpu") if precision == "bf16-mixed" else Precision()

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        """One training step; returns its (wall, CPU) seconds."""
        start = now()
        self.optimizer.zero_grad(set_to_none=True)
        with self.plugin.forward_context():
            loss = self.module(**{k: v for k, v in batch.items() if k != "idx"}).loss
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        return since(start)


def build_module(recipe: dict[str, Any], task_name: str) -> SequenceClassificationModule:
    return SequenceClassificationModule(
        recipe["model_name_or_path"], task_name=task_name, freeze_embeddings=recipe["freeze_embeddings"]
    )


def our_datamodule(recipe: dict[str, Any], task_name: str, glue_dir: Path) -> GLUEDataModule:
    datamodule = GLUEDataModule(
        task_name, recipe["model_name_or_path"], data_dir=str(glue_dir), max_seq_length=recipe["max_seq_length"],
        batch_size=recipe["batch_size"], group_by_length=recipe["group_by_length"],
        length_group_batches=recipe["length_group_batches"],
    )  # fmt: skip
    datamodule.setup("fit")
    return datamodule


def loadavg() -> float:
    return os.getloadavg()[0]


# ---- 1. an epoch in bf16-mixed against fp32 ---------------------------------------------------------------------------


def bench_epoch(recipe: dict[str, Any], glue_dir: Path, steps_per_round: int, max_rounds: int | None, warmup: int) -> dict:
    datamodule = our_datamodule(recipe, recipe["task_name"], glue_dir)
    torch.manual_seed(0)
    batches = list(datamodule.train_dataloader())  # one epoch, in the order training would see it
    module = build_module(recipe, recipe["task_name"])
    trainees = {precision: Trainee(module, precision, recipe) for precision in PRECISIONS}
    for trainee in trainees.values():  # untimed: first-call allocations and kernel selection
        for batch in batches[:warmup]:
            trainee.step(batch)
    rounds_total = math.ceil(len(batches) / steps_per_round)
    rounds = min(rounds_total, max_rounds) if max_rounds else rounds_total
    per_round = []
    for r in range(rounds):
        chunk = batches[r * steps_per_round : (r + 1) * steps_per_round]
        order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]
        entry: dict[str, Any] = {"steps": len(chunk), "loadavg": loadavg(),
                                 "padded_tokens": sum(int(b["input_ids"].numel()) for b in chunk)}  # fmt: skip
        for precision in order:
            times = [trainees[precision].step(batch) for batch in chunk]
            entry[precision] = {"wall_s": sum(t[0] for t in times), "cpu_s": sum(t[1] for t in times),
                                "median_step_s": median([t[0] for t in times])}  # fmt: skip
        per_round.append(entry)
        ratio = entry["bf16-mixed"]["wall_s"] / entry["32-true"]["wall_s"]
        print(f"  round {r + 1}/{rounds}: fp32 {entry['32-true']['wall_s']:.2f}s, bf16-mixed "
              f"{entry['bf16-mixed']['wall_s']:.2f}s (x{ratio:.2f}), load {entry['loadavg']:.1f}", flush=True)  # fmt: skip
    summary = {}
    for clock in ("wall_s", "cpu_s"):
        totals = {p: sum(e[p][clock] for e in per_round) for p in PRECISIONS}
        summary[clock] = {
            "total": totals,
            "ratio_bf16_to_fp32_round_median": median([e["bf16-mixed"][clock] / e["32-true"][clock] for e in per_round]),
            "ratio_bf16_to_fp32_of_totals": totals["bf16-mixed"] / totals["32-true"],
        }
    return {
        "config": {**recipe, "steps_per_epoch": len(batches), "steps_per_round": steps_per_round, "rounds": rounds,
                   "whole_epoch": rounds == rounds_total, "warmup": warmup,
                   "examples": sum(len(b["labels"]) for b in batches[: rounds * steps_per_round])},
        "summary": summary,
        "rounds": per_round,
    }  # fmt: skip


def print_epoch(result: dict[str, Any]) -> None:
    cfg = result["config"]
    span = (
        "one epoch" if cfg["whole_epoch"] else f"{cfg['rounds'] * cfg['steps_per_round']} of the epoch's {cfg['steps_per_epoch']}"
    )
    print(f"\nMain job training steps ({cfg['config']}: {cfg['task_name']}, batch {cfg['batch_size']}), {span} steps, "
          f"{cfg['rounds']} rounds of {cfg['steps_per_round']}")  # fmt: skip
    print(f"{'clock':<6} {'fp32 total':>11} {'bf16-mixed total':>17} {'bf16/fp32 (round median)':>25} {'(of totals)':>12}")
    for clock, s in result["summary"].items():
        print(f"{clock[:-2]:<6} {s['total']['32-true']:>10.1f}s {s['total']['bf16-mixed']:>16.1f}s "
              f"{s['ratio_bf16_to_fp32_round_median']:>25.3f} {s['ratio_bf16_to_fp32_of_totals']:>12.3f}")  # fmt: skip


# ---- 2. our data pipeline against the reference recipe ---------------------------------------------------------------


def cycle_batches(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Batches epoch after epoch (a new shuffled order each time)."""
    for _ in itertools.count():
        yield from loader


def bench_pipeline(recipe: dict[str, Any], glue_dir: Path, tasks: list[str], rounds: int, examples_per_round: int) -> dict:
    results = {}
    for task in tasks:
        torch.manual_seed(0)
        datamodule = our_datamodule(recipe, task, glue_dir)
        reference = DataLoader(
            datamodule.splits["train"].with_format("torch"), batch_size=REFERENCE_BATCH, shuffle=True,
            collate_fn=DataCollatorWithPadding(datamodule.tokenizer, padding="max_length", max_length=REFERENCE_SEQ),
        )  # fmt: skip
        loaders = {"ours": datamodule.train_dataloader(), "reference": reference}
        batch_sizes = {"ours": recipe["batch_size"], "reference": REFERENCE_BATCH}
        module = build_module(recipe, task)
        trainees = {name: Trainee(module, "32-true", recipe) for name in loaders}
        streams = {name: cycle_batches(loader) for name, loader in loaders.items()}
        for name, trainee in trainees.items():  # untimed warm-up
            trainee.step(next(streams[name]))
        per_round = []
        for r in range(rounds):
            order = list(loaders) if r % 2 == 0 else list(loaders)[::-1]
            entry: dict[str, Any] = {"loadavg": loadavg()}
            for name in order:
                wall = cpu = 0.0
                examples = tokens = 0
                for _ in range(max(1, examples_per_round // batch_sizes[name])):
                    batch = next(streams[name])
                    step_wall, step_cpu = trainees[name].step(batch)
                    wall, cpu = wall + step_wall, cpu + step_cpu
                    examples, tokens = examples + len(batch["labels"]), tokens + int(batch["input_ids"].numel())
                entry[name] = {"examples": examples, "padded_tokens": tokens, "wall_s": wall, "cpu_s": cpu,
                               "examples_per_s": examples / wall}  # fmt: skip
            per_round.append(entry)
            print(f"  {task} round {r + 1}/{rounds}: ours {entry['ours']['examples_per_s']:.1f} ex/s, reference "
                  f"{entry['reference']['examples_per_s']:.1f} ex/s, load {entry['loadavg']:.1f}", flush=True)  # fmt: skip
        summary = {}
        for name in loaders:
            examples = sum(e[name]["examples"] for e in per_round)
            summary[name] = {
                "examples": examples,
                "examples_per_s": examples / sum(e[name]["wall_s"] for e in per_round),
                "examples_per_cpu_s": examples / sum(e[name]["cpu_s"] for e in per_round),
                "padded_tokens_per_example": sum(e[name]["padded_tokens"] for e in per_round) / examples,
            }
        summary["speedup_round_median"] = median(
            [e["ours"]["examples_per_s"] / e["reference"]["examples_per_s"] for e in per_round]
        )
        summary["speedup_of_totals"] = summary["ours"]["examples_per_s"] / summary["reference"]["examples_per_s"]
        results[task] = {
            "config": {"ours": f"batch {recipe['batch_size']}, dynamic padding, length grouping in groups of "
                               f"{recipe['length_group_batches']} batches", "reference": f"batch {REFERENCE_BATCH}, "
                               f"every sequence padded to {REFERENCE_SEQ}", "rounds": rounds,
                       "examples_per_round": examples_per_round, "train_examples": len(datamodule.splits["train"])},
            "summary": summary,
            "rounds": per_round,
        }  # fmt: skip
    return results


def print_pipeline(result: dict[str, Any]) -> None:
    print("\nData pipeline, fp32 training steps, examples per second (ours: dynamic padding + length grouping, batch 32; "
          f"reference: padded to {REFERENCE_SEQ}, batch {REFERENCE_BATCH})")  # fmt: skip
    print(f"{'task':<6} {'ours ex/s':>10} {'ref ex/s':>9} {'ours/ref (round median)':>24} {'(of totals)':>12} "
          f"{'tokens/ex ours':>15} {'ref':>5}")  # fmt: skip
    for task, r in result.items():
        s = r["summary"]
        print(f"{task:<6} {s['ours']['examples_per_s']:>10.1f} {s['reference']['examples_per_s']:>9.1f} "
              f"{s['speedup_round_median']:>24.2f} {s['speedup_of_totals']:>12.2f} "
              f"{s['ours']['padded_tokens_per_example']:>15.1f} {s['reference']['padded_tokens_per_example']:>5.0f}")  # fmt: skip


# ---- main ------------------------------------------------------------------------------------------------------------


def cpu_record() -> dict[str, Any]:
    """The CPU's bf16 capability: bf16 autocast is fast only with native bf16 (the flags below)."""
    flags = cpu_flags()
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    return {
        "bf16_flags": {flag: flag in flags for flag in FAST_BF16_CPU_FLAGS},
        "avx512f": "avx512f" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16": has_fast_bf16_cpu(flags),
        "recommended_precision": recommended_precision(capability, has_fast_bf16_cpu(flags)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("epoch", "pipeline"), default=["epoch", "pipeline"])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "glue.yaml", help="the main job's config")
    default_glue = os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--glue-dir", type=Path, default=Path(default_glue), help="GLUE files, glue_data layout")
    parser.add_argument("--steps-per-round", type=int, default=10, help="epoch: training steps per precision per round")
    parser.add_argument("--max-rounds", type=int, help="epoch: stop after this many rounds (default: the whole epoch)")
    parser.add_argument("--warmup", type=int, default=2, help="epoch: untimed steps per precision first")
    parser.add_argument("--tasks", nargs="+", default=["stsb", "cola"], help="pipeline: GLUE tasks")
    parser.add_argument("--pipeline-rounds", type=int, default=8, help="pipeline: interleaved rounds per task")
    parser.add_argument("--pipeline-examples", type=int, default=256, help="pipeline: examples per variant per round")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch.set_num_threads (default 2, the machine's cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_precision.json")
    args = parser.parse_args()
    if not (args.glue_dir / "STS-B" / "train.tsv").is_file():
        parser.error(f"no GLUE files under {args.glue_dir}: pass --glue-dir or set GLUE_DIR (glue_data layout)")

    torch.set_num_threads(args.threads)
    results = start_results("benchmarks.bench_precision")
    results["cpu"] = cpu_record()
    print(f"CPU: {results['cpu']}", flush=True)
    recipe = main_job_recipe(args.config)
    if "epoch" in args.parts:
        print("Epoch benchmark (bf16-mixed vs fp32) ...", flush=True)
        results["epoch"] = bench_epoch(recipe, args.glue_dir, args.steps_per_round, args.max_rounds, args.warmup)
    if "pipeline" in args.parts:
        print("Data pipeline benchmark (ours vs the reference recipe) ...", flush=True)
        results["pipeline"] = bench_pipeline(recipe, args.glue_dir, args.tasks, args.pipeline_rounds, args.pipeline_examples)
    if "epoch" in results:
        print_epoch(results["epoch"])
    if "pipeline" in results:
        print_pipeline(results["pipeline"])
    finish_results(results, args.out)


if __name__ == "__main__":
    main()
