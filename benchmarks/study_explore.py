"""Explorations beside the study (issues 12 and 27): variants of its methods, trained against the methods they must
beat, every run of a task from one dense build, so that each paired difference compares like with like.

The study's own records cannot be the partners: they come from three kinds of CPU, and a dense export rebuilt on
another kind is another model (CoLA 31.75 on an AMD EPYC against 32.82 on a Xeon, both in bf16-mixed; a CPU without
native bf16 trains in fp32, another model again). An exploration therefore trains, into its own records dir
``benchmarks/records/study_exploration/<variant>/``, the study's best dense run of each task (its config, learning
rate and seed), then seed by seed the methods the variant is measured against and the variant, all at one budget
(``--budget``: ``paper``, the default, or ``short``) and the study's learning rates. Variants of one family (the
feature-distillation recipes ``asp_<x>`` / ``nxm_<x>`` of :data:`FEATURE_KD_RECIPES`) share a records dir, so one dense
build and one run of each partner serve them all. Records, resuming, the rebuild of a missing dense export and
``--finish-within`` work as in the study (``benchmarks.glue_study``), whose machinery (``benchmarks.study``) this drives.

Run from the repository root, in the background::

    nohup python -m benchmarks.study_explore run nxm_gentle --tasks cola --seeds 42 43 --workers 2 > explore.log 2>&1 &
    nohup python -m benchmarks.study_explore run asp_last asp_sqh1 --budget short --tasks stsb rte > fkd.log 2>&1 &
    # the goal's pairs alone (asp_sqh1, nxm_sqh1), two side by side, without the other partners (nxm_kd)
    nohup python -m benchmarks.study_explore run nxm_sqh1 --pairs-only --workers 2 > fkd_paper.log 2>&1 &
    python -m benchmarks.study_explore report nxm_gentle     # the paired table, as Markdown
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._help import described_parser
from benchmarks.study.plan import (
    ADMM_CALLBACK,
    FIRST_SEED,
    HARD_PRUNE_CALLBACK,
    RECORDS,
    REPO,
    SRSTE_CALLBACK,
    RunSpec,
    Study,
    Waiting,
    print_plan,
    steps_per_epoch,
    task_options,
    zstep_args,
)
from benchmarks.study.records import load_records
from benchmarks.study.report import TASKS, fmt_difference, plt, signed, table_head, write_results
from benchmarks.study.runner import drive, resolve_precision, run_options

EXPLORATIONS = REPO / "benchmarks" / "records" / "study_exploration"
BUDGETS = ("paper", "short")


@dataclass(frozen=True)
class Variant:
    """A named change of a study method's config, the runs it is paired with (study methods or other variants of its
    family), and the family whose records dir it shares (its own name when None)."""

    method: str
    edits: dict[str, dict[str, Any]]  # init_args by callback class path, over the method's config
    against: tuple[str, ...]
    what: str
    model_edits: dict[str, Any] = field(default_factory=dict)  # the model's init_args over the method's config
    family: str | None = None
    # The HardPruneCallback's cut at this share of the run's optimizer steps (at_step, computed per task and budget).
    cut_fraction: float | None = None


# Feature distillation (issue 27): DistillationModule's loss terms, by recipe name. Each is run as asp_<name> (from
# glue_asp_kd.yaml) and nxm_<name> (from glue_kd.yaml): the same distillation for both, a fair pair.
FEATURE_KD_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "last": (
        "Intel Neural Compressor's recipe: the last hidden state's MSE alone (weight 2; no task or logit loss, so the "
        "classifier stays the teacher's)",
        {"alpha": 0.0, "logit_weight": 0.0, "hidden_weight": 2.0, "hidden_layers": "last", "hidden_loss": "mse"},
    ),
    "fdall": (
        "every layer's hidden-state MSE normalised by the teacher's feature energy (SquareHead's term) alone, weight 1",
        {"alpha": 0.0, "logit_weight": 0.0, "hidden_weight": 1.0, "hidden_layers": "all", "hidden_loss": "normalized"},
    ),
    **{
        f"sqh{weight:g}": (
            f"SquareHead: the task loss + {weight:g} x every layer's normalised hidden-state MSE (no logit term)",
            {"alpha": 1.0, "logit_weight": 0.0, "hidden_weight": weight, "hidden_layers": "all", "hidden_loss": "normalized"},
        )  # fmt: skip
        for weight in (1.0, 2.0, 5.0)
    },
    "sqhkd1": (
        "the study's logit distillation (0.5 task + 0.5 logit) + 1 x every layer's normalised hidden-state MSE",
        {"alpha": 0.5, "hidden_weight": 1.0, "hidden_layers": "all", "hidden_loss": "normalized"},
    ),
}


ADMM_SHORT_END = 0.3
# asp_fisher's cut (configs/glue_asp_fisher.yaml): the squared gradients of the 32 optimizer steps before it.
FISHER_CUT = {"at_step": 32, "saliency": "fisher"}
# SR-STE (callbacks.SRSTECallback, the paper's decay) trains the 2:4 model with a moving mask for this share of the
# run; the cut then fixes it for the rest. Its own family (records dir), so that its partners run again beside it from
# the dense builds of the machine it runs on (a pair needs one dense start).
SRSTE = {"pattern": "2:4", "decay": 2e-4}
SRSTE_CUT_FRACTION = 0.75


def feature_kd_variants() -> dict[str, Variant]:
    """``asp_<recipe>`` against asp and asp_kd; ``nxm_<recipe>`` against nxm_kd and asp_<recipe> (the goal's pair);
    ``nxm_<recipe>_admm30`` (a shorter ADMM phase) against asp_<recipe> and nxm_<recipe>; ``asp_fisher_<recipe>``
    (asp_fisher's cut: a better mask, no ADMM) and ``srste_<recipe>`` (a mask that moves until the cut) against
    asp_<recipe> and nxm_<recipe>."""
    variants = {}
    for name, (what, loss) in FEATURE_KD_RECIPES.items():
        model_edits = {**loss, "cache_teacher_logits": False}  # the hidden states are needed at every step
        variants[f"asp_{name}"] = Variant("asp_kd", {}, ("asp", "asp_kd"), f"asp with {what}", model_edits, "feature_kd")
        variants[f"nxm_{name}"] = Variant("nxm_kd", {}, (f"asp_{name}", "nxm_kd"), f"nxm with {what}", model_edits, "feature_kd")
        # The ADMM phase ends by 30% of training at the latest (glue_kd.yaml: 50%), for more masked fine-tuning.
        variants[f"nxm_{name}_admm30"] = Variant(
            "nxm_kd", {ADMM_CALLBACK: {"end_fraction": ADMM_SHORT_END}}, (f"asp_{name}", f"nxm_{name}"),
            f"nxm with {what}, its ADMM phase ending by {ADMM_SHORT_END:.0%} of training", model_edits, "feature_kd",
        )  # fmt: skip
        variants[f"asp_fisher_{name}"] = Variant(
            "asp_kd", {HARD_PRUNE_CALLBACK: FISHER_CUT}, (f"asp_{name}", f"nxm_{name}"),
            f"asp_fisher (the cut after {FISHER_CUT['at_step']} steps, ranked by Fisher x W^2) with {what}", model_edits,
            "feature_kd",
        )  # fmt: skip
        variants[f"srste_{name}"] = Variant(
            "asp_kd", {SRSTE_CALLBACK: SRSTE}, (f"asp_{name}", f"nxm_{name}"),
            f"SR-STE (the mask moving, decay {SRSTE['decay']:g}) for {SRSTE_CUT_FRACTION:.0%} of training, then the mask "
            f"fixed, with {what}", model_edits, "srste", SRSTE_CUT_FRACTION,
        )  # fmt: skip
    return variants


VARIANTS = {
    "nxm_gentle": Variant(
        "nxm",
        {ADMM_CALLBACK: {"rho": 0.002, "rho_max": 0.05}},
        ("asp", "nxm"),
        "nxm with a weaker ADMM pull, rho 0.002 growing to 0.05 (glue_nxm.yaml: 0.01 to 0.5), so that the ADMM phase "
        "uses its five epochs instead of converging in under two",
    ),
    **feature_kd_variants(),
}


def family(variant: str) -> str:
    """The records dir name of ``variant`` (under :data:`EXPLORATIONS`)."""
    return VARIANTS[variant].family or variant


@dataclass
class Exploration(Study):
    """The plan of variants of one family: per task the study's best dense run, then per seed each variant and its
    partners, at one budget."""

    variants: tuple[str, ...] = ()
    budget: str = "paper"
    pairs_only: bool = False  # each variant and its first partner only (the pair it is explored for)
    study_records: Path = RECORDS  # the study's, whose choices (dense run, learning rates) the exploration takes
    study: Study = field(init=False)

    def __post_init__(self) -> None:
        families = {family(variant) for variant in self.variants}
        if len(families) > 1:
            raise SystemExit(f"Variants of one family at a time (they share a records dir); these are of {sorted(families)}.")
        self.study = Study(self.work_dir, self.data_dir, records_dir=self.study_records)

    def dense_grid(self, task: str) -> list[RunSpec]:
        return [self.spec("dense", task, FIRST_SEED, self.study.best_dense(task).learning_rate)]

    def learning_rate(self, method: str, budget: str) -> float:
        return self.study.learning_rate(method, budget)

    def method_spec(self, method: str, task: str, seed: int) -> RunSpec:
        """The run of ``method`` (a study method or a variant) on ``task`` at ``seed``."""
        if method in VARIANTS:
            return self.variant_spec(method, task, seed)
        return self.spec(method, task, seed, self.learning_rate(method, self.budget), self.budget)

    def variant_spec(self, name: str, task: str, seed: int) -> RunSpec:
        variant = VARIANTS[name]
        spec = self.method_spec(variant.method, task, seed)
        for callback, args in variant.edits.items():
            spec.callback_args[callback] = {**spec.callback_args.get(callback, {}), **args}
        if variant.edits.get(ADMM_CALLBACK, {}).keys() - {"update_every"}:  # the phase changed: its Z-step interval too
            admm = {k: v for k, v in spec.callback_args[ADMM_CALLBACK].items() if k != "update_every"}
            spec.callback_args[ADMM_CALLBACK] = {**admm, **zstep_args(spec)}  # zstep_args ignores the old interval
        if variant.cut_fraction is not None:
            cut = {"at_step": round(variant.cut_fraction * spec.epochs * steps_per_epoch(spec))}
            spec.callback_args[HARD_PRUNE_CALLBACK] = {**spec.callback_args.get(HARD_PRUNE_CALLBACK, {}), **cut}
        spec.model_args = dict(variant.model_edits)
        spec.variant = name
        return spec

    def _all_runs(self) -> Iterator[RunSpec | Waiting]:
        # First, seed by seed, each variant right after its first partner (the pair it is explored for), then the
        # other partners, so that a session that ends early leaves the most seeds of those pairs.
        for task in self.tasks:
            yield from self.dense_grid(task)
        for seed in self.seeds:
            for task in self.tasks:
                for name in self.variants:
                    first = VARIANTS[name].against[0]
                    yield from self._planned(
                        lambda t=task, s=seed, f=first, v=name: [self.method_spec(f, t, s), self.method_spec(v, t, s)]
                    )
        if self.pairs_only:
            return
        for seed in self.seeds:
            for task in self.tasks:
                for name in self.variants:
                    others = VARIANTS[name].against[1:]
                    yield from self._planned(lambda t=task, s=seed, o=others: [self.method_spec(m, t, s) for m in o])


def exploration(args: argparse.Namespace, **kwargs: Any) -> Exploration:
    name = family(args.variants[0])
    work_dir = (args.work_dir or REPO / "benchmarks" / "results" / "explore" / name).resolve()
    return Exploration(work_dir, args.data_dir, tuple(args.tasks), tuple(args.seeds), records_dir=EXPLORATIONS / name,
                       variants=tuple(args.variants), budget=args.budget, pairs_only=args.pairs_only,
                       **kwargs)  # fmt: skip


def cmd_run(args: argparse.Namespace) -> None:
    drive(exploration(args, precision=resolve_precision(args.precision)), args)


def cmd_plan(args: argparse.Namespace) -> None:
    print_plan(exploration(args))


def report_lines(variant: str, records: list[dict[str, Any]], budget: str = "paper") -> list[str]:
    """Per task, each seed's best dev score by method at ``budget``, the variant's paired differences (mean ±
    spread), and where each method's points go (before the cut → after it → best, means over seeds)."""
    partners = VARIANTS[variant].against
    methods = (*partners, variant)
    scores: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    dense: dict[str, float] = {}
    for record in records:
        if record["budget"] not in (None, budget):
            continue
        if record["budget"] is None:
            dense[record["task"]] = record["metrics"]["best_score"]
        else:
            scores[(run_kind(record), record["task"])][record["seed"]] = record
    lines = [f"Variant `{variant}` ({budget} budget): {VARIANTS[variant].what}.", ""]
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


# The goals of issue 27 at the paper budget, on the 4-task average: the best 2:4 method >= dense - 0.5, and nxm with a
# distillation recipe >= asp with the same recipe + 0.5.
DENSE_MARGIN = -0.5
PAIR_MARGIN = 0.5


def run_kind(record: dict[str, Any]) -> str:
    """What a record's run is in the tables: its variant, else its study method."""
    return record.get("variant") or record["method"]


def by_kind_and_task(records: list[dict[str, Any]], budget: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The sparse records at ``budget`` by (run kind, task)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["budget"] == budget:
            grouped[(run_kind(record), record["task"])].append(record)
    return grouped


def family_runs(records: list[dict[str, Any]], budget: str) -> dict[str, dict[str, dict[int, tuple[float, float]]]]:
    """``{run kind: {task: {seed: (best score - its dense start, that start)}}}`` of sparse records at ``budget``; a
    record without its dense start (older code) is measured against its task's dense record."""
    dense = {r["task"]: r["metrics"]["best_score"] for r in records if r["budget"] is None}
    runs: dict[str, dict[str, dict[int, tuple[float, float]]]] = defaultdict(lambda: defaultdict(dict))
    for (kind, task), grouped in by_kind_and_task(records, budget).items():
        for record in grouped:
            start = record.get("dense_start_score", dense.get(task))
            runs[kind][task][record["seed"]] = (record["metrics"]["best_score"] - start, start)
    return runs


def differences(runs: dict[int, tuple[float, float]]) -> list[float]:
    """The differences from dense of one kind's runs of one task (:func:`family_runs`), by seed."""
    return [difference for difference, _ in runs.values()]


def paired_differences(ours: dict[int, tuple[float, float]], theirs: dict[int, tuple[float, float]]) -> list[float]:
    """Seed by seed, ``ours`` minus ``theirs`` where both started from the same dense model: a dense export rebuilt on
    another machine is another model, and a pair across two of them would compare unlike starts."""
    return [ours[s][0] - theirs[s][0] for s in sorted(ours) if s in theirs and ours[s][1] == theirs[s][1]]


def kind_order(kinds: list[str]) -> list[str]:
    """asp's kinds first, then nxm's; within each the plain method, its logit-KD partner, then the recipes by name."""
    return sorted(kinds, key=lambda k: (not k.startswith("asp"), k not in ("asp", "nxm"), k not in ("asp_kd", "nxm_kd"), k))


def family_tables(records: list[dict[str, Any]], budget: str) -> list[str]:
    """The difference from dense per task and on the 4-task average, paired nxm_<x> - asp_<x>, and the goals."""
    runs = family_runs(records, budget)
    if not runs:
        return [f"No finished run at the {budget} budget yet.", ""]
    lines = ["Difference from dense per task (each run's best dev score minus that of the dense model it started "
             "from; mean ± seed spread, n seeds):", ""]  # fmt: skip
    lines += table_head("run", *TASKS.values(), "4-task average")
    averages: dict[str, float] = {}
    for kind in kind_order(list(runs)):
        cells = [fmt_difference(differences(runs[kind].get(task, {}))) for task in TASKS]
        complete = all(runs[kind].get(task) for task in TASKS)
        if complete:
            averages[kind] = statistics.mean(statistics.mean(differences(runs[kind][task])) for task in TASKS)
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {f'{averages[kind]:+.2f}' if complete else '-'} |")
    recipes = sorted({kind.removeprefix("nxm_") for kind in runs if kind.startswith("nxm_")} & set(FEATURE_KD_RECIPES))
    if recipes:
        lines += ["", "nxm_<x> - asp_<x> (same recipe, same seed, same dense start):", ""]
        lines += table_head("recipe", *TASKS.values())
        for recipe in recipes:
            ours, theirs = runs.get(f"nxm_{recipe}", {}), runs.get(f"asp_{recipe}", {})
            cells = [fmt_difference(paired_differences(ours.get(t, {}), theirs.get(t, {}))) for t in TASKS]
            lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    if budget == "paper":
        lines += ["", "Goals (issue 27, 4-task average, paper budget):", ""]
        if averages:
            best = max(averages, key=averages.get)
            verdict = "met" if averages[best] >= DENSE_MARGIN else "missed"
            lines.append(f"- best 2:4 run >= dense {DENSE_MARGIN:+.1f}: {verdict} ({best}: {averages[best]:+.2f})")
        else:
            lines.append(f"- best 2:4 run >= dense {DENSE_MARGIN:+.1f}: not measured yet (no run has all four tasks)")
        for recipe in recipes or ["<x>"]:
            ours, theirs = averages.get(f"nxm_{recipe}"), averages.get(f"asp_{recipe}")
            if ours is None or theirs is None:
                lines.append(f"- nxm_{recipe} >= asp_{recipe} + {PAIR_MARGIN}: not measured yet (needs all four tasks)")
            else:
                verdict = "met" if ours - theirs >= PAIR_MARGIN else "missed"
                lines.append(f"- nxm_{recipe} >= asp_{recipe} + {PAIR_MARGIN}: {verdict} ({ours - theirs:+.2f})")
    return [*lines, ""]


def points_cell(runs: list[dict[str, Any]]) -> str:
    """The dev score just before the cut -> right after it -> the best, each minus the run's dense start, as means over
    ``runs``; ``-`` where none logged its cut's scores."""
    cut = [r for r in runs if r["metrics"].get("prune_score_after") is not None and "dense_start_score" in r]
    if not cut:
        return "-"
    keys = ("prune_score_before", "prune_score_after", "best_score")
    return " → ".join(signed(statistics.mean(r["metrics"][key] - r["dense_start_score"] for r in cut)) for key in keys)


def hidden_loss_cell(runs: list[dict[str, Any]]) -> str:
    """The normalised hidden-state loss at its first log after the cut -> over the last tenth of training (means over
    ``runs``); ``-`` where no run recorded it (records before the loss terms were kept, or no feature term)."""
    pairs = []
    for record in runs:
        curve = record["metrics"].get("curves", {}).get("train/hidden_loss")
        if not curve:
            continue
        after = [value for step, value in curve if step >= (record["metrics"].get("prune_step") or 0)] or [curve[-1][1]]
        pairs.append((after[0], statistics.mean(after[-max(1, len(after) // 10) :])))
    if not pairs:
        return "-"
    return f"{statistics.mean(p[0] for p in pairs):.3f} → {statistics.mean(p[1] for p in pairs):.3f}"


def family_mechanism_tables(records: list[dict[str, Any]], budget: str) -> list[str]:
    """Why the runs end where they do: where each kind's points go around the cut, and whether the student's features
    reach its teacher's (means over seeds); none when the budget has no sparse run."""
    grouped = by_kind_and_task(records, budget)
    if not grouped:
        return []
    kinds = kind_order(sorted({kind for kind, _ in grouped}))
    lines = ["Where the points go: the dev score just before the cut → right after it → the run's best, each minus its "
             "dense start (asp cuts at step 0, so its first number is the dense start's 0; nxm's ADMM phase moves the "
             "weights before its cut). Means over seeds:", ""]  # fmt: skip
    lines += table_head("run", *TASKS.values())
    lines += [f"| {kind} | " + " | ".join(points_cell(grouped.get((kind, t), [])) for t in TASKS) + " |" for kind in kinds]
    hidden = [(kind, [hidden_loss_cell(grouped.get((kind, t), [])) for t in TASKS]) for kind in kinds]
    hidden = [(kind, cells) for kind, cells in hidden if any(cell != "-" for cell in cells)]
    if hidden:
        lines += ["", "Can the student match its teacher's features? Every layer's hidden-state MSE normalised by the "
                  "teacher's feature energy (0: identical features), at its first log after the cut → its mean over the "
                  "last tenth of training (means over seeds):", ""]  # fmt: skip
        lines += table_head("run", *TASKS.values())
        lines += [f"| {kind} | " + " | ".join(cells) + " |" for kind, cells in hidden]
    return [*lines, ""]


def kind_color(kinds: list[str], kind: str) -> tuple[float, ...]:
    """One colour per run kind, distinct for up to 20 (matplotlib's ten-colour cycle repeats past ten): tab20's ten
    strong colours first, then their light partners."""
    index = kinds.index(kind) % 20
    return plt.get_cmap("tab20")(2 * index if index < 10 else 2 * (index - 10) + 1)


def kind_marker(kind: str) -> str:
    """Circles for asp's kinds, triangles for nxm's: the pair the goal compares reads at a glance."""
    return "o" if kind.startswith("asp") else "^"


def plot_family(family_name: str, records: list[dict[str, Any]], budget: str, path: Path) -> bool:
    """Each run kind's difference from dense per task: one dot per seed, a bar at their mean; 0 and the goal's -0.5
    drawn. False (no file) when the budget has no run."""
    runs = family_runs(records, budget)
    if not runs:
        return False
    kinds = kind_order(list(runs))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(kinds) + 3), 4.5))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        for j, task in enumerate(TASKS):
            values = differences(runs[kind].get(task, {}))
            if not values:
                continue
            x = j + (i - (len(kinds) - 1) / 2) * width
            color = kind_color(kinds, kind)
            ax.scatter([x] * len(values), values, s=14, color=color, marker=kind_marker(kind), label=kind)
            ax.hlines(statistics.mean(values), x - width / 2.5, x + width / 2.5, color=color, linewidth=2)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, ncol=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(DENSE_MARGIN, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(TASKS)), [TASKS[t].split(" ")[0] for t in TASKS])
    ax.set_ylabel("best dev score - dense start (GLUE points)")
    ax.set_title(f"{family_name}, {budget} budget: difference from dense\n(dots: seeds; bars: their mean; dashed: the goal)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_family_curves(records: list[dict[str, Any]], budget: str, path: Path) -> bool:
    """Per task, the dev score after every evaluation of each run kind's first-seed run, minus its dense start (x: the
    cut's own score where the run cut during training; dotted: the evaluations before it, of dense weights). False (no
    file) when the budget has no run."""
    runs = [r for r in records if r["budget"] == budget and r["seed"] == min(x["seed"] for x in records if x["budget"] == budget)]
    tasks = [task for task in TASKS if any(r["task"] == task for r in runs)]
    if not tasks:
        return False
    kinds = kind_order(sorted({run_kind(r) for r in runs}))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for record in (r for r in runs if r["task"] == task):
            kind, start, metrics = run_kind(record), record["dense_start_score"], record["metrics"]
            color = kind_color(kinds, kind)
            cut_step = metrics.get("prune_step") or 0
            # Evaluations before the cut score dense weights (nxm's ADMM phase), not a 2:4 model: dotted, unlabelled.
            before = [(step, score - start) for step, score in metrics["val_scores"] if step < cut_step]
            after = [(step, score - start) for step, score in metrics["val_scores"] if step >= cut_step]
            if before:
                ax.plot(*zip(*before), color=color, linewidth=1, linestyle=":", marker=kind_marker(kind), markersize=2,
                        label=None if after else kind)  # fmt: skip
            if after:
                ax.plot(*zip(*after), color=color, label=kind, linewidth=1, marker=kind_marker(kind), markersize=3)
            if metrics.get("prune_score_after") is not None and metrics.get("prune_step") is not None:
                ax.scatter([metrics["prune_step"]], [metrics["prune_score_after"] - start], color=color, marker="x")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(TASKS[task])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("dev score - dense start")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def family_section(family_name: str, records: list[dict[str, Any]], docs: Path) -> list[str]:
    """The generated section of ``docs/RESULTS.md`` for a family: per budget its tables and plot, then every run."""
    lines = [f"<!-- {family_name}:begin -->", f"<!-- generated by `python -m benchmarks.study_explore results "
             f"{family_name}` from benchmarks/records/study_exploration/{family_name}/ -->", ""]  # fmt: skip
    variants = [name for name, v in VARIANTS.items() if v.family == family_name]
    lines += ["Run kinds:", ""]
    lines += [f"- `{name}`: {VARIANTS[name].what}" for name in variants if any(r.get("variant") == name for r in records)]
    lines.append("")
    for budget in BUDGETS:
        lines += [f"#### The {budget} budget", "", *family_tables(records, budget)]
        lines += family_mechanism_tables(records, budget)
        image = f"{family_name}_{budget}.png"
        if plot_family(family_name, records, budget, docs / image):
            lines += [f"![difference from dense, {budget} budget]({image})", ""]
        curves = f"{family_name}_{budget}_curves.png"
        if plot_family_curves(records, budget, docs / curves):
            caption = (f"dev score after every evaluation of each first-seed run, {budget} budget, minus its dense "
                       "start (x: the cut; dotted: dense weights before it)")  # fmt: skip
            lines += [f"![{caption}]({curves})", ""]
    lines += ["Every run (best dev score, epoch of the best at its step, last; the machine and precision):", ""]
    lines += table_head("run", "best (step)", "last", "dense start", "wall", "machine, precision")
    for r in sorted(records, key=lambda r: r.get("finished_at", "")):
        m, start = r["metrics"], r.get("dense_start_score")
        lines.append(f"| {r['name']} | {m['best_score']:.2f} ({m['best_step']}) | {m['final_score']:.2f} | "
                     f"{'-' if start is None else f'{start:.2f}'} | {r['wall_s'] / 60:.0f} min | "
                     f"{r['environment']['machine'].split(', ')[-1]}, {r['precision']} |")  # fmt: skip
    return [*lines, "", f"<!-- {family_name}:end -->"]


def cmd_results(args: argparse.Namespace) -> None:
    records = load_records(EXPLORATIONS / args.family)
    results = REPO / "docs" / "RESULTS.md"
    write_results(results, family_section(args.family, records, results.parent), args.family)
    print(f"wrote the {args.family} section of {results} from {len(records)} records")


def cmd_report(args: argparse.Namespace) -> None:
    records = load_records(EXPLORATIONS / family(args.variants[0]))
    print("\n\n".join("\n".join(report_lines(variant, records, args.budget)) for variant in args.variants))


def main(argv: list[str] | None = None) -> None:
    parser = described_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    variant = argparse.ArgumentParser(add_help=False)
    variant.add_argument("variants", nargs="+", choices=list(VARIANTS), metavar="variant",
                         help=f"one or more of one family: {', '.join(VARIANTS)}")  # fmt: skip
    variant.add_argument("--budget", choices=BUDGETS, default="paper")
    common = task_options(work_dir=None)
    common.add_argument("--pairs-only", action="store_true",
                        help="plan each variant and its first partner only (the pair it is explored for), not its "
                             "other partners")  # fmt: skip
    run = sub.add_parser("run", parents=[variant, common, run_options()], help="run what has no record yet")
    run.set_defaults(func=cmd_run)
    plan = sub.add_parser("plan", parents=[variant, common], help="list the runs: finished (with score), to run, waiting")
    plan.set_defaults(func=cmd_plan)
    sub.add_parser("report", parents=[variant], help="the paired table, as Markdown").set_defaults(func=cmd_report)
    results = sub.add_parser("results", help="write a family's section of docs/RESULTS.md and its plots")
    results.add_argument("family", choices=sorted({family(v) for v in VARIANTS}))
    results.set_defaults(func=cmd_results)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
