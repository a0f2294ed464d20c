"""The study's section of ``docs/RESULTS.md`` and its plots, from records alone (``benchmarks/study_report.py``
writes them; ``study_explore.py`` reuses the tables).

The plan of :mod:`benchmarks.study.plan` replayed on the records decides which runs each table shows, so the report
picks the runs the study chose, not merely the best ones.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

from benchmarks.study.plan import (
    BUDGETS,
    DENSE_LRS,
    FIRST_SEED,
    FP32,
    SEEDS,
    SPARSE_LRS,
    SWEEP_TASK,
    TRAIN_SUBSETS,
    RunSpec,
    Study,
    Waiting,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BEGIN, END = "<!-- study_report:begin -->", "<!-- study_report:end -->"
TASKS = {"cola": "CoLA (MCC)", "sst2": "SST-2 (acc)", "stsb": "STS-B (Pearson/Spearman)", "rte": "RTE (acc)"}
METHODS = {
    "dense": "dense (the best of the grid, as each seed's runs started from it: the start and teacher)",
    "asp": "asp (magnitude 2:4 once + masked fine-tuning)",
    "asp_kd": "asp_kd (asp + distillation from dense)",
    "nxm": "nxm (converging ADMM with Fisher saliency + cut + masked fine-tuning)",
    "nxm_kd": "nxm_kd (nxm + distillation from dense)",
    "nxm_paper": "nxm_paper (the research code's recipe)",
    "asp_fisher": "asp_fisher (asp's one-shot cut ranked by Fisher over 32 steps: an ablation)",
}
# The last pair: what ADMM adds beyond ranking by Fisher.
PAIRS = (("nxm", "asp"), ("nxm_kd", "asp_kd"), ("nxm", "asp_fisher"))
# The goals of issue 12 at the paper budget: (method, reference, margin) meaning method >= reference + margin.
GOALS = (("nxm", "asp", 1.0), ("nxm_kd", "asp_kd", 0.5), ("nxm_kd", "dense", -1.0))
Records = list[dict[str, Any]]
Cells = dict[tuple[str, str], dict[int, float]]


def score(record: dict[str, Any]) -> float:
    return record["metrics"]["best_score"]


def planned(records: Records) -> tuple[Study, list[RunSpec | Waiting]]:
    """The study's plan with the choices (best dense run, swept learning rates) that ``records`` decide."""
    study = Study(Path("."), "", known={r["name"]: r for r in records})
    return study, list(study.runs())


def chosen_runs(records: Records, budget: str) -> list[tuple[RunSpec, dict[str, Any]]]:
    """The finished runs the plan chose at ``budget`` (each method at its chosen learning rate) with their records,
    and the best run of each task's dense grid once the grid has finished."""
    study, plan = planned(records)
    chosen = []
    for spec in plan:
        record = None if isinstance(spec, Waiting) else study.record(spec)
        if record is None or spec.budget not in (None, budget):
            continue
        with contextlib.suppress(Waiting):  # a sweep point of a sweep that is not finished
            if spec.budget is None and study.best_dense(spec.task).name != spec.name:
                continue
            if spec.budget is not None and spec.learning_rate != study.learning_rate(spec.method, budget):
                continue
            chosen.append((spec, record))
    return chosen


def run_starts(chosen: list[tuple[RunSpec, dict[str, Any]]]) -> dict[tuple[str, str, int], float]:
    """``{(method, task, seed): dev score of the dense model the run started from}`` for the sparse runs of
    ``chosen`` (:func:`chosen_runs`): its ``dense_start_score``, or (a record from before the driver noted it: the
    original export) the grid's best."""
    grid_best = {spec.task: record["metrics"]["best_score"] for spec, record in chosen if spec.budget is None}
    return {(spec.method, spec.task, spec.seed): record.get("dense_start_score", grid_best[spec.task])
            for spec, record in chosen if spec.budget is not None}  # fmt: skip


