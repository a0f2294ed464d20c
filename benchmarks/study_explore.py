"""Explorations beside the study (issue 12): a variant of one of its methods, trained against the methods it must
beat, every run of a task from one dense build, so that each paired difference compares like with like.

The study's own records cannot be the partners: they come from three kinds of CPU, and a dense export rebuilt on
another kind is another model (CoLA 31.75 on an AMD EPYC against 32.82 on a Xeon, both in bf16-mixed; a CPU without
native bf16 trains in fp32, another model again). An exploration therefore trains, into its own records dir
``benchmarks/records/study_exploration/<variant>/``, the study's best dense run of each task (its config, learning
rate and seed), then seed by seed the methods the variant is measured against and the variant, all at the ``paper``
budget and the study's learning rates. Records, resuming, the rebuild of a missing dense export and
``--finish-within`` work as in ``glue_study.py``, whose machinery this drives.

Run from the repository root, in the background::

    nohup python benchmarks/study_explore.py run nxm_gentle --tasks cola --seeds 42 43 --workers 2 > explore.log 2>&1 &
    python benchmarks/study_explore.py report nxm_gentle     # the paired table, as Markdown
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glue_study import (
    ADMM_CALLBACK,
    FIRST_SEED,
    RECORDS,
    REPO,
    RunSpec,
    Study,
    Waiting,
    drive,
    print_plan,
    resolve_precision,
    run_options,
    task_options,
)
from study_report import TASKS, fmt_difference, load_records, table_head

EXPLORATIONS = REPO / "benchmarks" / "records" / "study_exploration"
BUDGET = "paper"


@dataclass(frozen=True)
class Variant:
    """A named change of a study method's config, and the study methods it is paired with."""

    method: str
    edits: dict[str, dict[str, Any]]  # init_args by callback class path, over the method's config
    against: tuple[str, ...]
    what: str


VARIANTS = {
    "nxm_gentle": Variant(
        "nxm",
        {ADMM_CALLBACK: {"rho": 0.002, "rho_max": 0.05}},
        ("asp", "nxm"),
        "nxm with a weaker ADMM pull, rho 0.002 growing to 0.05 (glue_nxm.yaml: 0.01 to 0.5), so that the ADMM phase "
        "uses its five epochs instead of converging in under two",
    ),
}


@dataclass
class Exploration(Study):
    """The plan of one variant: per task the study's best dense run, then per seed the variant and its partners."""

    variant: str = ""
    study_records: Path = RECORDS  # the study's, whose choices (dense run, learning rates) the exploration takes
    study: Study = field(init=False)

    def __post_init__(self) -> None:
        self.study = Study(self.work_dir, self.data_dir, records_dir=self.study_records)

    def dense_grid(self, task: str) -> list[RunSpec]:
        return [self.spec("dense", task, FIRST_SEED, self.study.best_dense(task).learning_rate)]

    def learning_rate(self, method: str, budget: str) -> float:
        return self.study.learning_rate(method, budget)

    def method_spec(self, method: str, task: str, seed: int) -> RunSpec:
        return self.spec(method, task, seed, self.learning_rate(method, BUDGET), BUDGET)

    def variant_spec(self, task: str, seed: int) -> RunSpec:
        variant = VARIANTS[self.variant]
        spec = self.method_spec(variant.method, task, seed)
        for callback, args in variant.edits.items():
            spec.callback_args[callback] = {**spec.callback_args.get(callback, {}), **args}
        spec.variant = self.variant
        return spec

    def _all_runs(self) -> Iterator[RunSpec | Waiting]:
        # First, seed by seed, the variant right after its first partner (the pair it is explored for), then the
        # other partners, so that a session that ends early leaves the most seeds of that pair.
        first, *others = VARIANTS[self.variant].against
        for task in self.tasks:
            yield from self.dense_grid(task)
        for seed in self.seeds:
            for task in self.tasks:
                yield from self._planned(lambda t=task, s=seed: [self.method_spec(first, t, s), self.variant_spec(t, s)])
        for seed in self.seeds:
            for task in self.tasks:
                yield from self._planned(lambda t=task, s=seed: [self.method_spec(m, t, s) for m in others])


