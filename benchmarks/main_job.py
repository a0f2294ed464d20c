"""The main job (issue 11): ``configs/glue.yaml`` as a user runs it, with a record of its score, cut and convergence.

Each run is ``python cli.py fit --config configs/glue.yaml --data.task_name TASK [overrides]`` in a subprocess,
timed, with its logs and checkpoints under ``--work-dir``. Its record (``benchmarks/records/main_job/<label>.json``,
committed: small) holds the final dev score, the score just before and after the hard prune, the last Z-step's flip
rate and primal residual with the verdict, the ADMM curves, the wall time and the command. ``report`` prints the
table of ``docs/RESULTS.md`` from the records.

    python -m benchmarks.main_job run --task stsb --label stsb
    python -m benchmarks.main_job run --task sst2 --label sst2_8k -- --data.max_train_samples 8000
    python -m benchmarks.main_job report --plot docs/admm_convergence.png
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._help import described_parser
from benchmarks.study.plan import REPO
from benchmarks.study.records import environment, read_scalars, run_facts, run_metrics, write_record

RECORDS = REPO / "benchmarks" / "records" / "main_job"
# The thresholds: the last Z-step's mask flip rate and primal residual, and the cost of the cut.
MAX_FLIP_RATE, MAX_RESIDUAL, MAX_PRUNE_COST = 0.005, 1e-3, 0.5
ADMM_CURVES = ("admm/primal_residual", "admm/dual_residual", "admm/mask_flip_rate", "admm/rho", "admm/w_step_progress")


def convergence(run_dir: Path) -> dict[str, Any]:
    """The last Z-step's numbers, whether they meet the thresholds, and every ADMM curve of the run."""
    scalars = read_scalars(run_dir)
    curves = {tag: scalars[tag] for tag in ADMM_CURVES if tag in scalars}
    flips, residuals = curves.get("admm/mask_flip_rate", []), curves.get("admm/primal_residual", [])
    last_flip = flips[-1][1] if flips else None
    last_residual = residuals[-1][1] if residuals else None
    return {
        "zsteps": len(flips),
        "last_flip_rate": last_flip,
        "last_primal_residual": last_residual,
        "converged": last_flip is not None and last_flip <= MAX_FLIP_RATE and last_residual <= MAX_RESIDUAL,
        "curves": curves,
    }


def cmd_run(args: argparse.Namespace) -> None:
    run_root = args.work_dir / "runs"
    command = [
        sys.executable, "cli.py", "fit", "--config", args.config, "--data.task_name", args.task,
        "--trainer.logger.init_args.save_dir", str(run_root), "--trainer.logger.init_args.name", args.label,
        "--trainer.logger.init_args.version", "0", "--seed_everything", str(args.seed), *args.overrides,
    ]  # fmt: skip
    run_dir = run_root / args.label / "version_0"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a rerun under the same label: its events alone make the record
    log = args.work_dir / f"{args.label}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print("running:", shlex.join(command), f"(log: {log})", flush=True)
    started = time.monotonic()
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())
    wall_s = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"the run failed (exit {result.returncode}); see {log}")
    record = main_job_record(args.task, args.seed, args.label, run_dir, command, wall_s)
    out = args.records_dir / f"{args.label}.json"
    write_record(out, record)
    print(summary_row(record))
    print(f"wrote {out}")


def main_job_record(task: str, seed: int, label: str, run_dir: Path, command: list[str], wall_s: float) -> dict[str, Any]:
    """The record of one finished main job: its metrics, convergence, resolved config, command and environment."""
    return {
        "method": "nxm_main_job",
        "task": task,
        "seed": seed,
        "metrics": run_metrics(run_dir),
        "wall_s": round(wall_s, 1),
        **run_facts(run_dir, command),
        "run_dir": str(run_dir),
        "label": label,
        "convergence": convergence(run_dir),
        "loadavg_at_end": os.getloadavg(),
        "environment": environment(),
    }


def summary_row(record: dict[str, Any]) -> str:
    metrics, conv = record["metrics"], record["convergence"]
    before, after = metrics["prune_score_before"], metrics["prune_score_after"]
    cost = before - after if before is not None and after is not None else None
    flip, residual = conv["last_flip_rate"], conv["last_primal_residual"]
    return (
        f"| {record['label']} | {record['task']} | **{metrics['final_score']:.2f}** | {before:.2f} -> {after:.2f} "
        f"({cost:+.2f}) | {conv['zsteps']} | {flip:.2%} | {residual:.1e} | "
        f"{'yes' if conv['converged'] else 'no'} | {record['wall_s'] / 60:.1f} min |"
    )


def plot_curves(records: list[dict[str, Any]], out: Path) -> None:
    """One row per record: primal residual (log scale) and mask flip rate, and rho and W-step progress, per Z-step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(records), 2, figsize=(11, 2.6 * len(records)), squeeze=False)
    for row, record in zip(axes, records):
        curves = record["convergence"]["curves"]
        left, right = row
        for tag, style in (("admm/primal_residual", "o-"), ("admm/mask_flip_rate", "s-")):
            points = curves.get(tag, [])
            left.semilogy([s for s, _ in points], [max(v, 1e-9) for _, v in points], style, label=tag.split("/")[1], ms=3)
        left.axhline(MAX_RESIDUAL, color="grey", lw=0.8, ls="--")
        left.axhline(MAX_FLIP_RATE, color="grey", lw=0.8, ls=":")
        left.set_title(f"{record['label']}: convergence (dashed: 1e-3 residual, dotted: 0.5% flips)", fontsize=9)
        left.legend(fontsize=8)
        for tag in ("admm/rho", "admm/w_step_progress"):
            points = curves.get(tag, [])
            right.plot([s for s, _ in points], [v for _, v in points], "o-", label=tag.split("/")[1], ms=3)
        right.set_title(f"{record['label']}: rho and the share of the pull done between Z-steps", fontsize=9)
        right.legend(fontsize=8)
        right.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def cmd_report(args: argparse.Namespace) -> None:
    print("| run | task | final dev score | score before -> after the cut (cost) | Z-steps | last flip rate | "
          "last primal residual | converged | wall time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    records = [json.loads(path.read_text()) for path in sorted(args.records_dir.glob("*.json"))]
    for record in records:
        print(summary_row(record))
    print()
    for record in records:
        print(f"- `{record['label']}`: `{record['command']}`")
    if args.plot and records:
        plot_curves(records, args.plot)


def main(argv: list[str] | None = None) -> None:
    parser = described_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the main job once and record it")
    run.add_argument("--task", default="stsb")
    run.add_argument("--label", required=True, help="the record's name")
    run.add_argument("--config", default="configs/glue.yaml")
    run.add_argument("--seed", type=int, default=42, help="passed as --seed_everything")
    run.add_argument("--records-dir", type=Path, default=RECORDS, help="where the record is written")
    run.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / "results" / "main_job")
    run.add_argument("overrides", nargs="*", help="after --: more cli.py arguments")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="the markdown table of every record")
    report.add_argument("--records-dir", type=Path, default=RECORDS, help="the records to tabulate")
    report.add_argument("--plot", type=Path, help="also draw the ADMM curves of every record to this PNG")
    report.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