def study_cells(records: Records, budget: str, at: str = "best_score") -> Cells:
    """``{(method, task): {seed: dev score}}`` of :func:`chosen_runs`: each run's ``best_score``, or its
    ``final_score`` (the last epoch's).

    The dense cell is the model the sparse runs start from, always at its best epoch: per seed, the mean over that
    seed's runs (of the methods that run every seed) of their ``dense_start_score`` (a dense export rebuilt on another
    machine scores a little differently; a record without one started from the original, the grid's best), or the
    grid's best while no such run has finished.
    """
    chosen = chosen_runs(records, budget)
    cells: Cells = defaultdict(dict)
    for spec, record in chosen:
        cells[(spec.method, spec.task)][spec.seed] = record["metrics"]["best_score" if spec.budget is None else at]
    starts: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (method, task, seed), start in run_starts(chosen).items():
        if method not in BUDGETS[budget].first_seed_only:  # the start of the methods every seed compares
            starts[task][seed].append(start)
    for task, by_seed in starts.items():
        cells[("dense", task)] = {seed: statistics.mean(scores) for seed, scores in by_seed.items()}
    return cells


def table_head(*columns: str) -> list[str]:
    """A Markdown table's header row and its separator."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def fmt_cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (n={len(values)})"


def average(cells: Cells, method: str) -> float | None:
    """The mean over all four tasks of the per-task means, or None while a task is missing."""
    if any(not cells.get((method, t)) for t in TASKS):
        return None
    return statistics.mean(statistics.mean(cells[(method, t)].values()) for t in TASKS)


def score_table(cells: Cells, methods: tuple[str, ...]) -> list[str]:
    lines = table_head("method", *TASKS.values(), "4-task average")
    for method in ("dense", *methods):
        row = [fmt_cell(list(cells.get((method, t), {}).values())) for t in TASKS]
        avg = average(cells, method)
        lines.append(f"| {METHODS[method]} | " + " | ".join(row) + f" | {'-' if avg is None else f'{avg:.1f}'} |")
    return lines


def signed(difference: float) -> str:
    """``difference`` to one decimal with its sign, ``+0.0`` for one that rounds to zero (not ``-0.0``)."""
    return f"{round(difference, 1) + 0.0:+.1f}"


def fmt_difference(diffs: list[float]) -> str:
    """Per-seed paired differences as their signed mean, spread and count; ``-`` for none."""
    if not diffs:
        return "-"
    if len(diffs) == 1:
        return f"{signed(diffs[0])} (n=1)"
    return f"{signed(statistics.mean(diffs))} ± {statistics.stdev(diffs):.1f} (n={len(diffs)})"


def paired_lines(cells: Cells, budget: str) -> list[str]:
    """Per task, the per-seed differences of each pair (same seed, same dense start), their mean and spread."""
    lines = table_head("difference", *TASKS.values())
    for first, second in PAIRS:
        if first not in BUDGETS[budget].methods or second not in BUDGETS[budget].methods:
            continue
        row = []
        for task in TASKS:
            a, b = cells.get((first, task), {}), cells.get((second, task), {})
            row.append(fmt_difference([a[s] - b[s] for s in sorted(a) if s in b]))
        lines.append(f"| {first} - {second} | " + " | ".join(row) + " |")
    return lines


def split_pairs_note(records: Records, budget: str) -> list[str]:
    """A note on the pairs of :data:`PAIRS` whose two runs of one seed started from different builds of the dense
    model (a session ended between them and the next machine rebuilt the export): their difference holds the dense
    models' difference too. Nothing when every pair shares its start."""
    starts = run_starts(chosen_runs(records, budget))
    split = [f"{TASKS[task].split(' ')[0]} seed {seed}: {first} - {second} ({start:.2f} vs {starts[(second, task, seed)]:.2f})"
             for first, second in PAIRS for (method, task, seed), start in starts.items()
             if method == first and starts.get((second, task, seed), start) != start]  # fmt: skip
    if not split:
        return []
    return ["Pairs whose two runs started from different builds of the dense model (the dev score of each start; the "
            "difference above includes theirs): " + "; ".join(split) + ".", ""]  # fmt: skip