def exploration(args: argparse.Namespace, **kwargs: Any) -> Exploration:
    work_dir = (args.work_dir or REPO / "benchmarks" / "results" / "explore" / args.variant).resolve()
    return Exploration(work_dir, args.data_dir, tuple(args.tasks), tuple(args.seeds),
                       records_dir=EXPLORATIONS / args.variant, variant=args.variant, **kwargs)  # fmt: skip


def cmd_run(args: argparse.Namespace) -> None:
    drive(exploration(args, precision=resolve_precision(args.precision)), args)


def cmd_plan(args: argparse.Namespace) -> None:
    print_plan(exploration(args))


def report_lines(variant: str, records: list[dict[str, Any]]) -> list[str]:
    """Per task, each seed's best dev score by method, the variant's paired differences (mean ± spread), and where
    each method's points go (before the cut → after it → best, means over seeds)."""
    partners = VARIANTS[variant].against
    methods = (*partners, variant)
    scores: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    dense: dict[str, float] = {}
    for record in records:
        if record["budget"] is None:
            dense[record["task"]] = record["metrics"]["best_score"]
        else:
            scores[(record.get("variant") or record["method"], record["task"])][record["seed"]] = record
    lines = [f"Variant `{variant}`: {VARIANTS[variant].what}.", ""]
    lines += table_head("task", "dense start", *(f"{m} (best; last)" for m in methods), *(f"{variant} - {p}" for p in partners))
    for task in (t for t in TASKS if t in dense):
        # A rebuild on another machine starts later runs from another model: each start the runs had.
        starts = {r.get("dense_start_score", dense[task]) for m in methods for r in scores[(m, task)].values()}
        row = [TASKS[task], " / ".join(f"{start:.2f}" for start in sorted(starts or {dense[task]}))]
        for method in methods:
            runs = scores[(method, task)]
            row.append(", ".join(f"s{s}: {r['metrics']['best_score']:.2f}; {r['metrics']['final_score']:.2f}"
                                 for s, r in sorted(runs.items())) or "-")  # fmt: skip
        for partner in partners:
            ours, theirs = scores[(variant, task)], scores[(partner, task)]
            row.append(fmt_difference([ours[s]["metrics"]["best_score"] - theirs[s]["metrics"]["best_score"]
                                       for s in sorted(ours) if s in theirs]))  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Where the points go (dev score before the cut → after it → best, and the cut's step; means over seeds):", ""]
    lines += table_head("task", *methods)
    for task in (t for t in TASKS if t in dense):
        row = [TASKS[task]]
        for method in methods:
            found = [r["metrics"] for r in scores[(method, task)].values() if r["metrics"].get("prune_score_after") is not None]
            if not found:
                row.append("-")
                continue
            keys = ("prune_score_before", "prune_score_after", "best_score")
            means = " → ".join(f"{statistics.mean(m[key] for m in found):.1f}" for key in keys)
            row.append(f"{means} (cut at step {statistics.mean(m['prune_step'] for m in found):.0f})")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def cmd_report(args: argparse.Namespace) -> None:
    print("\n".join(report_lines(args.variant, load_records(EXPLORATIONS / args.variant))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    variant = argparse.ArgumentParser(add_help=False)
    variant.add_argument("variant", choices=list(VARIANTS))
    common = task_options(work_dir=None)
    run = sub.add_parser("run", parents=[variant, common, run_options()], help="run what has no record yet")
    run.set_defaults(func=cmd_run)
    plan = sub.add_parser("plan", parents=[variant, common], help="list the runs: finished (with score), to run, waiting")
    plan.set_defaults(func=cmd_plan)
    sub.add_parser("report", parents=[variant], help="the paired table, as Markdown").set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
