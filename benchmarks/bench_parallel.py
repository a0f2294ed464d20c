"""Study throughput (issue 12, part 5): one training process on both cores against two single-threaded ones side by side.

The study runs one ``cli.py fit`` after another; on a 2-core CPU it could instead run two at once with one thread each.
Each round measures both ways on the main job's training steps (``configs/glue.yaml``'s recipe, as
``benchmarks/bench_precision.py`` builds them: MiniLM-L6, STS-B batches of 32 in training order, AdamW, clipping):

- ``one``: a worker process with ``torch.set_num_threads(2)`` trains ``--steps`` steps;
- ``two``: two worker processes with one thread each, started together, each training ``--steps`` steps.

A worker loads the model and data, takes ``--warmup`` untimed steps, waits until every worker of its way is as far,
then times its steps and reports examples per second; ``two``'s throughput is the sum of its workers'. The order
of the two alternates each round; reported are each round's ratio two/one and their median. Run it on an idle
machine (the study paused: ``kill -STOP``), from the repository root::

    python -m benchmarks.bench_parallel                    # 3 rounds of 16 steps
    python -m benchmarks.bench_parallel --precision bf16-mixed   # what the study trains in on a CPU with native bf16
    python -m benchmarks.bench_parallel --rounds 1 --steps 2 --warmup 1     # a quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks._help import described_parser
from benchmarks._results import finish_results, start_results
from benchmarks.bench_admm import median, now, since

ROOT = Path(__file__).resolve().parents[1]
WAYS = {"one": (1, 2), "two": (2, 1)}  # processes, threads per process


def worker(glue_dir: Path, threads: int, offset: int, steps: int, warmup: int, precision: str) -> dict[str, float]:
    """Train ``warmup`` + ``steps`` steps from batch ``offset`` of an STS-B epoch; the timed steps' examples and time."""
    from benchmarks.bench_precision import Trainee, build_module, main_job_recipe, our_datamodule

    torch.set_num_threads(threads)
    recipe = main_job_recipe(ROOT / "configs" / "glue.yaml")
    torch.manual_seed(0)
    batches = list(our_datamodule(recipe, recipe["task_name"], glue_dir).train_dataloader())
    trainee = Trainee(build_module(recipe, recipe["task_name"]), precision, recipe)
    chosen = [batches[(offset + i) % len(batches)] for i in range(warmup + steps)]
    for batch in chosen[:warmup]:
        trainee.step(batch)
    print("ready", flush=True)  # then wait for the parent's "go": the ways' workers time the same window
    sys.stdin.readline()
    start = now()
    for batch in chosen[warmup:]:
        trainee.step(batch)
    wall_s, cpu_s = since(start)
    return {"examples": sum(len(b["labels"]) for b in chosen[warmup:]), "wall_s": wall_s, "cpu_s": cpu_s}


def measure(way: str, glue_dir: Path, steps: int, warmup: int, offset: int, precision: str) -> dict[str, Any]:
    """Start the way's worker processes together and wait for all; their reports and the summed examples per second."""
    processes, threads = WAYS[way]
    commands = [[sys.executable, "-m", "benchmarks.bench_parallel", "--worker", "--glue-dir", str(glue_dir),
                 "--threads", str(threads), "--offset", str(offset), "--steps", str(steps),
                 "--warmup", str(warmup), "--precision", precision] for _ in range(processes)]  # fmt: skip
    running = [subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for command in commands]  # fmt: skip
    for process in running:  # every worker loaded and warmed up before any starts its clock
        while process.stdout.readline().strip() != "ready":
            if process.poll() is not None:
                raise SystemExit(f"a {way} worker failed (exit {process.returncode}); run it alone to see why")
    reports = []
    for process in running:
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in running:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a {way} worker failed (exit {process.returncode}); run it alone to see why")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return {"workers": reports, "examples_per_s": sum(r["examples"] / r["wall_s"] for r in reports)}


def main() -> None:
    parser = described_parser(__doc__)
    parser.add_argument("--glue-dir", type=Path, default=Path("../shared/data/glue"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true", help="of every worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_parallel.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.glue_dir, args.threads, args.offset, args.steps, args.warmup, args.precision)))
        return
    results = start_results("benchmarks.bench_parallel")
    results["config"] = {"rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "ways": WAYS,
                         "precision": args.precision}  # fmt: skip
    rounds = []
    for r in range(args.rounds):
        order = ("one", "two") if r % 2 == 0 else ("two", "one")
        # Every worker of the round trains the same batches: sequence lengths, and so the work per step, are equal.
        entry = {way: measure(way, args.glue_dir, args.steps, args.warmup, r * args.steps, args.precision) for way in order}
        entry["ratio_two_to_one"] = entry["two"]["examples_per_s"] / entry["one"]["examples_per_s"]
        rounds.append(entry)
        print(f"round {r + 1}/{args.rounds}: one process x 2 threads {entry['one']['examples_per_s']:.1f} ex/s, two x 1 "
              f"thread {entry['two']['examples_per_s']:.1f} ex/s: x{entry['ratio_two_to_one']:.3f}", flush=True)  # fmt: skip
    results["rounds"] = rounds
    results["summary"] = {"ratio_two_to_one_round_median": median([e["ratio_two_to_one"] for e in rounds])}
    print(f"\nmedian ratio (two single-threaded processes / one two-threaded): "
          f"x{results['summary']['ratio_two_to_one_round_median']:.3f}")  # fmt: skip
    finish_results(results, args.out)


if __name__ == "__main__":
    main()