def cut_table(records: Records, budget: str) -> list[str]:
    """Per method and task (means over seeds): the dev score just before the cut, right after it, and the run's best.

    Before the cut is the dense start for a cut at fit start (asp), the dense-evaluated W at the end of the ADMM
    phase for nxm: together they show where each method loses its points and how much masked fine-tuning wins back.
    """
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for spec, record in chosen_runs(records, budget):
        if spec.budget is not None and record["metrics"].get("prune_score_after") is not None:
            runs[(spec.method, spec.task)].append(record["metrics"])
    lines = table_head("method", *TASKS.values())
    for method in BUDGETS[budget].methods:
        row = []
        for task in TASKS:
            found = runs.get((method, task))
            if not found:
                row.append("-")
                continue
            before, after, best = (statistics.mean(m[key] for m in found)
                                   for key in ("prune_score_before", "prune_score_after", "best_score"))  # fmt: skip
            row.append(f"{before:.1f} → {after:.1f} → {best:.1f}" + (f" (n={len(found)})" if len(found) > 1 else ""))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def agreement_table(records: Records, budget: str) -> list[str]:
    """Per method and task, the share of the kept weights that the magnitude mask of the dense start keeps too (each
    chosen run's ``kept_share_of_magnitude_mask``; means over seeds), or nothing while no run at ``budget`` has one."""
    shares: dict[tuple[str, str], list[float]] = defaultdict(list)
    for spec, record in chosen_runs(records, budget):
        if record.get("kept_share_of_magnitude_mask") is not None:
            shares[(spec.method, spec.task)].append(100 * record["kept_share_of_magnitude_mask"])
    if not shares:
        return []
    lines = table_head("method", *TASKS.values())
    for method in BUDGETS[budget].methods:
        row = ["-" if not shares.get((method, t)) else f"{statistics.mean(shares[(method, t)]):.1f}%"
               + (f" (n={len(shares[(method, t)])})" if len(shares[(method, t)]) > 1 else "") for t in TASKS]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def goal_lines(cells: Cells) -> list[str]:
    lines = []
    for method, reference, margin in GOALS:
        want = f"{method} >= {reference} {'+' if margin >= 0 else '-'} {abs(margin):.1f} on the 4-task average"
        a, b = average(cells, method), average(cells, reference)
        if a is None or b is None:
            done = [TASKS[t].split(" ")[0] for t in TASKS if cells.get((method, t)) and cells.get((reference, t))]
            lines.append(f"- {want}: **not yet measured** (both finished on: {', '.join(done) or 'no task'}).")
            continue
        met = a - b >= margin
        # The seeds that count are those the sparse method has finished on all four tasks (the dense reference is
        # their start); a verdict on fewer than the planned seeds may still turn.
        seeds = sorted(set.intersection(*(set(cells[(method, t)]) for t in TASKS)))
        over = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} of the {len(SEEDS)} planned"
        verdict = f"**{'met' if met else 'not met'}**" + ("" if len(seeds) == len(SEEDS) else ", provisional")
        lines.append(f"- {want}: {method} {a:.1f} - {reference} {b:.1f} = {signed(a - b)}: {verdict} ({over}).")
    return lines


def dense_grid_table(records: Records) -> list[str]:
    dense = {(r["task"], r["learning_rate"]): r for r in records if r["method"] == "dense"}
    lines = table_head("task", *(f"lr {lr:g}" for lr in DENSE_LRS))
    for task, label in TASKS.items():
        row = []
        for lr in DENSE_LRS:
            r = dense.get((task, lr))
            if r is None:
                row.append("-")
                continue
            epochs = len(r["metrics"]["val_scores"])
            best_epoch = [s for s, _ in r["metrics"]["val_scores"]].index(r["metrics"]["best_step"]) + 1
            row.append(f"{score(r):.2f} (epoch {best_epoch} of {epochs})")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return lines


