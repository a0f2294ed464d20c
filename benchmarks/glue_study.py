"""The GLUE accuracy study (issue 12): strong dense baselines, then every sparse method at equal budgets, through
``cli.py``.

Every run is ``python cli.py fit --config <copy of configs/*.yaml> <overrides>`` in a subprocess, so the study measures
exactly what users run. A finished run writes ``benchmarks/records/study/<name>.json`` (committed: the metrics read
from the run's TensorBoard events, the wall and CPU time, the exact command, the resolved config, the package
versions; for a sparse run, the share of the weights it keeps that the magnitude mask of its dense start keeps too,
measured from the exports as it finishes); a rerun skips every run with a current record, so the study resumes where
it stopped, on this machine or another, and a run killed midway (its session ended) resumes from its last epoch's
checkpoint when its work dir is still there. Runs, exports and logs go to the work dir (``benchmarks/results/study``,
not committed); a dense export that a sparse run needs and that is missing (a new machine) is rebuilt by running its
record's command again, up to the first epoch that scores the record's best.

The plan, in the order it runs (seed by seed across the tasks, so that a partial study gives whole seeds of the
4-task average that the goals are on; each seed's short budget right after its paper budget):

1. ``dense``: ``configs/glue_dense.yaml`` at each learning rate of :data:`DENSE_LRS` (5e-5, 1e-4, 2e-4) for up to
   10 epochs, stopped after 3 epochs without a better dev score; the best epoch is exported. The best run of the task
   is the start of every sparse method and the teacher of the ``_kd`` ones.
2. On :data:`SWEEP_TASK` (stsb) only: ``asp`` and ``nxm`` at the ``paper`` budget for each of :data:`SPARSE_LRS`
   (1e-4, 5e-5, 2e-4); the best becomes the learning rate of that method (and of its ``_kd`` and ``_fisher``
   partners) on every task.
3. The ``paper`` budget (10 epochs after the dense stage; ADMM's phase holds at least 20 Z-steps): ``asp``
   (``glue_asp.yaml``), ``nxm`` (``glue_nxm.yaml``), ``asp_kd`` (``glue_asp_kd.yaml``), ``nxm_kd`` (``glue_kd.yaml``)
   (each pair of the goals' differences back to back) and the ablation ``asp_fisher`` (``glue_asp_fisher.yaml``:
   asp's one-shot cut ranked by Fisher, as nxm ranks; on the first seed it scored within a point of nxm or above it,
   so it gets every seed) for every seed; for the first seed, ``nxm_paper`` (``glue_paper.yaml``, the research
   code's recipe).
4. The ``short`` budget (1 epoch after the dense stage, the previous study's): ``asp`` and ``nxm`` at the
   learning rates that study chose, for every seed.

Every seed's sparse runs start from the same dense model, so the seed spread is that of the sparse stage.

Run from the repository root (in the background: the whole study takes days on a 2-core CPU)::

    nohup python -m benchmarks.glue_study run > study.log 2>&1 &
    python -m benchmarks.glue_study plan                  # what has finished, what runs next
    python -m benchmarks.study_report                     # docs/RESULTS.md and its plots from the records

``run --workers 2`` trains two ready runs side by side, the cores shared among them (``benchmarks/bench_parallel.py``
measures whether that pays on a machine: 1.19x in bf16-mixed on the 2-core Xeon of docs/BENCHMARKS.md, 0.95x in fp32
on its AMD EPYC).
``run --precision`` (default ``auto``: ``bf16-mixed`` where bf16 is native, 0.64x the fp32 step time there, else
``32-true``) sets the precision of the runs it starts; it is not part of a run's fingerprint, so records made in
another precision stay current, and each record says its own. ``kill <driver>`` stops its runs too; they resume from
their last epoch's checkpoint, in the precision they started in, at the next ``run``. ``run --finish-within HOURS``
starts only runs expected to end by then (the median wall time of the same run at the seeds run alike, else the
longest at any seed: :func:`expected_wall_s`), for a session whose machine goes away at a known time: a run cut off
there starts again from scratch on the next machine.
"""

from __future__ import annotations

import argparse

from benchmarks._help import described_parser
from benchmarks.study.plan import BUDGETS, REPO, Study, print_plan, task_options
from benchmarks.study.runner import drive, resolve_precision, run_options


def cmd_run(args: argparse.Namespace) -> None:
    drive(Study(args.work_dir, args.data_dir, tuple(args.tasks), tuple(args.seeds), tuple(args.budgets),
                precision=resolve_precision(args.precision)), args)  # fmt: skip


def cmd_plan(args: argparse.Namespace) -> None:
    print_plan(Study(args.work_dir, args.data_dir, tuple(args.tasks), tuple(args.seeds), tuple(args.budgets)))


def main(argv: list[str] | None = None) -> None:
    parser = described_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = task_options(REPO / "benchmarks" / "results" / "study")
    common.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    run = sub.add_parser("run", parents=[common, run_options()], help="run what has no record yet: ready runs side by side")
    run.set_defaults(func=cmd_run)
    sub.add_parser("plan", parents=[common], help="list the runs: finished (with score), to run, waiting").set_defaults(
        func=cmd_plan
    )
    args = parser.parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    args.func(args)


if __name__ == "__main__":
    main()
