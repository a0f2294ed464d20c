"""Regenerate the study part of ``docs/RESULTS.md`` and its plots from the JSON records of ``glue_study.py``.

    python benchmarks/study_report.py --records /tmp/study/records

Rewrites the text between the ``<!-- study_report:begin -->`` and ``<!-- study_report:end -->`` markers of
``docs/RESULTS.md`` (creating the file when it has none) and keeps everything outside them, the hand-written analysis.
Writes ``docs/study_scores.png`` (dev score per method and task) and ``docs/study_admm.png`` (the ADMM residuals, the
mask-flip rate and the dev score of one nxm run, from the curves stored in its record).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- study_report:begin -->", "<!-- study_report:end -->"
TASKS = {"cola": "CoLA (MCC)", "sst2": "SST-2 (acc)", "stsb": "STS-B (Pearson/Spearman)", "rte": "RTE (acc)"}
METHODS = {
    "dense": "dense (fine-tuned MiniLM-L6, the teacher)",
    "asp": "asp (magnitude 2:4 of dense + masked fine-tuning)",
    "nxm": "nxm (ADMM from dense + hard prune + masked fine-tuning)",
    "nxm_kd": "nxm_kd (nxm with dense as teacher)",
    "nxm_onestage": "nxm_onestage (nxm from pretrained MiniLM, dense + sparse epochs)",
}
Records = list[dict[str, Any]]


def load_records(directory: Path) -> Records:
    """Every ``*.json`` record under ``directory``, in finishing order."""
    records = [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]
    return sorted(records, key=lambda r: r.get("finished_at", ""))


def study_records(records: Records) -> Records:
    """The main study's records (without the ``tune`` sweep's)."""
    return [r for r in records if not r.get("tag")]


def scores_by_cell(records: Records) -> dict[tuple[str, str], list[float]]:
    """``{(method, task): [best post-prune dev score of each seed]}``."""
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        cells[(r["method"], r["task"])].append(r["metrics"]["best_score"])
    return cells


def common_tasks(cells: dict[tuple[str, str], list[float]], methods: list[str]) -> list[str]:
    """The tasks where every method in ``methods`` has a result (the average is taken over them)."""
    return [t for t in TASKS if all((m, t) in cells for m in methods)]


def mean_over(cells: dict[tuple[str, str], list[float]], method: str, tasks: list[str]) -> float | None:
    if not tasks or any((method, t) not in cells for t in tasks):
        return None
    return statistics.mean(statistics.mean(cells[(method, t)]) for t in tasks)


def fmt_cell(values: list[float] | None) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (n={len(values)})"


def main_table(records: Records) -> list[str]:
    cells = scores_by_cell(records)
    methods = [m for m in METHODS if any(m == r["method"] for r in records)]
    tasks = common_tasks(cells, methods)
    average = f"average ({', '.join(TASKS[t].split(' ')[0] for t in tasks) or 'no task with all methods'})"
    lines = [
        "| method | " + " | ".join(TASKS.values()) + f" | {average} |",
        "|---" * (len(TASKS) + 2) + "|",
    ]
    for method, label in METHODS.items():
        row = [fmt_cell(cells.get((method, t))) for t in TASKS]
        avg = mean_over(cells, method, tasks)
        lines.append(f"| {label} | " + " | ".join(row) + f" | {'not run' if avg is None else f'{avg:.1f}'} |")
    return lines


def goal_lines(records: Records) -> list[str]:
    """The issue's two goals, checked on the tasks that every compared method finished."""
    cells = scores_by_cell(records)
    lines = []
    for first, second, goal, label in (
        ("nxm", "asp", 1.0, "nxm at least 1.0 point above asp"),
        ("nxm_kd", "dense", -1.0, "nxm_kd within 1.0 point of dense"),
    ):
        tasks = common_tasks(cells, [first, second])
        a, b = mean_over(cells, first, tasks), mean_over(cells, second, tasks)
        if a is None or b is None:
            lines.append(f"- {label}: not measured (no task where both ran).")
            continue
        gap = a - b
        met = gap >= goal
        names = ", ".join(TASKS[t].split(" ")[0] for t in tasks)
        lines.append(f"- {label}: {first} {a:.1f} - {second} {b:.1f} = {gap:+.1f} on {names}: **{'met' if met else 'not met'}**.")
    return lines