def sweep_table(records: Records) -> list[str]:
    runs = {(r["method"], r["learning_rate"]): r for r in records
            if r.get("budget") == "paper" and r["task"] == SWEEP_TASK and r["method"] in ("asp", "nxm")}  # fmt: skip
    lines = table_head("method", *(f"lr {lr:g}" for lr in SPARSE_LRS))
    for method in ("asp", "nxm"):
        row = [f"{score(runs[(method, lr)]):.2f}" if (method, lr) in runs else "-" for lr in SPARSE_LRS]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def compute_lines(records: Records) -> list[str]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for r in records:
        key = r["method"] if r["method"] == "dense" else f"{r['method']} ({r['budget']})"
        totals[key][0] += r.get("cpu_s", 0.0) / 3600
        totals[key][1] += r["wall_s"] / 3600
        totals[key][2] += 1
    lines = table_head("method", "runs", "CPU hours", "wall hours", "CPU hours per run")
    for key, (cpu, wall, n) in sorted(totals.items()):
        lines.append(f"| {key} | {n} | {cpu:.1f} | {wall:.1f} | {cpu / n:.2f} |")
    return lines


def runs_table(records: Records) -> list[str]:
    lines = table_head("run", "epochs", "precision", "best dev score (step)", "final", "before -> after the cut", "Z-steps",
                       "wall", "finished (UTC)")  # fmt: skip
    for r in records:
        m = r["metrics"]
        cut = f"{m['prune_score_before']:.1f} -> {m['prune_score_after']:.1f}" if m.get("prune_score_after") is not None else "-"
        zsteps = len(m.get("curves", {}).get("admm/mask_flip_rate", [])) or "-"
        lines.append(
            f"| {r['name']} | {r['epochs']} | {r.get('precision', FP32)} | {score(r):.2f} ({m['best_step']}) | "
            f"{m['final_score']:.2f} | {cut} | "
            f"{zsteps} | {r['wall_s'] / 60:.0f} min | {r['finished_at'][:16].replace('T', ' ')} |"
        )
    return lines


def environment_lines(records: Records) -> list[str]:
    envs = sorted({json.dumps({k: v for k, v in r["environment"].items() if k not in ("git_commit", "git_dirty")},
                              sort_keys=True) for r in records})  # fmt: skip
    lines = []
    for text in envs:
        env = json.loads(text)
        packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        bf16 = {True: " (native bf16)", False: " (no native bf16)", None: ""}[env.get("cpu_native_bf16")]
        lines.append(f"- {env['machine']}{bf16}; accelerator: {env['accelerator']}; Python {env['python']}; {packages}")
    commits = sorted({r["environment"]["git_commit"][:10] + (" (+ local changes)" if r["environment"].get("git_dirty")
                      else "") for r in records})  # fmt: skip
    return [*lines, f"- commits: {', '.join(commits)}"] if lines else ["No records yet."]


def command_lines(records: Records) -> list[str]:
    lines = ["```bash"]
    for r in records:
        edits = [f"{c.split('.')[-1]}.{k}={v}" for c, args in r.get("callback_edits", {}).items() for k, v in args.items()
                 if k != "export_dir"]  # fmt: skip
        lines.append(f"# {r['name']}" + (f" (config edits: {', '.join(edits)})" if edits else ""))
        lines.append(r["command"])
    return [*lines, "```"]