def runs_table(records: Records) -> list[str]:
    lines = [
        "| run | epochs | best dev score (step) | final dev score | dev score before -> after the cut | wall time "
        "| finished (UTC) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m = r["metrics"]
        cut = (
            f"{m['prune_score_before']:.1f} -> {m['prune_score_after']:.1f} (step {m['prune_step']})"
            if m.get("prune_score_after") is not None
            else "no cut"
        )
        name = f"{r['method']}{r.get('tag', '')} {r['task']} s{r['seed']}"
        lines.append(
            f"| {name} | {r['epochs']} | {m['best_score']:.2f} ({m['best_step']}) | {m['final_score']:.2f} | {cut} | "
            f"{r['wall_s'] / 60:.1f} min | {r['finished_at'][:16].replace('T', ' ')} |"
        )
    return lines


def settings(record: dict[str, Any]) -> dict[str, str]:
    """What a sweep point varies, read from the run's resolved config (so it stays right when the defaults change)."""
    config = record.get("resolved_config") or {}
    model = (config.get("model") or {}).get("init_args", {})
    admm = next(
        (
            c["init_args"]
            for c in (config.get("trainer") or {}).get("callbacks") or []
            if c["class_path"].endswith("NxMSparsifyCallback")
        ),
        None,
    )
    row = {"lr": f"{model.get('learning_rate', '?'):g}", "warmup": f"{model.get('warmup_ratio', '?')}"}
    if admm is None:
        return {**row, "penalty": "no ADMM (magnitude cut at fit start)", "rho": "-", "Z-step every": "-", "ADMM until": "-"}
    rho = f"{admm['rho']:g}"
    if admm.get("rho_factor", 1.0) != 1.0:
        rho += f" x{admm['rho_factor']:g} per Z-step up to {admm.get('rho_max')}"
    every = admm.get("update_every")
    end = next(
        (f"{k.removeprefix('end_')} {admm[k]}" for k in ("end_fraction", "end_epoch", "end_step") if admm.get(k)), "fit end"
    )
    return {**row, "penalty": admm["penalty"], "rho": rho, "Z-step every": "epoch" if every is None else f"{every} steps",
            "ADMM until": end}  # fmt: skip


def tune_table(records: Records) -> list[str]:
    """Every sweep point with its full settings, best first."""
    tuned = [r for r in records if r.get("tune") is not None]
    if not tuned:
        return ["No `tune` sweep has finished yet (`python benchmarks/glue_study.py tune --task stsb`)."]
    columns = list(settings(tuned[0]))
    lines = [
        "| method | task | " + " | ".join(columns) + " | best dev score | dev score before -> after the cut | wall time |",
        "|---" * (len(columns) + 5) + "|",
    ]
    for r in sorted(tuned, key=lambda r: -r["metrics"]["best_score"]):
        m = r["metrics"]
        cut = "-" if m.get("prune_score_after") is None else f"{m['prune_score_before']:.1f} -> {m['prune_score_after']:.1f}"
        values = " | ".join(settings(r).values())
        lines.append(f"| {r['method']} | {r['task']} | {values} | {m['best_score']:.2f} | {cut} | {r['wall_s'] / 60:.1f} min |")
    return lines


def environment_lines(records: Records) -> list[str]:
    if not records:
        return ["No records."]
    envs = {json.dumps(r["environment"], sort_keys=True) for r in records}
    lines = []
    for text in sorted(envs):
        env = json.loads(text)
        packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        lines.append(
            f"- {env['machine']}; accelerator: {env['accelerator']}; Python {env['python']}; {packages}; "
            f"commit {env['git_commit'][:10]}{' + local changes' if env['git_dirty'] else ''}"
        )
    return lines


def command_lines(records: Records) -> list[str]:
    lines = ["```bash"]
    for r in records:
        lines.append(f"# {r['method']}{r.get('tag', '')} {r['task']} seed {r['seed']}")
        edits = [f"{cls.split('.')[-1]}.{k}={v}" for cls, args in r.get("callback_edits", {}).items() for k, v in args.items()]
        if edits:
            lines.append(f"# {r['config_file']}: the method's config with {', '.join(edits)}")
        lines.append(r["command"])
    return [*lines, "```"]


def plot_scores(records: Records, path: Path) -> None:
    """Grouped bars: the best post-prune dev score per task (and the average), one bar per method, seed spread."""
    cells = scores_by_cell(records)
    methods = [m for m in METHODS if any(m == r["method"] for r in records)]
    tasks = [t for t in TASKS if any((m, t) in cells for m in methods)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for j, task in enumerate(tasks):
            values = cells.get((method, task))
            if values:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(statistics.mean(values))
                errs.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        bars = ax.bar(xs, ys, width, yerr=errs, label=method, capsize=2)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(tasks)), [TASKS[t] for t in tasks])
    ax.set_ylabel("best dev score after the cut (GLUE points)")
    low = min((min(v) for v in cells.values()), default=0.0)
    ax.set_ylim(max(0.0, low - 10), 100)
    ax.set_title("MiniLM-L6, 2:4 on the 36 encoder matrices (dense: no sparsity)")
    ax.legend(fontsize=8, ncol=len(methods), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def admm_record(records: Records, task: str) -> dict[str, Any] | None:
    """The nxm run whose curves are plotted: the main study's on ``task`` if it ran, else the first nxm run with ADMM
    curves (main study before sweep points)."""
    candidates = [r for r in records if r["method"] == "nxm" and "admm/primal_residual" in r["metrics"].get("curves", {})]
    candidates.sort(key=lambda r: (bool(r.get("tag")), r["seed"]))
    return next((r for r in candidates if r["task"] == task), candidates[0] if candidates else None)


def plot_admm(record: dict[str, Any], path: Path) -> None:
    """Primal and dual residuals, mask-flip rate, and the dev score (with the cut) against the optimizer step."""
    curves, m = record["metrics"]["curves"], record["metrics"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for tag in ("admm/primal_residual", "admm/dual_residual"):
        if tag in curves:
            steps, values = zip(*curves[tag])
            axes[0].plot(steps, values, marker=".", label=tag.split("/")[1])
    axes[0].set_yscale("log")
    axes[0].set_title("ADMM residuals (relative)")
    axes[0].legend(fontsize=8)
    if "admm/mask_flip_rate" in curves:
        steps, values = zip(*curves["admm/mask_flip_rate"])
        axes[1].plot(steps, values, marker=".", color="tab:green")
    axes[1].set_title("mask flip rate per Z-step")
    steps, values = zip(*m["val_scores"])
    axes[2].plot(steps, values, marker="o", label="val/score")
    if "val_pruned/score" in curves:
        ps, pv = zip(*curves["val_pruned/score"])
        axes[2].plot(ps, pv, marker="x", label="val_pruned/score")
    if m.get("prune_step") is not None:
        axes[2].scatter([m["prune_step"]] * 2, [m["prune_score_before"], m["prune_score_after"]], color="red", zorder=3)
        for ax in axes:
            ax.axvline(m["prune_step"], color="red", linestyle="--", linewidth=0.8)
    axes[2].set_title("dev score (red: just before / after the cut)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("optimizer step")
    fig.suptitle(f"nxm on {TASKS[record['task']]}, seed {record['seed']} (red dashed line: the hard prune)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def generated_section(records: Records, docs: Path, admm_task: str) -> list[str]:
    """The Markdown between the markers; writes the plots into ``docs``."""
    main = study_records(records)
    lines = [BEGIN, "", "### The table", ""]
    lines += [
        "Best dev score after the hard prune (dense: over all epochs), GLUE points; mean ± standard deviation over "
        "seeds where more than one ran. Profile(s): "
        + (", ".join(sorted({str(r.get("profile")) for r in main})) or "none")
        + "; subsampled training sets: "
        + (", ".join(sorted({_subsample(r) for r in main if _subsample(r)})) or "none")
        + ".",
        "",
        *main_table(main),
        "",
        "Goals of issue 6:",
        "",
        *goal_lines(main),
        "",
    ]
    if main:
        plot_scores(main, docs / "study_scores.png")
        lines += ["![dev score per method and task](study_scores.png)", ""]
    record = admm_record(records, admm_task)
    if record is not None:
        plot_admm(record, docs / "study_admm.png")
        lines += ["![ADMM residuals, mask flips and dev score of one nxm run](study_admm.png)", ""]
    lines += ["### Every run", "", *runs_table(records), "", "### ADMM-phase sweep (`tune`)", "", *tune_table(records), ""]
    lines += ["### Machine and packages", "", *environment_lines(records), "", "### Exact commands", "", *command_lines(records)]
    return [*lines, "", END]


def _subsample(record: dict[str, Any]) -> str:
    limit = ((record.get("resolved_config") or {}).get("data") or {}).get("max_train_samples")
    return f"{record['task']} first {limit} training examples" if limit else ""


def write_results(path: Path, section: list[str]) -> None:
    """Replace the marked section of ``path`` (append it, or create the file, when there is none)."""
    text = "\n".join(section)
    old = path.read_text() if path.exists() else "# Results\n\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, default=REPO / "benchmarks" / "results" / "study" / "records")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "RESULTS.md")
    parser.add_argument("--admm-task", default="stsb", help="the task of the nxm run whose ADMM curves are plotted")
    args = parser.parse_args(argv)
    records = load_records(args.records)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.results, generated_section(records, args.results.parent, args.admm_task))
    print(f"wrote {args.results} from {len(records)} records")


if __name__ == "__main__":
    main()