def plot_scores(cells_by_budget: dict[str, Cells], path: Path) -> None:
    """One panel per budget: grouped bars of the dev score per task, one bar per method, seed spread as error bars."""
    fig, axes = plt.subplots(1, len(cells_by_budget), figsize=(7 * len(cells_by_budget), 4.5), squeeze=False)
    for ax, (budget, cells) in zip(axes[0], cells_by_budget.items()):
        methods = ("dense", *BUDGETS[budget].methods)
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            xs, ys, errs = [], [], []
            for j, task in enumerate(TASKS):
                values = list(cells.get((method, task), {}).values())
                if values:
                    xs.append(j + (i - (len(methods) - 1) / 2) * width)
                    ys.append(statistics.mean(values))
                    errs.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            ax.bar(xs, ys, width, yerr=errs, label=method, capsize=2)
        ax.set_xticks(range(len(TASKS)), [TASKS[t].split(" ")[0] for t in TASKS])
        ax.set_title(f"{budget} budget ({BUDGETS[budget].epochs} sparse epochs)")
        ax.set_ylabel("best dev score (GLUE points)")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_admm(records: Records, path: Path) -> bool:
    """Per task, the flip rate and primal residual of its first nxm run at the paper budget (solid) and of its
    nxm_paper run (the research code's recipe, dashed); False when neither ran."""
    runs: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        if (
            r["method"] in ("nxm", "nxm_paper")
            and r.get("budget") == "paper"
            and "admm/mask_flip_rate" in r["metrics"].get("curves", {})
        ):
            runs[r["task"]].setdefault(r["method"], r)
    if not runs:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.6), squeeze=False)
    for ax, (task, by_method) in zip(axes[0], runs.items()):
        for method, line in (("nxm", "-"), ("nxm_paper", "--")):
            if method not in by_method:
                continue
            metrics = by_method[method]["metrics"]
            for tag, marker, color in (("admm/mask_flip_rate", "o", "C0"), ("admm/primal_residual", "x", "C1")):
                steps, values = zip(*metrics["curves"][tag])
                ax.plot(steps, values, marker + line, color=color, markersize=3, label=f"{method} {tag.split('/')[1]}")
            if metrics.get("prune_step") is not None:
                ax.axvline(metrics["prune_step"], color="red", linestyle=line, linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{TASKS[task]}: the cut in red", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_dev_curves(records: Records, path: Path, budget: str = "paper") -> bool:
    """Per task, the dev score after every epoch of each method's first-seed run at ``budget`` (before the cut an
    ADMM run is evaluated dense), the cut's own score as a cross, and the dense start as a grey line: where each
    method loses its points and whether it wins them back. False when no run has its evaluations recorded."""
    runs: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for spec, record in chosen_runs(records, budget):
        if record["metrics"].get("val_scores") and (spec.budget is None or spec.seed == FIRST_SEED):
            runs[spec.task][spec.method] = record["metrics"]
    tasks = [task for task in TASKS if len(runs.get(task, {})) > 1]
    if not tasks:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, metrics in runs[task].items():
            color = f"C{list(METHODS).index(method)}"  # the same colour for a method in every panel
            if method == "dense":
                ax.axhline(metrics["best_score"], color="grey", linewidth=0.8, label="dense (its best epoch)")
                continue
            per_epoch = metrics["val_scores"][0][0] + 1  # one evaluation at the end of every epoch
            epochs = [(step + 1) / per_epoch for step, _ in metrics["val_scores"]]
            ax.plot(epochs, [value for _, value in metrics["val_scores"]], "o-", markersize=3, color=color, label=method)
            if metrics.get("prune_score_after") is not None:
                ax.plot(metrics["prune_step"] / per_epoch, metrics["prune_score_after"], "x", color=color, markersize=8)
        ax.set_xlabel("epoch")
        ax.set_title(f"{TASKS[task]}, seed {FIRST_SEED}: x = the cut", fontsize=8)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("dev score (GLUE points)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def progress_lines(records: Records) -> list[str]:
    study, plan = planned(records)
    runs = [item for item in plan if not isinstance(item, Waiting)]
    done = sum(1 for spec in runs if study.record(spec) is not None)
    waiting = len(plan) - len(runs)
    return [f"{done} of the {len(runs)} runs planned so far have finished; {waiting} more wait on choices that "
            "unfinished runs decide (the best dense run, the swept learning rates)."]  # fmt: skip


def generated_section(records: Records, docs: Path) -> list[str]:
    """The Markdown between the markers; writes the plots into ``docs``."""
    cells = {budget: study_cells(records, budget) for budget in BUDGETS}
    subsets = ", ".join(f"{t} a fixed random {n} training examples" for t, n in TRAIN_SUBSETS.items())
    lines = [BEGIN, "", *progress_lines(records), ""]
    for budget, budget_cells in cells.items():
        b = BUDGETS[budget]
        lines += [
            f"### The `{budget}` budget: {b.epochs} sparse epoch{'s' * (b.epochs > 1)} after the dense stage",
            "",
            f"Best dev score, GLUE points, mean ± standard deviation over seeds; {subsets}.",
            "",
            *score_table(budget_cells, b.methods),
            "",
            "Paired differences (same seed, same dense start):",
            "",
            *paired_lines(budget_cells, budget),
            "",
            *split_pairs_note(records, budget),
            "Where the points go: the dev score just before the cut → right after it → the run's best (means over "
            "seeds). Before the cut is the dense start for a cut at fit start (asp, asp_kd; asp_fisher's after 32 "
            "dense steps) and the dense-evaluated W at the end of the ADMM phase for nxm, nxm_kd and nxm_paper:",
            "",
            *cut_table(records, budget),
            "",
        ]
        agreement_lines = agreement_table(records, budget)
        if agreement_lines:
            lines += [
                "How far each mask is from magnitude's: the share of the weights a run keeps that the magnitude 2:4 "
                "mask of its dense start keeps too (measured from the exports when each run finished; two random 2:4 "
                "masks share 50%):",
                "",
                *agreement_lines,
                "",
            ]
        if budget == "paper":
            lines += ["Goals (issue 12):", "", *goal_lines(budget_cells), ""]
            final = study_cells(records, budget, at="final_score")
            lines += [
                "The same runs scored at their last epoch instead (no epoch chosen on the dev set; on RTE's 277 dev "
                "examples one example is 0.36 points, and the best of 10 noisy evaluations favours the noisier runs):",
                "",
                *score_table(final, b.methods),
                "",
                *paired_lines(final, budget),
                "",
            ]
    plot_scores(cells, docs / "study_scores.png")
    lines += ["![dev score per method and task](study_scores.png)", ""]
    if plot_admm(records, docs / "study_admm.png"):
        caption = "ADMM flip rate and primal residual per task: nxm (solid), nxm_paper (dashed; batch 16: twice the steps)"
        lines += [f"![{caption}](study_admm.png)", ""]
    if plot_dev_curves(records, docs / "study_curves.png"):
        caption = ("dev score after every epoch of the first seed's runs (paper budget); before its cut an ADMM run is "
                   "evaluated dense; x: the cut's own score")  # fmt: skip
        lines += [f"![{caption}](study_curves.png)", ""]
    lines += ["### The dense grid (seed 42; best epoch on dev)", "", *dense_grid_table(records), ""]
    lines += [f"### The sparse learning rates (`paper` budget, {TASKS[SWEEP_TASK]}, seed 42)", "", *sweep_table(records), ""]
    lines += ["### Compute", "", *compute_lines(records), ""]
    unsummed = sum(1 for r in records if r.get("resumed") and not r.get("attempts"))
    lines += [f"A resumed run's time is the sum of its attempts where its record counts them (`attempts`; {unsummed} "
              "resumed record(s) made before that count only the last attempt); wall hours of runs trained side by "
              "side overlap.", ""]  # fmt: skip
    lines += ["### Every run", "", *runs_table(records), ""]
    lines += ["### Machine and packages", "", *environment_lines(records), "", "### Exact commands", "", *command_lines(records)]
    return [*lines, "", END]


def write_results(path: Path, section: list[str], name: str = "study_report") -> None:
    """Replace the section of ``path`` between ``<!-- {name}:begin -->`` and ``<!-- {name}:end -->`` (append it, or
    create the file, when there is none)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = "\n".join(section)
    old = path.read_text() if path.exists() else "# Results\n\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)
